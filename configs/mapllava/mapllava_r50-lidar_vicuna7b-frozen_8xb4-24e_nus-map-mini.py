# Ablation: camera + LiDAR. PointPillars-style pillars (CPU-capable; swap in SparseEncoder on
# GPU) + SECOND/SECONDFPN, resampled to the camera BEV grid and fused with a ConvFuser.
_base_ = ['./mapllava_r50_vicuna7b-frozen_8xb4-24e_nus-map-mini.py']

voxel_size = [0.3, 0.3, 8.0]
lidar_range = [-15.0, -30.0, -5.0, 15.0, 30.0, 3.0]
bn = dict(type='BN', eps=1e-3, momentum=0.01)
model = dict(
    data_preprocessor=dict(
        voxel=True,
        voxel_layer=dict(max_num_points=20, point_cloud_range=lidar_range,
                         voxel_size=voxel_size, max_voxels=(30000, 40000))),
    bev_encoder=dict(
        pts_voxel_encoder=dict(
            type='PillarFeatureNet', in_channels=5, feat_channels=(64, ),
            voxel_size=voxel_size, point_cloud_range=lidar_range,
            norm_cfg=dict(type='BN1d', eps=1e-3, momentum=0.01)),
        pts_middle_encoder=dict(type='PointPillarsScatter', in_channels=64,
                                output_shape=(200, 100)),
        pts_backbone=dict(
            type='SECOND', in_channels=64, out_channels=[64, 128, 256],
            layer_nums=[3, 5, 5], layer_strides=[1, 2, 2], norm_cfg=bn,
            conv_cfg=dict(type='Conv2d', bias=False)),
        pts_neck=dict(
            type='SECONDFPN', in_channels=[64, 128, 256], out_channels=[128, 128, 128],
            upsample_strides=[1, 2, 4], norm_cfg=bn,
            upsample_cfg=dict(type='deconv', bias=False), use_conv_for_no_stride=True),
        pts_bev_range=(-15.0, -30.0, 15.0, 30.0),
        fuser=dict(type='ConvFuser', in_channels=[80, 384], out_channels=80)))

# the base pipelines with the LiDAR sweep loaded first (points stay in the LiDAR frame)
_points = dict(type='LoadPointsFromFile', coord_type='LIDAR', load_dim=5, use_dim=5)
_gt = [dict(type='LoadMapAnnotations'), dict(type='MapRangeFilter'),
       dict(type='MapPermutationTargets', num_pts=20)]
train_pipeline = [
    _points, dict(type='LoadMultiViewImages'), *_gt,
    dict(type='MultiViewResize', scale=(800, 450)),
    dict(type='MultiViewPhotoMetricDistortion'),
    dict(type='PackMapInputs'),
]
test_pipeline = [
    _points, dict(type='LoadMultiViewImages'), *_gt,
    dict(type='MultiViewResize', scale=(800, 450)),
    dict(type='PackMapInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
