# Modality ablation, full size with LiDAR: the Q-Former reads 6 x 15 x 25 image tokens, the
# camera BEV map before fusion and the LiDAR BEV map (100 x 50 tokens each); the map decoder
# reads the fused map.
_base_ = ['./mapllava_r50-lidar_vicuna7b-frozen_8xb4-24e_nus-map-mini.py']

model = dict(neck=dict(modalities=dict(
    image=dict(downsample=2), bev=dict(source='camera'), lidar=dict(downsample=2))))
