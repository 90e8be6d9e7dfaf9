# Modality ablation, full size: the Q-Former reads perspective image tokens only: 6 cameras x
# 15 x 25 (800x480 padded inputs, stride 16, pooled 2x) with viewing-ray encodings. The map
# decoder still reads the BEV map.
_base_ = ['./mapllava_r50_vicuna7b-frozen_8xb4-24e_nus-map-mini.py']

model = dict(neck=dict(modalities=dict(image=dict(downsample=2), bev=False)))
