"""Time the fast chamfer-AP evaluator on a nuScenes-val-sized synthetic workload.

    .venv/bin/python tools/benchmarks/bench_chamfer_map.py [--samples 6019] [--ref-samples 60]

The workload mimics MapTR output on nuScenes val: per sample ~20 GT lines (lane dividers,
road boundaries, closed pedestrian-crossing rings, 2-60 original vertices) in the 30 x 60 m
ROI, and 50 predictions of 20 points: noisy / reversed / truncated copies of GT with high
scores, lower-scored duplicates, wrong-class copies and random false positives. The
reference (tools/benchmarks/reference_chamfer_ap.py) is timed on the first ``--ref-samples``
samples and extrapolated linearly to the full workload (its cost is per pair, per sample);
both results on that subset are compared.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..')))

from projects.MapLLaVA.mapllava.evaluation.chamfer_ap import compute_chamfer_ap  # noqa: E402
from tools.benchmarks.reference_chamfer_ap import reference_chamfer_ap  # noqa: E402

ROI = np.array([15.0, 30.0])  # half extents (x, y)


def _polyline(rng: np.random.Generator, start: np.ndarray, end: np.ndarray, n: int,
              bend: float) -> np.ndarray:
    """A gently curved line from start to end with n vertices (uneven spacing)."""
    t = np.sort(np.r_[0.0, rng.uniform(0, 1, max(n - 2, 0)), 1.0])
    pts = start + t[:, None] * (end - start)
    normal = np.array([-(end - start)[1], (end - start)[0]])
    normal /= np.linalg.norm(normal) + 1e-12
    return pts + (bend * 4 * t * (1 - t))[:, None] * normal


def make_gt(rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """~19 GT lines: dividers, boundaries, pedestrian crossings (closed rings)."""
    vecs, labels = [], []
    for _ in range(rng.integers(6, 13)):  # dividers along the driving direction
        x = rng.uniform(-14, 14)
        y0, y1 = sorted(rng.uniform(-30, 30, 2))
        y1 = max(y1, y0 + 3)
        vecs.append(_polyline(rng, np.array([x, y0]), np.array([x + rng.normal(0, 1.5), y1]),
                              int(rng.integers(2, 30)), rng.normal(0, 1.0)))
        labels.append(0)
    for _ in range(rng.integers(0, 6)):  # crossings: rotated rectangles, closed
        c = rng.uniform(-ROI + 3, ROI - 3)
        w, h, a = rng.uniform(2.5, 5), rng.uniform(6, 14), rng.uniform(0, np.pi)
        corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h], [-w, -h]]) / 2
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        vecs.append(c + corners @ rot.T)
        labels.append(1)
    for _ in range(rng.integers(5, 11)):  # boundaries: long, curvy, many vertices
        start = rng.uniform(-ROI, ROI)
        end = rng.uniform(-ROI, ROI)
        vecs.append(_polyline(rng, start, end, int(rng.integers(5, 60)), rng.normal(0, 4)))
        labels.append(2)
    vecs = [np.clip(v, -ROI, ROI).astype(np.float32) for v in vecs]
    return vecs, np.array(labels, dtype=np.int64)


def make_preds(rng: np.random.Generator, gt_vecs: list[np.ndarray], gt_labels: np.ndarray,
               num: int = 50, pts: int = 20) -> dict:
    """``num`` predictions of ``pts`` points: GT copies, duplicates, random lines."""
    from projects.MapLLaVA.mapllava.utils.polyline import resample_polyline
    vecs, scores, labels = [], [], []

    def copy(v, sigma, lo, hi, label):
        p = resample_polyline(v.astype(np.float64), pts)
        if rng.random() < 0.2:  # partial detection
            a, b = sorted(rng.integers(0, pts, 2))
            p = resample_polyline(p[a:max(b, a + 1) + 1], pts)
        p = p + rng.normal(0, sigma, 2) + rng.normal(0, sigma / 2, p.shape)
        vecs.append(p[::-1] if rng.random() < 0.3 else p)
        scores.append(rng.uniform(lo, hi))
        labels.append(label)

    for v, lab in zip(gt_vecs, gt_labels):
        if rng.random() < 0.85:
            copy(v, rng.uniform(0.05, 1.0), 0.3, 1.0, lab)
        if rng.random() < 0.3:
            copy(v, rng.uniform(0.3, 2.0), 0.0, 0.5, lab)
        if rng.random() < 0.05:
            copy(v, 0.3, 0.0, 0.6, (lab + 1) % 3)
    while len(vecs) < num:
        start, end = rng.uniform(-ROI, ROI), rng.uniform(-ROI, ROI)
        vecs.append(_polyline(rng, start, end, pts, rng.normal(0, 3)))
        scores.append(rng.uniform(0, 0.4))
        labels.append(int(rng.integers(0, 3)))
    keep = np.argsort(-np.array(scores), kind='stable')[:num]
    return dict(vectors=np.stack([vecs[i] for i in keep]).astype(np.float32),
                scores=np.array(scores, dtype=np.float32)[keep],
                labels=np.array(labels, dtype=np.int64)[keep])


def make_workload(num_samples: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for _ in range(num_samples):
        v, lab = make_gt(rng)
        gts.append(dict(vectors=v, labels=lab))
        preds.append(make_preds(rng, v, lab))
    return gts, preds


def _timed(fn, *args, **kwargs):
    """Run fn; return (result, wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--samples', type=int, default=6019)
    parser.add_argument('--ref-samples', type=int, default=60)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()

    (gts, preds), gen_s, _ = _timed(make_workload, args.samples, args.seed)
    n_gt = sum(len(g['labels']) for g in gts)
    n_pred = sum(len(p['labels']) for p in preds)
    print(f'workload: {args.samples} samples, {n_gt} GT lines, {n_pred} predictions '
          f'(generated in {gen_s:.1f} s); load average {os.getloadavg()[0]:.1f} '
          f'on {os.cpu_count()} CPUs')

    _, warm_s, _ = _timed(compute_chamfer_ap, gts[:2], preds[:2], num_classes=3)
    print(f'first call (numba: load cached machine code, or compile): {warm_s:.1f} s')
    res, fast_s, fast_cpu = _timed(compute_chamfer_ap, gts, preds, num_classes=3)
    print(f'fast path, full workload: {fast_s:.2f} s wall, {fast_cpu:.2f} s CPU   '
          f'mAP {res.mean_ap:.4f}\n  pair counts {res.stats}')

    n = min(args.ref_samples, args.samples)
    sub_fast, sub_fast_s, _ = _timed(compute_chamfer_ap, gts[:n], preds[:n], num_classes=3)
    sub_ref, ref_s, ref_cpu = _timed(reference_chamfer_ap, gts[:n], preds[:n], num_classes=3)
    scale = args.samples / n
    print(f'reference, first {n} samples: {ref_s:.1f} s wall, {ref_cpu:.1f} s CPU '
          f'(fast path on them: {sub_fast_s:.2f} s); extrapolated x{scale:.0f} to '
          f'{args.samples} samples: {ref_s * scale:.0f} s wall, {ref_cpu * scale:.0f} s CPU')
    print(f'max |AP fast - AP reference| on those samples: '
          f'{np.abs(sub_fast.ap - sub_ref).max():.1e}')
    print(f'speed-up on the full workload (extrapolated reference / fast): '
          f'{ref_s * scale / fast_s:.0f}x wall, {ref_cpu * scale / fast_cpu:.0f}x CPU')


if __name__ == '__main__':
    main()
