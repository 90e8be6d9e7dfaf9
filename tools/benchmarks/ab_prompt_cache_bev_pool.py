"""Same-process A/B at the mid-size shapes, which machine contention affects equally:

* the LLM bridge (2-layer, 4096-wide random Llama, 55-character prompt) with
  ``prompt_cache`` on and off: inference at batch 1, forward + backward at batch 4;
* the lift-splat forward + backward at the full-size rig, static-shape pool against the
  ``nonzero`` pool of commit ``e1edd38`` (read with ``git show``; outputs checked equal).

Alternating repeats, medians. Usage: ``python tools/benchmarks/ab_prompt_cache_bev_pool.py``.
"""
from __future__ import annotations

import importlib.util
import os.path as osp
import statistics
import subprocess
import sys
import tempfile
import time

import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, REPO)
from projects.MapLLaVA.mapllava.models.bev_encoder import LSSViewTransform  # noqa: E402
from projects.MapLLaVA.mapllava.models.llm import LLMBridge  # noqa: E402
from projects.MapLLaVA.mapllava.utils.benchmark_inputs import make_batch  # noqa: E402

OLD_COMMIT = 'e1edd38'
OLD_POOL = 'projects/MapLLaVA/mapllava/models/bev_encoder/bev_pool.py'
LLM = dict(model_type='llama', hidden_size=4096, intermediate_size=11008, num_hidden_layers=2,
           num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
           max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
           tie_word_embeddings=False)


def timed(fn, flags, repeats: int) -> dict:
    """Median seconds of ``fn(flag)`` per flag, the flags alternating every repeat."""
    times = {flag: [] for flag in flags}
    for _ in range(repeats):
        for flag in flags:
            start = time.perf_counter()
            fn(flag)
            times[flag].append(time.perf_counter() - start)
    return {flag: 1e3 * statistics.median(t) for flag, t in times.items()}


def bench_bridge() -> None:
    torch.manual_seed(0)
    bridge = LLMBridge(768, 256, 50, llm_cfg=LLM, dtype='fp32',
                       prompt='A chat between a curious user and an artificial intell').eval()

    def infer(flag):
        bridge.prompt_cache = flag
        with torch.no_grad():
            bridge(torch.randn(1, 32, 768))

    infer(True), infer(False)  # warm-up, builds the frozen prompt cache
    ms = timed(infer, (True, False), 3)
    print(f'bridge inference, batch 1, prompt cache on / off: {ms[True]:.0f} / {ms[False]:.0f} ms')
    bridge.train()

    def train(flag):
        bridge.prompt_cache = flag
        bridge(torch.randn(4, 32, 768, requires_grad=True)).sum().backward()

    ms = timed(train, (True, False), 2)
    print(f'bridge fwd+bwd, batch 4, prompt cache on / off: {ms[True]:.0f} / {ms[False]:.0f} ms')


def load_old_pool():
    source = subprocess.run(['git', 'show', f'{OLD_COMMIT}:{OLD_POOL}'], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    path = osp.join(tempfile.mkdtemp(), 'old_bev_pool.py')
    with open(path, 'w') as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location('old_bev_pool', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_splat() -> None:
    old_pool = load_old_pool()
    vt = LSSViewTransform(256, 80, depth_bins=(1.0, 60.0, 0.5), downsample=2)
    batch = make_batch(1, (450, 800), with_gt=False)
    geom = vt.get_geometry(batch['data_samples'], (480, 800), (30, 50))
    depth = torch.rand(1, 6, vt.num_bins, 30, 50).softmax(2).requires_grad_()
    feats = torch.rand(1, 6, 80, 30, 50, requires_grad=True)
    grid = vt.pool_grid

    def old_splat():
        flat_depth = depth.permute(0, 1, 3, 4, 2).reshape(-1, depth.shape[2])
        flat_feats = feats.permute(0, 1, 3, 4, 2).reshape(-1, feats.shape[2])
        cells, valid = grid.flat_index(geom.reshape(-1, 3))
        point_idx = valid.nonzero().squeeze(1)
        cell_idx = cells[point_idx] + (point_idx // (geom[0].numel() // 3)) * grid.num_cells
        return old_pool.depth_weighted_bev_pool(flat_depth, flat_feats, point_idx, cell_idx,
                                                grid.num_cells, 1 << 18)

    def new_splat():
        return vt.splat(depth, feats, geom)

    inside = grid.flat_index(geom)[1].float().mean().item()
    torch.testing.assert_close(old_splat().view(-1),
                               new_splat().permute(0, 2, 3, 1).reshape(-1))
    fns = dict(old=old_splat, new=new_splat)
    ms = timed(lambda name: fns[name]().sum().backward(), ('old', 'new'), 3)
    print(f'lift-splat fwd+bwd ({inside:.1%} of frustum points inside the grid), nonzero / '
          f'static shapes: {ms["old"]:.0f} / {ms["new"]:.0f} ms')


if __name__ == '__main__':
    bench_bridge()
    bench_splat()
