"""tools/benchmark.py: the fake batch, the hook timer, the config rewrites and (slow) the tool
end to end on the tiny config on CPU."""
import importlib.util
import json
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from torch import nn

from projects.MapLLaVA.mapllava.engine.config_checks import ConfigCheckError
from projects.MapLLaVA.mapllava.utils.benchmark_inputs import camera_rig, make_batch
from projects.MapLLaVA.mapllava.utils.module_timer import ModuleTimer

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(REPO_ROOT, 'tools', 'benchmark.py')
TINY = 'configs/_base_/models/mapllava_tiny.py'
FULL = 'configs/_base_/models/mapllava_r50_vicuna7b.py'
spec = importlib.util.spec_from_file_location('_tool_benchmark', TOOL)
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)


def test_rig_sees_each_direction_in_its_camera():
    rig = camera_rig((450, 800))
    proj = rig['img_aug_matrix'] @ rig['lidar2img']
    # LiDAR frame: x right, y forward; nuScenes camera order
    targets = [(0, 20), (16, 11), (-16, 11), (0, -20), (-18, -7), (18, -7)]
    for cam, (x, y) in enumerate(targets):
        uvw = proj @ np.array([x, y, -1.8, 1.0])
        seen = (uvw[:, 2] > 0) & np.all(np.abs(uvw[:, :2] / uvw[:, 2:3] - (400, 250)) < 50, 1)
        assert np.flatnonzero(seen).tolist() == [cam]
    np.testing.assert_allclose(rig['img_aug_matrix'][0], np.diag([0.5, 0.5, 1, 1]))
    np.testing.assert_allclose(rig['lidar2cam'] @ np.linalg.inv(rig['lidar2ego']) @
                               rig['cam2ego'], np.broadcast_to(np.eye(4), (6, 4, 4)),
                               atol=1e-12)


def test_batch_follows_the_data_contract():
    batch = make_batch(2, (64, 112), num_classes=3, num_pts=20, num_instances=7)
    img = batch['inputs']['img'][1]
    assert img.shape == (6, 3, 64, 112) and img.dtype == torch.uint8
    sample = batch['data_samples'][0]
    assert sample.img_shape == (64, 112) and sample.ori_shape == (900, 1600)
    assert sample.lidar2img.shape == (6, 4, 4) and sample.img_aug_matrix.dtype == np.float64
    gt = sample.gt_instances_3d
    assert gt.labels.dtype == torch.int64 and gt.labels.shape == (7,)
    assert gt.polylines.shape == (7, 20, 2) and gt.shifts.shape == (7, 38, 20, 2)
    assert gt.polylines.abs().max() <= 30
    torch.testing.assert_close(gt.shifts[:, 0], gt.polylines)
    closed = gt.labels == 1
    assert (gt.shifts_valid.sum(1) == torch.where(closed, 38, 2)).all()
    no_gt = make_batch(1, (64, 112), with_gt=False)['data_samples'][0]
    assert 'labels' not in no_gt.gt_instances_3d


def test_batch_has_lidar_points_for_lidar_configs():
    """A LiDAR-branch config is benchmarked with a point cloud per sample (it cannot run
    without one), in the packed layout ``inputs['points']: [(N, 5) float32, ...]``."""
    batch = make_batch(2, (64, 112), with_gt=False, num_lidar_points=500)
    points = batch['inputs']['points']
    assert len(points) == 2 and points[0].shape == (500, 5) and points[0].dtype == torch.float32
    assert points[0][:, 0].abs().max() <= 30 and points[0][:, 1].abs().max() <= 60
    assert not torch.equal(points[0], points[1])
    assert 'points' not in make_batch(1, (64, 112), with_gt=False)['inputs']


def test_module_timer_counts_forward_calls_and_spans():
    inner = nn.Linear(4, 4)
    model = nn.Sequential(inner, nn.ReLU())
    timer = ModuleTimer({'inner': inner, 'all': model}, cuda=False)
    with timer.span('step'):
        for _ in range(3):
            model(torch.zeros(2, 4))
    totals = timer.totals_ms()
    assert set(totals) == {'inner', 'all', 'step'}
    assert len(timer._spans['inner']) == 3
    assert 0 < totals['inner'] <= totals['all'] <= totals['step']
    timer.reset()
    timer.remove()
    model(torch.zeros(2, 4))
    assert timer.totals_ms() == {}


def test_random_weights_give_the_7b_and_blip2_shapes():
    args = benchmark.parse_args([FULL, '--mode', 'train', '--random-weights'])
    cfg, notes = benchmark.load_config(args)
    bridge, neck = cfg.model.bridge, cfg.model.neck
    assert bridge.llm_path is None and bridge.tokenizer_path is None
    assert bridge.llm_cfg == benchmark.VICUNA_7B and bridge.llm_cfg['num_hidden_layers'] == 32
    # byte-level prompt ids about as many as Llama tokens (BOS + ~54 for the default prompt)
    assert 40 < len(bridge.prompt.encode()) < 70
    assert neck.pretrained is None and neck.num_query_tokens == 32
    assert neck.qformer_cfg['encoder_hidden_size'] == 1408
    assert len(notes) == 3 and args.batch_size == 4


def test_bypass_keeps_the_bridge_shapes():
    args = benchmark.parse_args([TINY, '--mode', 'infer', '--bypass'])
    cfg, _ = benchmark.load_config(args)
    assert cfg.model.bridge == dict(type='BypassBridge', in_channels=128, embed_dims=128,
                                    num_map_queries=50)
    assert args.batch_size == 1


def test_image_size_from_the_pipeline_or_the_flag():
    cfg = Config(dict(test_pipeline=[dict(type='LoadMultiViewImages'),
                                     dict(type='MultiViewResize', scale=(800, 450))]))
    assert benchmark.find_img_size(cfg, 'infer', None) == ((450, 800), 'test pipeline '
                                                                       'MultiViewResize')
    assert benchmark.find_img_size(Config(dict(img_size=(32, 64))), 'train', None)[0] == (32, 64)
    assert benchmark.find_img_size(cfg, 'infer', [64, 112])[0] == (64, 112)
    with pytest.raises(ConfigCheckError, match='--img-size'):
        benchmark.find_img_size(Config(dict()), 'train', None)


def test_compile_is_for_inference_only():
    with pytest.raises(SystemExit):
        benchmark.parse_args([TINY, '--mode', 'train', '--compile'])
    args = benchmark.parse_args([TINY, '--mode', 'infer', '--compile'])
    assert args.compile == list(benchmark.DEFAULT_COMPILE)


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['train', 'infer'])
def test_tool_on_cpu_writes_the_json(tmp_path, mode):
    out = tmp_path / f'{mode}.json'
    cmd = [sys.executable, TOOL, TINY, '--mode', mode, '--iters', '2', '--warmup', '1',
           '--device', 'cpu', '--img-size', '64', '112', '--out', str(out)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'ms/iter' in proc.stdout
    result = json.loads(out.read_text())
    assert result['batch_size'] == (4 if mode == 'train' else 1)
    assert result['img_size'] == [64, 112] and result['num_cams'] == 6
    for key in ('ms_per_iter', 'samples_per_s', 'peak_memory_mb'):
        assert result[key] > 0, key
    assert 'RSS' in result['peak_memory_kind']
    rest = 'backward_and_step' if mode == 'train' else 'other'
    parts = ('data_preprocessor', 'bev_encoder', 'neck', 'bridge', 'map_head', 'other_forward')
    assert set(result['stage_ms']) == {*parts, rest}
    assert all(result['stage_ms'][k] > 0 for k in parts[:5])
    total = sum(result['stage_ms'].values())
    assert total == pytest.approx(result['ms_per_iter'], rel=0.2)
    assert result['bridge_tokens']['map_queries'] == 50
    if mode == 'infer':
        assert result['fps'] == result['samples_per_s']
