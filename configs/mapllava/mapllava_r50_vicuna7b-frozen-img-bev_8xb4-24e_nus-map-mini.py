# Modality ablation, full size: 6 x 15 x 25 image tokens and 100 x 50 BEV tokens.
_base_ = ['./mapllava_r50_vicuna7b-frozen_8xb4-24e_nus-map-mini.py']

model = dict(neck=dict(modalities=dict(image=dict(downsample=2), bev=True)))
