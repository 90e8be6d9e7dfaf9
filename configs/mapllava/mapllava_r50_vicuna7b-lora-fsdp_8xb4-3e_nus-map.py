# Stage 3 with LoRA adapters, sharded with PyTorch FSDP2 like the full fine-tuning config
# (`FSDP2Strategy` through `MapFlexibleRunner`): the frozen bf16 Vicuna is split across the
# GPUs too. Checkpoints keep only the adapters and the rest of the model, as under DDP.
# docs/distributed.md has the commands. Everything else is the DDP parent's.
_base_ = ['./mapllava_r50_vicuna7b-lora_8xb4-3e_nus-map.py']

# the strategy checkpoints the sharded layers; one pass per layer (no prompt cache) for FSDP2
model = dict(bridge=dict(gradient_checkpointing=False, prompt_cache=False))

runner_type = 'MapFlexibleRunner'
strategy = dict(
    type='FSDP2Strategy',
    layer_cls=['LlamaDecoderLayer'],
    mixed_precision=dict(param_dtype='bf16', reduce_dtype='fp32'),
    cpu_offload=False,
    activation_checkpointing=True)
