# The camera demo + BEVDepth-style loss_depth: LiDAR points projected into each view supervise
# the LSS depth net. Points load in training only; the test pipeline stays camera-only.
_base_ = ['./mapllava_tiny_1xb4-demo_synthetic-nus-map.py']

model = dict(bev_encoder=dict(view_transform=dict(depth_loss_weight=3.0)))
train_pipeline = [
    dict(type='LoadPointsFromFile', coord_type='LIDAR', load_dim=5, use_dim=5),
    dict(type='LoadMultiViewImages'),
    dict(type='LoadMapAnnotations'),
    dict(type='MapRangeFilter'),
    dict(type='MapPermutationTargets', num_pts={{_base_.num_pts}}),
    dict(type='MultiViewResize', scale={{_base_.img_scale}}),
    dict(type='PackMapInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
