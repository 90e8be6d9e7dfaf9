"""Slow, obviously-correct chamfer AP: the MapTR protocol written as plainly as possible.

This is the yardstick for ``projects/MapLLaVA/mapllava/evaluation/chamfer_ap.py``: the tests
check the fast path against it and ``bench_chamfer_map.py`` times it. One pair at a time:
shapely buffers and ``intersects``, a full distance matrix, Python loops for the greedy
matching and for the VOC area AP. Keep it that way; speed belongs in the fast path.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from shapely.geometry import LineString


def resample(vertices: np.ndarray, num_pts: int) -> np.ndarray:
    """``num_pts`` points evenly spaced by arc length, via shapely's interpolate."""
    line = LineString(np.asarray(vertices, dtype=np.float64))
    dists = np.linspace(0, line.length, num_pts)
    return np.array([line.interpolate(d).coords[0] for d in dists])


def buffers_intersect(a: np.ndarray, b: np.ndarray, buffer: float) -> bool:
    """Whether the flat-capped, mitre-joined buffers of two lines intersect (MapTR's gate)."""
    kw = dict(cap_style='flat', join_style='mitre')
    return LineString(a).buffer(buffer, **kw).intersects(LineString(b).buffer(buffer, **kw))


def chamfer(a: np.ndarray, b: np.ndarray) -> float:
    """Mean of the two mean nearest-point distances."""
    dist = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return (dist.min(-2).mean() + dist.min(-1).mean()) / 2


def voc_area_ap(tp_sorted: Sequence[bool], num_gts: int) -> float:
    """VOC all-point AP of detections already sorted by decreasing score."""
    eps = np.finfo(np.float32).eps
    tp_cum = fp_cum = 0
    recall, precision = [], []
    for is_tp in tp_sorted:
        tp_cum += int(is_tp)
        fp_cum += int(not is_tp)
        recall.append(tp_cum / max(num_gts, eps))
        precision.append(tp_cum / max(tp_cum + fp_cum, eps))
    mrec = [0.0] + recall + [1.0]
    mpre = [0.0] + precision + [0.0]
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]
               for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i])


def _usable(v: np.ndarray, score: float = 0.0) -> bool:
    v = np.asarray(v, dtype=np.float64)
    return len(v) >= 2 and bool(np.isfinite(v).all()) and math.isfinite(score)


def reference_chamfer_ap(gts: Sequence[Mapping[str, Any]], preds: Sequence[Mapping[str, Any]],
                         num_classes: int, thresholds: Sequence[float] = (0.5, 1.0, 1.5),
                         num_sample_pts: int = 100, buffer: float = 2.0) -> np.ndarray:
    """(C, T) AP array; same inputs as the fast ``chamfer_ap`` (valid inputs only)."""
    ap = np.zeros((num_classes, len(thresholds)))
    for c in range(num_classes):
        num_gts = 0
        dets = []  # (score, [is_tp per threshold]) in sample order, then prediction order
        for gt, pred in zip(gts, preds):
            gt_lines = [resample(v, num_sample_pts) for v, lab in zip(gt['vectors'], gt['labels'])
                        if lab == c and _usable(v)]
            pred_lines, scores = [], []
            for v, s, lab in zip(pred['vectors'], pred['scores'], pred['labels']):
                if lab == c and _usable(v, float(s)):
                    pred_lines.append(resample(v, num_sample_pts))
                    scores.append(float(s))
            num_gts += len(gt_lines)
            dist = [[math.inf] * len(gt_lines) for _ in pred_lines]
            for i, p in enumerate(pred_lines):
                for j, g in enumerate(gt_lines):
                    if buffers_intersect(p, g, buffer):
                        dist[i][j] = chamfer(p, g)
            results = [[False] * len(thresholds) for _ in pred_lines]
            for t, thr in enumerate(thresholds):
                taken = [False] * len(gt_lines)
                for i in sorted(range(len(pred_lines)), key=lambda i: -scores[i]):  # stable
                    if not gt_lines:
                        continue
                    j = min(range(len(gt_lines)), key=lambda j: dist[i][j])  # first of equals
                    if dist[i][j] <= thr and not taken[j]:
                        taken[j] = True
                        results[i][t] = True
            dets.extend(zip(scores, results))
        dets = sorted(dets, key=lambda d: -d[0])  # stable: ties keep sample/prediction order
        for t in range(len(thresholds)):
            ap[c, t] = voc_area_ap([d[1][t] for d in dets], num_gts)
    return ap
