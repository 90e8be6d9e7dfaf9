# The demo that talks, reading the cameras too: the Q-Former's memory holds the perspective
# image tokens (as the -img-bev modality config) beside the BEV tokens, so the answers can
# draw on more of the scene than the BEV map. Results: docs/benchmarks.md.
_base_ = ['./mapllava_tiny-full-qa_1xb4-demo_synthetic-nus-map.py']

model = dict(neck=dict(modalities=dict(image=dict(downsample=4), bev=True)))
