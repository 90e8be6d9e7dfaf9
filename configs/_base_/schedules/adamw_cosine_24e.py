# AdamW with linear warm-up and cosine decay, 24 epochs, validation after every epoch.
# lr is the base rate (map queries + decoder); per-part rates come from
# optim_wrapper.paramwise_cfg.custom_keys (lr_mult) in the model configs. Gradients are
# clipped at max_norm 35. auto_scale_lr: base 32 = 8 GPUs x 4 samples (tools/train.py
# --auto-scale-lr). Variants inherit this file and change max_epochs, train_cfg and the
# cosine phase together (see the 12e trainval config): a plain `max_epochs = 12` in a child
# would not reach values already computed here.
max_epochs = 24
base_lr = 1e-4
warmup_iters = 500

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=base_lr, betas=(0.9, 0.999), weight_decay=0.01),
    clip_grad=dict(max_norm=35, norm_type=2))

param_scheduler = [
    dict(type='LinearLR', start_factor=1.0 / 3, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min_ratio=1e-3, by_epoch=True,
         begin=0, end=max_epochs, convert_to_iter_based=True),
]

# MapEpochBasedTrainLoop: mmengine's epoch loop that also resumes iteration checkpoints
# (default_hooks.checkpoint.by_epoch=False) mid-epoch instead of replaying the epoch
train_cfg = dict(type='MapEpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

auto_scale_lr = dict(enable=False, base_batch_size=32)
