# Modality ablation, CPU demo: the Q-Former reads perspective image tokens only (6 cameras x
# 8 x 13 cells: the stride-8 features pooled 4x, with viewing-ray encodings); the map decoder
# still reads the BEV map.
_base_ = ['./mapllava_tiny_1xb4-demo_synthetic-nus-map.py']

model = dict(neck=dict(modalities=dict(image=dict(downsample=4), bev=False)))
