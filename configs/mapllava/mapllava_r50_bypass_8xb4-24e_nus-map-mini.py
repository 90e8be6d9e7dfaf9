# Ablation: no LLM. The map queries attend to the Q-Former's scene tokens through a small
# transformer (BypassBridge); everything else as in stage 2.
_base_ = ['./mapllava_r50_vicuna7b-frozen_8xb4-24e_nus-map-mini.py']

model = dict(bridge=dict(
    _delete_=True, type='BypassBridge', in_channels=768, embed_dims=256, num_map_queries=50,
    width=256, num_layers=2, num_heads=8))
# no LLM, so no `bridge.llm` learning-rate group
optim_wrapper = dict(paramwise_cfg=dict(custom_keys=dict(
    _delete_=True, **{'neck.qformer': dict(lr_mult=0.1), 'neck.query_tokens': dict(lr_mult=0.1)})))
