# Modality ablation, full size: the Q-Former reads the BEV map only (100 x 50 tokens, the
# stage-2 default, stated explicitly).
_base_ = ['./mapllava_r50_vicuna7b-frozen_8xb4-24e_nus-map-mini.py']

model = dict(neck=dict(modalities=dict(bev=True)))
