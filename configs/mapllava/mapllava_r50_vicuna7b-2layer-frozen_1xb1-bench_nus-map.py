# CPU benchmark stand-in for the stage-2 model (docs/benchmarks.md): the full-size shapes
# (ResNet-50, 6 x 450x800 images, 200x100 BEV, the BLIP-2 Q-Former shape with
# tools/benchmark.py --random-weights) with a random 2-layer LLM of Vicuna-7B's width (4096)
# instead of the 32-layer one, built from the config (llm_cfg). fp32: a CPU without bf16
# matrix units runs bf16 matmuls ~3.5x slower. The prompt is the first quarter of the
# default: its byte ids are 55, as many as Llama tokens in the default prompt (what
# --random-weights does without a tokenizer), so the LLM sees 55 + 32 + 50 tokens.
_base_ = ['./mapllava_r50_vicuna7b-frozen_8xb4-24e_nus-map-mini.py']

model = dict(bridge=dict(
    llm_path=None,
    llm_cfg=dict(model_type='llama', hidden_size=4096, intermediate_size=11008,
                 num_hidden_layers=2, num_attention_heads=32, num_key_value_heads=32,
                 vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
                 bos_token_id=1, eos_token_id=2, tie_word_embeddings=False),
    dtype='fp32',
    prompt='A chat between a curious user and an artificial intell'))
