# Modality ablation, CPU demo: image tokens (as the -img config) and BEV tokens together.
_base_ = ['./mapllava_tiny_1xb4-demo_synthetic-nus-map.py']

model = dict(neck=dict(modalities=dict(image=dict(downsample=4), bev=True)))
