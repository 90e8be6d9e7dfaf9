# nuScenes vector map (MapTR protocol): 6 cameras, GT in the LiDAR frame, ROI 30 m x 60 m.
# Infos: python tools/create_data.py nuscenes --root-path data/nuscenes --version v1.0-trainval
# Images are packed BGR and unnormalized as inputs['img']; the model's Det3DDataPreprocessor
# normalizes, pads and stacks them (see docs/data_format.md).
dataset_type = 'NuScenesMapDataset'
data_root = 'data/nuscenes/'
class_names = ['divider', 'ped_crossing', 'boundary']
roi_size = (30.0, 60.0)  # (x right, y forward) in metres
num_pts = 20
img_scale = (800, 450)  # (w, h): half of 1600x900 (the preprocessor pads to 32)
metainfo = dict(classes=class_names, roi_size=roi_size)
data_prefix = dict(img='', pts='', sweeps='')
backend_args = None

train_pipeline = [
    dict(type='LoadMultiViewImages', backend_args=backend_args),
    dict(type='LoadMapAnnotations'),
    dict(type='MapRangeFilter'),
    dict(type='MapPermutationTargets', num_pts=num_pts),
    dict(type='MultiViewResize', scale=img_scale),
    dict(type='MultiViewPhotoMetricDistortion'),
    dict(type='PackMapInputs'),
]
# GT is packed for evaluation too (labels + resampled polylines); drop LoadMapAnnotations for
# the nuScenes test split, whose infos carry none.
test_pipeline = [
    dict(type='LoadMultiViewImages', backend_args=backend_args),
    dict(type='LoadMapAnnotations'),
    dict(type='MapRangeFilter'),
    dict(type='MapPermutationTargets', num_pts=num_pts),
    dict(type='MultiViewResize', scale=img_scale),
    dict(type='PackMapInputs'),
]

# Workers restart every epoch and take PyTorch's per-epoch seed (not mmengine's fixed
# seed + worker id): each epoch augments differently, and a resumed epoch as the
# uninterrupted run did (engine/worker_seeding.py).
train_dataloader = dict(
    batch_size=4,
    num_workers=4,
    persistent_workers=False,
    worker_init_fn=dict(type='resumable_worker_init_fn'),
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='nuscenes_map_infos_train.pkl',
        data_prefix=data_prefix,
        metainfo=metainfo,
        pipeline=train_pipeline,
        test_mode=False))
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='nuscenes_map_infos_val.pkl',
        data_prefix=data_prefix,
        metainfo=metainfo,
        pipeline=test_pipeline,
        test_mode=True))
test_dataloader = val_dataloader
