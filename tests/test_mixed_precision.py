"""What a GPU run in bf16 depends on, checked on CPU: the dtypes that reach the deformable
attention kernel, a whole train step under bf16 autocast, fp32 master weights for a fully
fine-tuned LLM, and the map-query attention mask inside the LLM."""
import copy
import os.path as osp

import pytest
import torch
from _cpu_amp import CPUBF16OptimWrapper
from mmcv.ops import MultiScaleDeformableAttention
from mmcv.ops import multi_scale_deform_attn as msda
from mmdet3d.registry import MODELS
from mmdet3d.utils import register_all_modules
from mmengine.config import Config

from projects.MapLLaVA.mapllava.models.heads import FP32MultiScaleDeformableAttention
from projects.MapLLaVA.mapllava.models.llm import LLMBridge
from projects.MapLLaVA.mapllava.utils.benchmark_inputs import make_batch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY = osp.join(REPO, 'configs/_base_/models/mapllava_tiny.py')
FULL_SIZE_CONFIGS = [
    'mapllava_r50_vicuna7b-frozen_8xb4-24e_nus-map-mini.py',
    'mapllava_r50_vicuna7b-frozen_8xb4-12e_nus-map.py',
    'mapllava_r50_vicuna7b-full_8xb4-3e_nus-map.py',
    'mapllava_r50_vicuna7b-lora_8xb4-3e_nus-map.py',
    'mapllava_r50-lidar_vicuna7b-frozen_8xb4-24e_nus-map-mini.py',
    'mapllava_r50_bypass_8xb4-24e_nus-map-mini.py',
]
SMALL_LLAMA = dict(model_type='llama', hidden_size=64, intermediate_size=128,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                   vocab_size=256, max_position_embeddings=512)


pytestmark = pytest.mark.usefixtures('single_thread')


@pytest.fixture
def kernel_dtypes(monkeypatch):
    """Record the dtypes handed to mmcv's deformable-attention kernels: the CUDA autograd
    function (GPU tensors) and ``multi_scale_deformable_attn_pytorch`` (the CPU path); both
    get the same ``value, ..., sampling_locations, attention_weights``."""
    seen = []
    cpu_path = msda.multi_scale_deformable_attn_pytorch

    def spy_cpu(value, shapes, locations, weights):
        seen.append((value.dtype, locations.dtype, weights.dtype))
        return cpu_path(value, shapes, locations, weights)

    cuda_apply = msda.MultiScaleDeformableAttnFunction.apply

    def spy_cuda(value, shapes, start, locations, weights, step):
        seen.append((value.dtype, locations.dtype, weights.dtype))
        return cuda_apply(value, shapes, start, locations, weights, step)

    monkeypatch.setattr(msda, 'multi_scale_deformable_attn_pytorch', spy_cpu)
    monkeypatch.setattr(msda.MultiScaleDeformableAttnFunction, 'apply', spy_cuda)
    return seen


def _attention_inputs(dims: int = 32):
    torch.manual_seed(0)
    query = torch.randn(2, 40, dims)
    value = torch.randn(2, 10 * 5, dims)
    ref = torch.rand(2, 40, 1, 2)
    shapes = torch.tensor([[10, 5]])
    return dict(query=query, value=value, query_pos=torch.randn_like(query),
                reference_points=ref, spatial_shapes=shapes,
                level_start_index=shapes.new_zeros(1))


def test_plain_mmcv_attention_hands_bf16_to_the_kernel(kernel_dtypes):
    """The failure the fp32 wrapper exists for: under bf16 autocast mmcv's module gives its
    kernel a bf16 ``value`` (and casts locations and weights to it); the CUDA kernel of mmcv
    2.1 has no bf16 dispatch."""
    attn = MultiScaleDeformableAttention(embed_dims=32, num_heads=4, num_levels=1,
                                         num_points=4, dropout=0.0, batch_first=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        attn(**_attention_inputs())
    assert kernel_dtypes and kernel_dtypes[0][0] == torch.bfloat16


def test_fp32_attention_kernel_inputs_under_bf16_autocast(kernel_dtypes):
    attn = FP32MultiScaleDeformableAttention(embed_dims=32, num_heads=4, num_levels=1,
                                             num_points=4, dropout=0.0, batch_first=True)
    inputs = _attention_inputs()
    ref = attn(**inputs)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = attn(**{k: v.bfloat16() if v.is_floating_point() else v
                      for k, v in inputs.items()})
    assert kernel_dtypes == [(torch.float32,) * 3] * 2
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=5e-2, rtol=0)  # inputs were rounded to bf16


def build_tiny(**bridge) -> torch.nn.Module:
    register_all_modules()
    cfg = copy.deepcopy(Config.fromfile(TINY).model)
    cfg.bridge.update(bridge)
    cfg.map_head.update(num_aux_vec=20, aux_repeat_k=2)
    torch.manual_seed(0)
    return MODELS.build(cfg)


@pytest.mark.parametrize('mode', ['frozen', 'lora', 'full'])
def test_tiny_train_step_under_bf16_autocast(kernel_dtypes, mode):
    """A whole step as ``AmpOptimWrapper(dtype='bfloat16')`` runs it, with a bf16 LLM (as in
    the full-size configs): finite losses, every trained tensor stays fp32 and moves, and the
    deformable kernel only ever sees fp32."""
    model = build_tiny(mode=mode, dtype='bf16').train()
    params = [p for p in model.parameters() if p.requires_grad]
    assert {p.dtype for p in params} == {torch.float32}
    wrapper = CPUBF16OptimWrapper(torch.optim.AdamW(params, lr=1e-3))
    batch = make_batch(2, (64, 112), num_classes=3)
    before = [p.detach().clone() for p in params]
    losses = model.train_step(batch, wrapper)
    assert {'loss_cls', 'loss_pts', 'loss_dir', 'o2m.loss_pts'} <= set(losses)
    assert all(torch.isfinite(v).all() for v in losses.values())
    assert kernel_dtypes and set(kernel_dtypes) == {(torch.float32,) * 3}
    moved = sum(not torch.equal(b, p) for b, p in zip(before, params))
    assert moved >= 0.9 * len(params)
    frozen_weight = model.bridge.decoder.layers[0].mlp.up_proj.weight  # no adapter there
    assert frozen_weight.dtype == (torch.float32 if mode == 'full' else torch.bfloat16)


def test_predict_under_bf16_autocast_gives_fp32_metres():
    model = build_tiny(mode='frozen', dtype='bf16').eval()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        results = model.test_step(make_batch(1, (64, 112), num_classes=3, with_gt=False))
    pred = results[0].pred_instances_3d
    assert pred.polylines.dtype == torch.float32 and torch.isfinite(pred.polylines).all()


def _bridge(mode: str, **kwargs) -> LLMBridge:
    torch.manual_seed(0)
    return LLMBridge(in_channels=32, embed_dims=32, num_map_queries=6,
                     llm_cfg=dict(SMALL_LLAMA), mode=mode, **kwargs)


def test_full_mode_keeps_fp32_masters_and_moves_every_element():
    """One AdamW step at lr 1e-6 on an LLM matrix. A bf16 weight of magnitude ~0.02 has a
    spacing of 1.2e-4 there, so a 1e-6 update rounds away for ~98 % of its elements; an fp32
    master takes it. bf16 stays the compute dtype (autocast inside the bridge)."""
    bridge = _bridge('full', dtype='bf16').train()
    weight = bridge.llm.model.layers[0].self_attn.q_proj.weight
    assert weight.dtype == torch.float32 and weight.requires_grad
    assert bridge.llm.lm_head.weight.dtype == torch.bfloat16  # untrained, never used
    optim = torch.optim.AdamW([p for p in bridge.parameters() if p.requires_grad], lr=1e-6,
                              weight_decay=0.0)
    before = weight.detach().clone()
    seen = []
    hook = bridge.llm.model.layers[0].self_attn.q_proj.register_forward_hook(
        lambda mod, inp, out: seen.append(out.dtype))
    out = bridge(torch.randn(2, 8, 32))
    hook.remove()
    # the prompt pass and the scene + map-query pass
    assert seen == [torch.bfloat16] * 2 and out.dtype == torch.float32
    out.square().mean().backward()
    optim.step()
    changed = (weight.detach() != before).float().mean().item()
    assert changed >= 0.99, f'only {changed:.1%} of q_proj changed'


def test_bf16_weights_cannot_take_the_step():
    """The control of the test above: the same step on a bf16 copy of the weight."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter((torch.randn(64, 64) * 0.02).bfloat16())
    weight.grad = torch.randn_like(weight)
    before = weight.detach().clone()
    torch.optim.AdamW([weight], lr=1e-6, weight_decay=0.0).step()
    assert (weight.detach() != before).float().mean().item() < 0.1


def test_lora_adapters_are_fp32_on_a_bf16_base():
    bridge = _bridge('lora', dtype='bf16', lora_cfg=dict(r=4, lora_alpha=8))
    trained = {n: p.dtype for n, p in bridge.llm.named_parameters() if p.requires_grad}
    assert trained and set(trained.values()) == {torch.float32}
    frozen = {p.dtype for p in bridge.llm.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}


@pytest.mark.parametrize('attn_implementation', ['sdpa', 'eager'])
def test_bidirectional_map_queries_see_each_other(attn_implementation):
    """Perturb the last map query: with the causal mask the first query cannot see it; with
    the bidirectional block it does. Scene tokens stay causal either way."""
    outs = {}
    for kind in ('causal', 'bidirectional'):
        bridge = _bridge('frozen', dtype='fp32', map_query_attention=kind,
                         attn_implementation=attn_implementation).eval()
        scene = bridge.scene_proj(torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(1)))
        queries = bridge.map_queries[None].detach().clone()
        perturbed = queries.clone()
        perturbed[:, -1] += 1.0
        with torch.no_grad():
            outs[kind] = (bridge.fuse(scene, queries), bridge.fuse(scene, perturbed))
    base, pert = outs['causal']
    torch.testing.assert_close(base[:, :-1], pert[:, :-1])
    base, pert = outs['bidirectional']
    assert (base[:, 0] - pert[:, 0]).abs().max() > 1e-4


def test_bidirectional_mask_layout():
    bridge = _bridge('frozen', dtype='fp32', map_query_attention='bidirectional')
    mask = bridge.map_query_mask(2, 6, 3, torch.float32, torch.device('cpu'))
    expected = torch.tensor([[1, 0, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0],
                             [1, 1, 1, 1, 1, 1],
                             [1, 1, 1, 1, 1, 1],
                             [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert mask.shape == (2, 1, 6, 6) and torch.equal(mask[1, 0], expected)


@pytest.mark.parametrize('name', FULL_SIZE_CONFIGS)
def test_full_size_configs_default_to_bf16_amp(name):
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'mapllava', name))
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.dtype == 'bfloat16'
