# Ablation: 4 classes with centerline (infos from `tools/create_data.py ... --with-centerline`).
_base_ = ['./mapllava_r50_vicuna7b-frozen_8xb4-24e_nus-map-mini.py']

class_names = ['divider', 'ped_crossing', 'boundary', 'centerline']
metainfo = dict(classes=class_names)
model = dict(map_head=dict(num_classes=4))
train_dataloader = dict(dataset=dict(metainfo=metainfo))
val_dataloader = dict(dataset=dict(metainfo=metainfo))
test_dataloader = val_dataloader
val_evaluator = dict(classes=class_names)
test_evaluator = val_evaluator
