# The gradient-stopped demo that talks (the parent) with the training images' colour and light
# augmented (MapTR's photometric distortion per view) but their geometry not: the test-time
# resize, no scale / crop / rotation / flip. The -aug config does both; with it the model read
# the boundaries of scene-0093 (a val scene in a place no train scene drove, in its own light)
# but lost the divider count and the boundary distance, which need the geometry the camera
# gives at test time. The answer loss at weight 50, where -aug's map was above its twin at two
# seeds. Its run without the LM loss: --cfg-options model.bridge.lm_loss_weight=0.
# Results: docs/benchmarks.md.
_base_ = ['./mapllava_tiny-img-bev-full-qa-lmgrad-neck_1xb4-demo_synthetic-nus-map.py']

model = dict(bridge=dict(lm_loss_weight=50.0))
train_dataloader = dict(dataset=dict(pipeline=[
    dict(type='LoadMultiViewImages'),
    dict(type='LoadMapAnnotations'),
    dict(type='MapRangeFilter'),
    dict(type='MapPermutationTargets', num_pts={{_base_.num_pts}}),
    dict(type='MultiViewResize', scale={{_base_.img_scale}}),
    dict(type='MultiViewPhotoMetricDistortion'),
    dict(type='LoadMapQuestions', mode='sample', num_questions=8),
    dict(type='PackMapInputs'),
]))
