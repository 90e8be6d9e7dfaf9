# Ablation: 100 m x 50 m ROI (x in [-25, 25], y in [-50, 50]); infos from
# `tools/create_data.py ... --roi 50 100 --extra-tag nuscenes_map_100x50`. Same 0.3 m cells.
_base_ = ['./mapllava_r50_vicuna7b-frozen_8xb4-24e_nus-map-mini.py']

roi_size = (50.0, 100.0)
pc_range = [-25.0, -50.0, -10.0, 25.0, 50.0, 10.0]
metainfo = dict(roi_size=roi_size)
model = dict(
    bev_encoder=dict(pc_range=pc_range, bev_size=(334, 167)),
    map_head=dict(pc_range=pc_range))
_ann = dict(train='nuscenes_map_100x50_infos_train.pkl',  # relative to data_root
            val='nuscenes_map_100x50_infos_val.pkl')
train_dataloader = dict(dataset=dict(metainfo=metainfo, ann_file=_ann['train']))
val_dataloader = dict(dataset=dict(metainfo=metainfo, ann_file=_ann['val']))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file='data/nuscenes/' + _ann['val'])
test_evaluator = val_evaluator
