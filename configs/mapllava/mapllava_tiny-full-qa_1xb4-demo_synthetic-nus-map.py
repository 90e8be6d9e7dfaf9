# The demo that talks: the tiny LLM fully fine-tuned (`full`) with a next-token loss on the
# answers to map questions (datasets/map_qa.py; all of a sample's pairs, each a sequence of
# its own over the scene) beside the map losses; validation scores the map (chamfer mAP) and
# the generated answers (MapQAMetric). The same run without the LM
# loss: --cfg-options model.bridge.lm_loss_weight=0. Results: docs/benchmarks.md.
_base_ = ['./mapllava_tiny_1xb4-demo_synthetic-nus-map.py']

# `make data-qa`: the demo's 32 train scenes with the ego starting anywhere on its lane, and
# 16 val scenes, so every question type has more than one answer on val
data_root = 'data/nuscenes-qa/'

model = dict(bridge=dict(mode='full', lm_loss_weight=100.0, max_answer_tokens=12))
_load = [dict(type='LoadMultiViewImages'), dict(type='LoadMapAnnotations'),
         dict(type='MapRangeFilter'), dict(type='MapPermutationTargets', num_pts=20),
         dict(type='MultiViewResize', scale=(400, 225))]
train_dataloader = dict(dataset=dict(data_root=data_root, pipeline=[
    *_load, dict(type='LoadMapQuestions', mode='sample', num_questions=8),
    dict(type='PackMapInputs')]))
val_dataloader = dict(dataset=dict(data_root=data_root, pipeline=[
    *_load, dict(type='LoadMapQuestions', mode='all'), dict(type='PackMapInputs')]))
test_dataloader = val_dataloader
val_evaluator = [dict(type='ChamferMapMetric', ann_file=data_root + 'nuscenes_map_infos_val.pkl'),
                 dict(type='MapQAMetric', ann_file=data_root + 'nuscenes_map_infos_val.pkl')]
test_evaluator = val_evaluator
# 48 epochs, eight times the map demo's: at 6 the LLM has only learned each question's most
# frequent answer, at 12 the crossing answers follow the road, at 24 the divider count and the
# boundary distance, by 48 the curve and the boundary side too (docs/benchmarks.md)
max_epochs = 48
param_scheduler = [
    dict(type='LinearLR', start_factor=1.0 / 3, by_epoch=False, begin=0, end=20),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min_ratio=1e-2, by_epoch=True,
         begin=0, end=max_epochs, convert_to_iter_based=True)]
# 80 val samples, each question answered by `generate`: validate every 4th epoch
train_cfg = dict(max_epochs=max_epochs, val_interval=4)
