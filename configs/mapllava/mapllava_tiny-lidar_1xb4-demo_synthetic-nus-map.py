# The demo with the optional LiDAR branch: PointPillars-style pillars (0.6 m, CPU-capable) +
# a small SECOND/SECONDFPN, resampled onto the camera BEV grid and fused by a ConvFuser.
_base_ = ['./mapllava_tiny_1xb4-demo_synthetic-nus-map.py']

voxel_size = [0.6, 0.6, 8.0]
lidar_range = [-15.0, -30.0, -5.0, 15.0, 30.0, 3.0]
bn = dict(type='BN', eps=1e-3, momentum=0.01)
model = dict(
    data_preprocessor=dict(
        voxel=True,
        voxel_layer=dict(max_num_points=16, point_cloud_range=lidar_range,
                         voxel_size=voxel_size, max_voxels=(12000, 12000))),
    bev_encoder=dict(
        pts_voxel_encoder=dict(
            type='PillarFeatureNet', in_channels=5, feat_channels=(32, ),
            voxel_size=voxel_size, point_cloud_range=lidar_range,
            norm_cfg=dict(type='BN1d', eps=1e-3, momentum=0.01)),
        pts_middle_encoder=dict(type='PointPillarsScatter', in_channels=32,
                                output_shape=(100, 50)),
        pts_backbone=dict(
            type='SECOND', in_channels=32, out_channels=[32, 64], layer_nums=[1, 2],
            layer_strides=[1, 2], norm_cfg=bn, conv_cfg=dict(type='Conv2d', bias=False)),
        pts_neck=dict(
            type='SECONDFPN', in_channels=[32, 64], out_channels=[32, 32],
            upsample_strides=[1, 2], norm_cfg=bn,
            upsample_cfg=dict(type='deconv', bias=False), use_conv_for_no_stride=True),
        pts_bev_range=(-15.0, -30.0, 15.0, 30.0),
        fuser=dict(type='ConvFuser', in_channels=[64, 64], out_channels=64)))

# the demo pipeline with the LiDAR keyframe loaded first (points stay in the LiDAR frame)
pipeline = [
    dict(type='LoadPointsFromFile', coord_type='LIDAR', load_dim=5, use_dim=5),
    dict(type='LoadMultiViewImages'),
    dict(type='LoadMapAnnotations'),
    dict(type='MapRangeFilter'),
    dict(type='MapPermutationTargets', num_pts={{_base_.num_pts}}),
    dict(type='MultiViewResize', scale={{_base_.img_scale}}),
    dict(type='PackMapInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=pipeline))
val_dataloader = dict(dataset=dict(pipeline=pipeline))
test_dataloader = val_dataloader
