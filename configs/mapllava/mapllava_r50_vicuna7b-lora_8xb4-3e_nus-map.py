# Stage 3 with LoRA adapters (r=16) on the LLM's attention projections instead of full
# fine-tuning; the adapters train at the base lr, checkpoints keep only the adapters.
_base_ = ['./mapllava_r50_vicuna7b-full_8xb4-3e_nus-map.py']

model = dict(bridge=dict(
    mode='lora',
    lora_cfg=dict(r=16, lora_alpha=32, lora_dropout=0.05,
                  target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj'])))
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'bridge.llm': dict(lr_mult=1.0)}))
checkpoint_check = dict(allow_missing=['*lora_*'])
