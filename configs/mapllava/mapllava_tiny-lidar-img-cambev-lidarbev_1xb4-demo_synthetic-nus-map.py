# Modality ablation, CPU demo with the LiDAR branch: the Q-Former reads image tokens, the
# camera BEV map (before fusion) and the LiDAR BEV map; the map decoder reads the fused map.
_base_ = ['./mapllava_tiny-lidar_1xb4-demo_synthetic-nus-map.py']

model = dict(neck=dict(modalities=dict(
    image=dict(downsample=4), bev=dict(source='camera'), lidar=True)))
