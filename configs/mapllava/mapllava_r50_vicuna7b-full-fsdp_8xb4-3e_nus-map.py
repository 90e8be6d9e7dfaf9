# Stage 3, full LLM fine-tuning sharded across the GPUs with PyTorch FSDP2 (`FSDP2Strategy`
# through `MapFlexibleRunner`): each GPU holds 1/N of the fp32 master weights, gradients and
# AdamW state, one FSDP unit per Vicuna decoder layer plus one for the rest. The DDP parent
# needs ~119 GB per GPU; memory per GPU count and the launch / resume / export commands are
# in docs/distributed.md. Everything else (learning rates, schedule, load_from) is the parent's.
_base_ = ['./mapllava_r50_vicuna7b-full_8xb4-3e_nus-map.py']

# The strategy checkpoints the sharded layers, so the bridge's own checkpointing is off; the
# prompt cache is off because FSDP2 needs one pass per layer when the LLM trains.
model = dict(bridge=dict(gradient_checkpointing=False, prompt_cache=False))

runner_type = 'MapFlexibleRunner'
strategy = dict(
    type='FSDP2Strategy',
    layer_cls=['LlamaDecoderLayer'],
    # bf16 compute and all-gathers in the layers, fp32 gradient reduction, fp32 masters
    mixed_precision=dict(param_dtype='bf16', reduce_dtype='fp32'),
    cpu_offload=False,  # True: shards and the AdamW step on the CPU (1-2 GPUs)
    activation_checkpointing=True)
