# The demo that talks with the answer loss stopped before the BEV encoder (the parent), and the
# training images augmented: BEVFusion's random scale / crop / rotation / flip per view (the
# camera geometry follows through img_aug_matrix) and MapTR's photometric distortion. Each
# synthetic scene has its own light and colour, and a val scene may lie where no train scene
# drove (scene-0093: ~200 m from any train pose), so the encoder should not learn the train
# scenes' looks. Test pipeline unchanged. Its run without the LM loss (not the parent's: this
# one augments too): --cfg-options model.bridge.lm_loss_weight=0. Results: docs/benchmarks.md.
_base_ = ['./mapllava_tiny-img-bev-full-qa-lmgrad-neck_1xb4-demo_synthetic-nus-map.py']

train_dataloader = dict(dataset=dict(pipeline=[
    dict(type='LoadMultiViewImages'),
    dict(type='LoadMapAnnotations'),
    dict(type='MapRangeFilter'),
    dict(type='MapPermutationTargets', num_pts={{_base_.num_pts}}),
    dict(type='MultiViewRandomAffine', scale={{_base_.img_scale}}),
    dict(type='MultiViewPhotoMetricDistortion'),
    dict(type='LoadMapQuestions', mode='sample', num_questions=8),
    dict(type='PackMapInputs'),
]))
