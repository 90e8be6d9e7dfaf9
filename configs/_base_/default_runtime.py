default_scope = 'mmdet3d'
custom_imports = dict(imports=['projects.MapLLaVA.mapllava'], allow_failed_imports=False)
# atomic checkpoint writes + strict, named checkpoint/model key checks
runner_type = 'MapRunner'

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=10),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # checkpoint_epoch_N.pth every epoch, best_model.pth by val mAP, final_model.pth at the end
    checkpoint=dict(type='MapCheckpointHook', interval=1, max_keep_ckpts=3, save_best='mAP'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    # a NaN / inf loss or gradient norm stops the run in that iteration, before any save
    divergence=dict(type='DivergenceCheckHook'),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)

# per-group learning rates (qformer/queries/decoder/llm) and current losses in the log
custom_hooks = [dict(type='GroupLRLoggerHook')]

# add dict(type='TensorboardVisBackend') for TensorBoard
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='Visualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(type='LogProcessor', window_size=20, by_epoch=True)
# True, or torch.compile kwargs (e.g. dict(mode='max-autotune')): mmengine's Runner compiles
# the train step (the model has no data-dependent shapes or host syncs in it; mmcv's
# deformable attention still breaks the graph once per decoder layer)
compile = False
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)
