"""Every config under configs/mapllava builds, its per-part learning rates reach real
parameters, and one training step runs, with the pretrained LLM / Q-Former / R50 swapped for
small random stand-ins (the real weights cannot be downloaded here)."""
import glob
import os.path as osp

import numpy as np
import pytest
import torch
from _cpu_amp import cpu_optim_wrapper_cfg
from mmdet3d.registry import MODELS
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

import projects.MapLLaVA.mapllava  # noqa: F401  (registers the components)
from projects.MapLLaVA.mapllava.utils.benchmark_inputs import make_batch

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(glob.glob(osp.join(REPO_ROOT, 'configs', 'mapllava', '*.py')))
TINY_LLM = dict(model_type='llama', hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=2, vocab_size=256,
                max_position_embeddings=512)


def _shrink(model_cfg) -> None:
    """Same wiring, small random weights: nothing is read from the hub or torchvision."""
    model_cfg.bev_encoder.img_backbone.pop('init_cfg', None)
    neck = model_cfg.neck
    if neck.get('pretrained'):
        neck.pretrained = None
        neck.qformer_cfg = dict(hidden_size=model_cfg.bridge.in_channels, num_hidden_layers=1,
                                num_attention_heads=4, intermediate_size=128,
                                encoder_hidden_size=64, cross_attention_frequency=1)
    bridge = model_cfg.bridge
    big_cfg = (bridge.get('llm_cfg') or {}).get('hidden_size', 0) > 1024  # benchmark stand-in
    if bridge.type == 'LLMBridge' and (bridge.get('llm_path') or big_cfg):
        bridge.llm_path, bridge.llm_cfg = None, dict(TINY_LLM)  # keeps the config's dtype


def test_every_config_is_listed():
    names = {osp.basename(p) for p in CONFIGS}
    assert 'mapllava_tiny_1xb4-demo_synthetic-nus-map.py' in names
    assert len(names) >= 9
    with open(osp.join(REPO_ROOT, 'configs', 'mapllava', 'README.md')) as f:
        readme = f.read()
    assert [n for n in names if n not in readme] == []


@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_evaluator_reads_the_val_infos(path):
    """The dataset joins ``ann_file`` to ``data_root``; every metric reads the same file."""
    cfg = Config.fromfile(path)
    val = cfg.val_dataloader.dataset
    infos = osp.normpath(osp.join(val.data_root, val.ann_file))
    metrics = cfg.val_evaluator if isinstance(cfg.val_evaluator, list) else [cfg.val_evaluator]
    assert [osp.normpath(m.ann_file) for m in metrics] == [infos] * len(metrics)
    train = cfg.train_dataloader.dataset
    assert osp.dirname(osp.normpath(osp.join(train.data_root, train.ann_file))) == \
        osp.dirname(infos)


@pytest.mark.slow
@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_config_builds_and_trains_one_step(path):
    cfg = Config.fromfile(path)
    init_default_scope(cfg.get('default_scope', 'mmdet3d'))
    _shrink(cfg.model)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    # AmpOptimWrapper (bf16, the full-size default) runs as its CPU equivalent here
    optim = build_optim_wrapper(model, cpu_optim_wrapper_cfg(cfg.optim_wrapper))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    custom = cfg.optim_wrapper.get('paramwise_cfg', {}).get('custom_keys', {})
    for key, opts in custom.items():
        hits = [n for n, p in model.named_parameters() if key in n]
        assert hits, f'{osp.basename(path)}: custom_keys {key!r} matches no parameter'
        if opts.get('lr_mult', 1.0) > 0 and key.startswith('bridge.llm'):
            assert any(key in n for n in names), f'{key} is in the recipe but frozen'

    num_classes = cfg.model.map_head.num_classes
    batch = make_batch(1, (64, 112), num_classes=num_classes,
                       roi_size=cfg.train_dataloader.dataset.metainfo.get('roi_size',
                                                                          (30.0, 60.0)))
    depth_loss = cfg.model.bev_encoder.get('view_transform', {}).get('depth_loss_weight', 0)
    if cfg.model.data_preprocessor.get('voxel') or depth_loss > 0:
        rng = np.random.default_rng(0)
        pts = rng.uniform([-15, -30, -2, 0, 0], [15, 30, 1, 255, 0], (2000, 5))
        batch['inputs']['points'] = [torch.from_numpy(pts.astype(np.float32))]
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = model.train_step(batch, optim)
    assert {'loss_cls', 'loss_pts', 'loss_dir'} <= set(losses)
    assert all(torch.isfinite(v).all() for v in losses.values())
    trained = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith('map_head.') for n in trained)
    assert any(n.startswith('neck.') for n in trained)
