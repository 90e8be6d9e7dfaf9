"""``torch.compile`` of the tiny detector on CPU: the compiled loss path gives eager's losses,
and the compiled inference graph is not recompiled for another sample's calibration.

Dynamo's ``'eager'`` backend: graph capture, graph breaks and guards (what decides a
recompilation) are dynamo's whatever the backend; inductor's code generation would add
minutes on a 2-core CI machine and nothing to what is checked here.
"""
import copy
import importlib.util
import os.path as osp

import pytest
import torch
from mmdet3d.registry import MODELS
from mmdet3d.utils import register_all_modules
from mmengine.config import Config

import projects.MapLLaVA.mapllava.models  # noqa: F401  (registers the components)
from projects.MapLLaVA.mapllava.utils.benchmark_inputs import make_batch, with_crop_shift

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(REPO_ROOT, 'configs/_base_/models/mapllava_tiny.py')
spec = importlib.util.spec_from_file_location('_tool_benchmark_compile',
                                              osp.join(REPO_ROOT, 'tools', 'benchmark.py'))
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    torch.set_num_threads(threads)


def tiny_detector(**bridge) -> torch.nn.Module:
    """The tiny config with one Q-Former / LLM layer and no dropout (compiled and eager
    runs then draw no random numbers)."""
    register_all_modules()
    cfg = copy.deepcopy(Config.fromfile(CONFIG).model)
    cfg.neck.qformer_cfg.update(num_hidden_layers=1, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0)
    cfg.bridge.llm_cfg.update(num_hidden_layers=1)
    cfg.bridge.update(bridge)
    torch.manual_seed(0)
    return MODELS.build(cfg)


@pytest.mark.slow
def test_compiled_loss_path_gives_the_eager_losses():
    """The parts ``MapLLaVA.loss`` runs (BEV encoder, Q-Former, bridge, the head's loss with
    the Hungarian matching), compiled with ``fullgraph=False``, then one backward."""
    model = tiny_detector().train()
    data = model.data_preprocessor(make_batch(2, (64, 112), num_instances=6, seed=1),
                                   training=True)
    inputs, samples = data['inputs'], data['data_samples']
    eager = model.loss(inputs, samples)
    benchmark.compile_parts(model, ('bev_encoder', 'neck', 'bridge'), backend='eager')
    model.map_head.loss = torch.compile(model.map_head.loss, backend='eager')
    compiled = model.loss(inputs, samples)
    assert compiled.keys() == eager.keys()
    for key, value in eager.items():
        torch.testing.assert_close(compiled[key], value, msg=key)
    sum(compiled.values()).backward()
    assert model.bev_encoder.img_backbone.conv1.weight.grad is not None


@pytest.mark.slow
def test_inference_graph_is_not_recompiled_for_another_calibration():
    """As ``tools/benchmark.py --compile`` does: every part compiled, one sample to compile
    on, then a sample cropped elsewhere (other ``img_aug_matrix`` values) under
    ``error_on_recompile``; its polylines are eager's."""
    model = tiny_detector().eval()
    first = make_batch(1, (64, 112), with_gt=False)
    second = with_crop_shift(first, (12.0, 6.0))
    with torch.no_grad():
        expected = model.test_step(copy.deepcopy(second))[0].pred_instances_3d
        benchmark.compile_parts(model, benchmark.PARTS, backend='eager')
        model.test_step(first)
        with torch._dynamo.config.patch(error_on_recompile=True):
            got = model.test_step(second)[0].pred_instances_3d
    torch.testing.assert_close(got.polylines, expected.polylines)
    torch.testing.assert_close(got.scores, expected.scores)
    eager_first = tiny_detector().eval()
    with torch.no_grad():
        other = eager_first.test_step(copy.deepcopy(first))[0].pred_instances_3d
    assert not torch.allclose(other.polylines, expected.polylines)  # the rig matters
