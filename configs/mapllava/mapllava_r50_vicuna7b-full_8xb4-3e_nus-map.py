# Stage 3: start from the stage-2 checkpoint and fine-tune the whole LLM at 1e-6 for 3 epochs
# (1e-4 base x 0.01); the rest keeps its stage-2 learning rates. Under DDP (this config) each
# GPU needs ~126 GB; train its sharded child mapllava_r50_vicuna7b-full-fsdp_8xb4-3e_nus-map.py
# (FSDP2, docs/distributed.md; memory model in docs/benchmarks.md).
_base_ = ['./mapllava_r50_vicuna7b-frozen_8xb4-12e_nus-map.py']

model = dict(bridge=dict(mode='full', gradient_checkpointing=True))
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'bridge.llm': dict(lr_mult=0.01)}))
load_from = 'work_dirs/mapllava_r50_vicuna7b-frozen_8xb4-12e_nus-map/best_model.pth'
# the stage-2 checkpoint has no LLM weights: they come from llm_path
checkpoint_check = dict(allow_missing=['bridge.llm.*'])

max_epochs = 3
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=1.0 / 3, by_epoch=False, begin=0, end=200),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min_ratio=1e-3, by_epoch=True,
         begin=0, end=max_epochs, convert_to_iter_based=True),
]
