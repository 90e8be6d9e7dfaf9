# Modality ablation, CPU demo: the Q-Former reads the camera BEV map only (the demo's
# default, stated explicitly). Results: docs/benchmarks.md, "What the LLM reads".
_base_ = ['./mapllava_tiny_1xb4-demo_synthetic-nus-map.py']

model = dict(neck=dict(modalities=dict(bev=True)))
