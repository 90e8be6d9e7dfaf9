# The demo's tiny model with its LLM fully fine-tuned and sharded by FSDP2 (`FSDP2Strategy`
# through `MapFlexibleRunner`): stage 3's sharded path at a size that 2 CPU processes train,
#   bash tools/dist_train.sh configs/mapllava/<this file> 2
# Two ranks x 2 samples = the demo's batch of 4. The tiny LLM is fp32, so its layers compute
# in fp32 here (param_dtype=None); the 7B configs use bf16. See docs/distributed.md.
_base_ = ['./mapllava_tiny_1xb4-demo_synthetic-nus-map.py']

# prompt_cache=False: one pass per LLM layer, which FSDP2 needs when the LLM trains
model = dict(bridge=dict(mode='full', prompt_cache=False))
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=2)

runner_type = 'MapFlexibleRunner'
strategy = dict(
    type='FSDP2Strategy',
    layer_cls=['LlamaDecoderLayer'],  # one FSDP unit per LLM decoder layer, plus the root
    mixed_precision=dict(param_dtype=None, reduce_dtype='fp32'),
    cpu_offload=False,
    activation_checkpointing=True)
