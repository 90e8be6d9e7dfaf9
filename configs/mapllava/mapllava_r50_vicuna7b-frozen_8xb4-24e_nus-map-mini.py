# Stage 2, the default recipe, on nuScenes v1.0-mini: LLM frozen; the Q-Former (from BLIP-2)
# at 1e-5; map queries, decoder and BEV encoder at 1e-4; 4 samples per GPU, 24 epochs.
_base_ = [
    '../_base_/default_runtime.py', '../_base_/models/mapllava_r50_vicuna7b.py',
    '../_base_/datasets/nus-map.py', '../_base_/schedules/adamw_cosine_24e.py'
]

val_evaluator = dict(
    type='ChamferMapMetric', ann_file='data/nuscenes/nuscenes_map_infos_val.pkl')
test_evaluator = val_evaluator

# bf16 mixed precision on the GPU (mmengine's AmpOptimWrapper): the parts outside the LLM run
# under bf16 autocast with fp32 weights, the map decoder's deformable attention stays fp32
# (FP32MultiScaleDeformableAttention: mmcv 2.1's kernel has no bf16), the frozen LLM is bf16.
optim_wrapper = dict(
    type='AmpOptimWrapper', dtype='bfloat16', loss_scale='dynamic',
    paramwise_cfg=dict(custom_keys={
        'neck.qformer': dict(lr_mult=0.1),
        'neck.query_tokens': dict(lr_mult=0.1),
        'bridge.llm': dict(lr_mult=0.0),  # frozen in stage 2 (requires_grad=False)
    }))
preflight = dict(requires_gpu=True)
