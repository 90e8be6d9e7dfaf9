# The demo that talks, trained on three times the scenes: `make data-qa-112` (96 train scenes,
# 16 val scenes of their own) and 16 epochs, as many iterations as the 48 of the -img-bev QA
# demo. Its val split is not the QA demo's: its baseline and its no-LM twin are its own
# (docs/benchmarks.md, "The demo that talks"). The same run without the LM loss:
# --cfg-options model.bridge.lm_loss_weight=0.
_base_ = ['./mapllava_tiny-img-bev-full-qa_1xb4-demo_synthetic-nus-map.py']

data_root = 'data/nuscenes-qa-112/'
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = [dict(type='ChamferMapMetric', ann_file=data_root + 'nuscenes_map_infos_val.pkl'),
                 dict(type='MapQAMetric', ann_file=data_root + 'nuscenes_map_infos_val.pkl')]
test_evaluator = val_evaluator
max_epochs = 16
param_scheduler = [
    dict(type='LinearLR', start_factor=1.0 / 3, by_epoch=False, begin=0, end=20),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min_ratio=1e-2, by_epoch=True,
         begin=0, end=max_epochs, convert_to_iter_based=True)]
train_cfg = dict(max_epochs=max_epochs, val_interval=2)
