# The modality ablation's no-LLM reference: mapllava_tiny-img-bev with a BypassBridge of the
# tiny LLM's shape (2 layers, width 128, 4 heads, FFN 512) in place of the LLM.
_base_ = ['./mapllava_tiny-img-bev_1xb4-demo_synthetic-nus-map.py']

model = dict(bridge=dict(
    _delete_=True, type='BypassBridge', in_channels=128, embed_dims=128, num_map_queries=50,
    width=128, num_layers=2, num_heads=4, ffn_dims=512, dropout=0.0))
