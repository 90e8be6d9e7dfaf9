# Stage 2 on nuScenes v1.0-trainval: the mini recipe with a 12-epoch schedule (the warm-up,
# cosine phase and loop length change together).
_base_ = ['./mapllava_r50_vicuna7b-frozen_8xb4-24e_nus-map-mini.py']

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=1.0 / 3, by_epoch=False, begin=0,
         end={{_base_.warmup_iters}}),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min_ratio=1e-3, by_epoch=True,
         begin=0, end=max_epochs, convert_to_iter_based=True),
]
