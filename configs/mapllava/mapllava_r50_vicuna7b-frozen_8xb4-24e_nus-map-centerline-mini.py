# Ablation: 4 classes with centerline; infos from `tools/create_data.py nuscenes ...
# --with-centerline --extra-tag nuscenes_map_centerline` (kept beside the 3-class ones).
_base_ = ['./mapllava_r50_vicuna7b-frozen_8xb4-24e_nus-map-mini.py']

class_names = ['divider', 'ped_crossing', 'boundary', 'centerline']
metainfo = dict(classes=class_names)
model = dict(map_head=dict(num_classes=4))
_ann = dict(train='nuscenes_map_centerline_infos_train.pkl',
            val='nuscenes_map_centerline_infos_val.pkl')
train_dataloader = dict(dataset=dict(metainfo=metainfo, ann_file=_ann['train']))
val_dataloader = dict(dataset=dict(metainfo=metainfo, ann_file=_ann['val']))
test_dataloader = val_dataloader
val_evaluator = dict(classes=class_names, ann_file='data/nuscenes/' + _ann['val'])
test_evaluator = val_evaluator
