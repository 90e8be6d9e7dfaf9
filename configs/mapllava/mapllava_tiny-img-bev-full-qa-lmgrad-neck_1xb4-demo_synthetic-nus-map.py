# The demo that talks, with the answer loss stopped before the BEV encoder: it trains the
# Q-Former and the LLM bridge, and the BEV map the map head reads is shaped by the map losses
# alone (model.lm_gradient_into). Its run without the LM loss is the parent's:
# --cfg-options model.bridge.lm_loss_weight=0. Results: docs/benchmarks.md.
_base_ = ['./mapllava_tiny-img-bev-full-qa_1xb4-demo_synthetic-nus-map.py']

model = dict(lm_gradient_into='neck')
