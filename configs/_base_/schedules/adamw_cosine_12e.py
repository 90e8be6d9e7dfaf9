# adamw_cosine_24e.py shortened to 12 epochs (the trainval recipe).
_base_ = ['./adamw_cosine_24e.py']

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=1.0 / 3, by_epoch=False, begin=0,
         end={{_base_.warmup_iters}}),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min_ratio=1e-3, by_epoch=True,
         begin=0, end=max_epochs, convert_to_iter_based=True),
]
