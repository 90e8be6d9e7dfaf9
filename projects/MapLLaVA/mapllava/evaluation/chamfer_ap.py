"""Chamfer-distance average precision for vectorized HD maps, exact to the MapTR protocol.

MapTR's evaluator buffers every line with shapely and builds a full 100x100 distance matrix
for every pred/GT pair whose buffers meet; on nuScenes val that takes minutes. This module
computes the same numbers (protocol in docs/evaluation.md) but

1. bounds every pair's chamfer distance from below (bounding boxes) and skips the pairs that
   cannot reach the largest threshold, since they can never be a true positive;
2. computes the exact chamfer distance for the rest in float64 batches (torch ``cdist``);
3. decides the 2 m buffer-intersection test for those pairs by a geometric sufficient
   condition that the distance matrix already gives, and asks shapely only for the few pairs
   it cannot decide.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import shapely
import torch

from ..utils.polyline import resample_polylines

# Slack added to the lower bounds (they are compared with thresholds in floating point).
_BOUND_SLACK = 1e-9
# The sure-intersection test keeps this far (metres) from the buffer edge, which leaves room
# for GEOS's input simplification (tolerance 1 % of the buffer distance) and rounding.
_EDGE_MARGIN = 0.05
# Shorter lines are always handed to shapely (GEOS may collapse or drop them).
_MIN_SURE_LENGTH = 0.01
_PAIR_CHUNK = 512


@dataclass
class ChamferAPResult:
    """Per-class, per-threshold AP and the counts needed to read it."""

    ap: np.ndarray  # (C, T) float64
    thresholds: tuple[float, ...]
    num_gts: np.ndarray  # (C,) int64
    num_dets: np.ndarray  # (C,) int64
    num_dropped_preds: int = 0  # non-finite coordinates or score
    num_dropped_gts: int = 0  # non-finite coordinates or fewer than 2 vertices
    num_short_preds: int = 0  # fewer than 2 points (dropped by the protocol, no warning)
    stats: dict = field(default_factory=dict)  # pair counts per pipeline stage

    @property
    def class_ap(self) -> np.ndarray:
        """(C,) AP per class: the mean over thresholds."""
        return self.ap.mean(axis=1)

    @property
    def mean_ap(self) -> float:
        """mAP: mean over classes (classes without GT count as 0, as in MapTR)."""
        return float(self.ap.mean()) if self.ap.size else 0.0


@dataclass
class _Lines:
    """One class's lines over the whole dataset, ordered by (sample, position in sample)."""

    pts: np.ndarray  # (N, S, 2) float64, resampled
    sample: np.ndarray  # (N,) int64
    scores: np.ndarray | None = None  # (N,) float64


def chamfer_ap(gts: Sequence[Mapping[str, Any]], preds: Sequence[Mapping[str, Any]],
               num_classes: int, thresholds: Sequence[float] = (0.5, 1.0, 1.5),
               num_sample_pts: int = 100, buffer: float = 2.0,
               sample_names: Sequence[str] | None = None) -> ChamferAPResult:
    """Chamfer AP over a dataset; ``gts[i]`` and ``preds[i]`` describe the same sample.

    Args:
        gts: per sample ``dict(vectors=[(Ni, 2) arrays], labels=(M,) ints)``, original vertices.
        preds: per sample ``dict(vectors=[(Ni, 2)] or (K, P, 2), scores=(K,), labels=(K,))``.
        num_classes: labels must lie in ``[0, num_classes)``.
        thresholds: chamfer thresholds in metres.
        num_sample_pts: points per line after arc-length resampling.
        buffer: half width of the flat-capped, mitre-joined buffers that must intersect.
        sample_names: names used in error and warning messages (e.g. tokens).

    Returns:
        A :class:`ChamferAPResult`; samples are taken in the given order, which fixes how
        equal scores are ordered (see docs/evaluation.md).
    """
    if len(gts) != len(preds):
        raise ValueError(f'got {len(gts)} GT samples but {len(preds)} prediction samples')
    thresholds = tuple(float(t) for t in thresholds)
    if not thresholds or any(not np.isfinite(t) or t < 0 for t in thresholds):
        raise ValueError(f'thresholds must be finite and >= 0, got {thresholds}')
    if num_sample_pts < 2 or buffer <= 0:
        raise ValueError(f'need num_sample_pts >= 2 and buffer > 0, got {num_sample_pts}, '
                         f'{buffer}')
    names = list(sample_names) if sample_names is not None else [str(i) for i in range(len(gts))]
    g_vecs, g_lab, g_smp, _, g_drop, _ = _collect(gts, names, num_classes, 'GT', False)
    p_vecs, p_lab, p_smp, p_scr, p_drop, p_short = _collect(preds, names, num_classes,
                                                            'prediction', True)
    dropped = [(k, n) for k, n in (('prediction', p_drop), ('GT', g_drop)) if n]
    for kind, n in dropped:
        warnings.warn(f'chamfer_ap: dropped {n} {kind} vector(s) with non-finite values'
                      + (' or fewer than 2 vertices' if kind == 'GT' else ''), RuntimeWarning,
                      stacklevel=2)
    g_pts = resample_polylines(g_vecs, num_sample_pts)
    p_pts = resample_polylines(p_vecs, num_sample_pts)

    ap = np.zeros((num_classes, len(thresholds)))
    num_gts = np.zeros(num_classes, dtype=np.int64)
    num_dets = np.zeros(num_classes, dtype=np.int64)
    stats: dict[str, int] = {}
    for c in range(num_classes):
        gm, pm = g_lab == c, p_lab == c
        gt = _Lines(g_pts[gm], g_smp[gm])
        pred = _Lines(p_pts[pm], p_smp[pm], p_scr[pm])
        num_gts[c], num_dets[c] = len(gt.pts), len(pred.pts)
        best_gt, best_d = nearest_matchable_gt(pred, gt, max(thresholds), buffer, stats)
        for t, thr in enumerate(thresholds):
            tp = greedy_true_positives(best_gt, best_d, pred.scores, thr)
            ap[c, t] = average_precision(tp, pred.scores, len(gt.pts))
    return ChamferAPResult(ap, thresholds, num_gts, num_dets, p_drop, g_drop, p_short, stats)


def _collect(samples: Sequence[Mapping[str, Any]], names: Sequence[str], num_classes: int,
             kind: str, with_scores: bool) -> tuple:
    """Validate and flatten samples; drop non-finite vectors (and too short ones)."""
    vecs: list[np.ndarray] = []
    labels, sample_ids, scores = [], [], []
    n_drop = n_short = 0
    for s, smp in enumerate(samples):
        name = names[s]
        v, lab = _vectors(smp, name, kind), _int_labels(smp, name, kind, num_classes)
        scr = _scores(smp, name, len(v)) if with_scores else np.zeros(len(v))
        if len(lab) != len(v):
            raise ValueError(f'{kind} {name!r}: {len(v)} vectors but {len(lab)} labels')
        for i, x in enumerate(v):
            if not (np.isfinite(x).all() and np.isfinite(scr[i])):
                n_drop += 1
            elif len(x) < 2:
                if with_scores:
                    n_short += 1  # MapTR drops predictions with fewer than 2 points
                else:
                    n_drop += 1
            else:
                vecs.append(x)
                labels.append(lab[i])
                sample_ids.append(s)
                scores.append(scr[i])
    return (vecs, np.asarray(labels, dtype=np.int64), np.asarray(sample_ids, dtype=np.int64),
            np.asarray(scores, dtype=np.float64), n_drop, n_short)


def _vectors(smp: Mapping[str, Any], name: str, kind: str) -> list[np.ndarray]:
    if 'vectors' not in smp:
        raise ValueError(f'{kind} {name!r}: missing key "vectors"')
    v = smp['vectors']
    if isinstance(v, (np.ndarray, torch.Tensor)):
        v = np.asarray(v)
        if v.size == 0 and v.ndim <= 3:
            return []
        if v.ndim != 3 or v.shape[2] != 2:
            raise ValueError(f'{kind} {name!r}: "vectors" array has shape {v.shape}, expected '
                             '(K, P, 2)')
        return list(v)
    out = []
    for i, x in enumerate(v):
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != 2 or not np.issubdtype(x.dtype, np.number):
            raise ValueError(f'{kind} {name!r}: vectors[{i}] has shape {x.shape} and dtype '
                             f'{x.dtype}, expected a numeric (N, 2) array')
        out.append(x)
    return out


def _int_labels(smp: Mapping[str, Any], name: str, kind: str, num_classes: int) -> np.ndarray:
    if 'labels' not in smp:
        raise ValueError(f'{kind} {name!r}: missing key "labels"')
    lab = np.asarray(smp['labels'])
    if lab.size == 0:
        return np.zeros(0, dtype=np.int64)
    if lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f'{kind} {name!r}: "labels" must be a 1-D integer array, got shape '
                         f'{lab.shape} dtype {lab.dtype}')
    bad = (lab < 0) | (lab >= num_classes)
    if bad.any():
        raise ValueError(f'{kind} {name!r}: unknown class label {int(lab[bad][0])} '
                         f'(expected 0..{num_classes - 1})')
    return lab.astype(np.int64)


def _scores(smp: Mapping[str, Any], name: str, n: int) -> np.ndarray:
    if 'scores' not in smp:
        raise ValueError(f'prediction {name!r}: missing key "scores"')
    scr = np.asarray(smp['scores'], dtype=np.float64).reshape(-1) if n else np.zeros(0)
    if scr.shape != (n,):
        raise ValueError(f'prediction {name!r}: {n} vectors but "scores" has shape '
                         f'{np.shape(smp["scores"])}')
    return scr


def nearest_matchable_gt(pred: _Lines, gt: _Lines, max_thr: float, buffer: float,
                         stats: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For each prediction, its nearest matchable GT of the same sample, if within ``max_thr``.

    "Matchable" means both lines' buffers intersect. Ties go to the GT listed first, like
    ``np.argmax`` in MapTR. Pairs farther than ``max_thr`` are irrelevant: a prediction whose
    nearest matchable GT is farther than every threshold is a false positive whichever GT
    that is.

    Returns:
        ``best_gt`` (K,) int64 index into ``gt`` (-1: none) and ``best_d`` (K,) its chamfer
        distance (inf: none).
    """
    stats = {} if stats is None else stats
    k = len(pred.pts)
    best_gt, best_d = np.full(k, -1, dtype=np.int64), np.full(k, np.inf)
    pi, gi = _same_sample_pairs(pred.sample, gt.sample)
    _count(stats, 'pairs', len(pi))
    if not len(pi):
        return best_gt, best_d
    p_lo, p_hi = pred.pts.min(1), pred.pts.max(1)
    g_lo, g_hi = gt.pts.min(1), gt.pts.max(1)
    gap = np.maximum(np.maximum(p_lo[pi] - g_hi[gi], g_lo[gi] - p_hi[pi]), 0)
    keep = np.hypot(gap[:, 0], gap[:, 1]) <= max_thr + _BOUND_SLACK
    pi, gi = pi[keep], gi[keep]
    keep = _mean_box_distance_bound(pred.pts, gt.pts, pi, gi, p_lo, p_hi, g_lo, g_hi)
    pi, gi = pi[keep <= max_thr + _BOUND_SLACK], gi[keep <= max_thr + _BOUND_SLACK]
    _count(stats, 'pairs_exact', len(pi))
    cham, sure = _chamfer_and_sure_intersection(pred.pts, gt.pts, pi, gi, max_thr, buffer)
    near = cham <= max_thr
    pi, gi, cham, sure = pi[near], gi[near], cham[near], sure[near]
    sure &= (_lengths(pred.pts)[pi] >= _MIN_SURE_LENGTH) & (_lengths(gt.pts)[gi] >= _MIN_SURE_LENGTH)
    undecided = ~sure
    _count(stats, 'pairs_within_thr', len(pi))
    _count(stats, 'pairs_shapely', int(undecided.sum()))
    matchable = sure.copy()
    matchable[undecided] = buffers_intersect(pred.pts, gt.pts, pi[undecided], gi[undecided],
                                             buffer)
    pi, gi, cham = pi[matchable], gi[matchable], cham[matchable]
    order = np.lexsort((gi, cham, pi))  # per prediction: smallest distance, then first GT
    first = order[np.r_[True, pi[order][1:] != pi[order][:-1]]] if len(order) else order
    best_gt[pi[first]], best_d[pi[first]] = gi[first], cham[first]
    return best_gt, best_d


def _count(stats: dict[str, int], key: str, n: int) -> None:
    stats[key] = stats.get(key, 0) + int(n)


def _same_sample_pairs(p_sample: np.ndarray, g_sample: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """All (pred, GT) index pairs that share a sample; both inputs sorted by sample."""
    lo = np.searchsorted(g_sample, p_sample, side='left')
    n = np.searchsorted(g_sample, p_sample, side='right') - lo
    pi = np.repeat(np.arange(len(p_sample)), n)
    start = np.cumsum(n) - n
    gi = np.repeat(lo - start, n) + np.arange(int(n.sum()))
    return pi, gi


def _mean_box_distance_bound(p_pts: np.ndarray, g_pts: np.ndarray, pi: np.ndarray,
                             gi: np.ndarray, p_lo: np.ndarray, p_hi: np.ndarray,
                             g_lo: np.ndarray, g_hi: np.ndarray) -> np.ndarray:
    """Lower bound of chamfer: a point's nearest neighbour is no closer than the other's box."""
    out = np.empty(len(pi))
    for s in range(0, len(pi), 4 * _PAIR_CHUNK):
        a, b = pi[s:s + 4 * _PAIR_CHUNK], gi[s:s + 4 * _PAIR_CHUNK]
        out[s:s + len(a)] = (_mean_point_box_distance(p_pts[a], g_lo[b], g_hi[b])
                             + _mean_point_box_distance(g_pts[b], p_lo[a], p_hi[a])) / 2
    return out


def _mean_point_box_distance(pts: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    gap = np.maximum(np.maximum(lo[:, None] - pts, pts - hi[:, None]), 0)
    return np.sqrt(gap[..., 0] ** 2 + gap[..., 1] ** 2).mean(1)


def _lengths(pts: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.diff(pts, axis=1), axis=2).sum(1)


def _chamfer_and_sure_intersection(p_pts: np.ndarray, g_pts: np.ndarray, pi: np.ndarray,
                                   gi: np.ndarray, max_thr: float, buffer: float
                                   ) -> tuple[np.ndarray, np.ndarray]:
    """Exact chamfer distance of each pair, and whether its buffers surely intersect.

    Sure intersection: an interior point x of one line (x lies in its own buffer) whose
    nearest point on the other line is not an endpoint, at distance <= buffer. Such an x
    projects perpendicularly onto a segment (so it lies in that segment's flat-capped
    rectangle) or lies in a vertex's outer normal cone (covered by the round join, hence by
    the larger mitre join), so x is in both buffers. We only know the nearest *vertex*; if it
    is strictly closer than both endpoints, the nearest point of the line is not an endpoint.
    """
    cham = np.empty(len(pi))
    sure = np.zeros(len(pi), dtype=bool)
    edge = buffer - _EDGE_MARGIN
    for s in range(0, len(pi), _PAIR_CHUNK):
        a = torch.from_numpy(p_pts[pi[s:s + _PAIR_CHUNK]])
        b = torch.from_numpy(g_pts[gi[s:s + _PAIR_CHUNK]])
        dist = torch.cdist(a, b, compute_mode='donot_use_mm_for_euclid_dist')
        d_ab, d_ba = dist.amin(2), dist.amin(1)  # nearest GT point per pred point, and back
        # numpy means, to sum in the same order as the reference's ndarray.mean()
        c = (d_ba.numpy().mean(1) + d_ab.numpy().mean(1)) / 2
        cham[s:s + len(c)] = c
        near = torch.from_numpy(c <= max_thr)
        if not near.any():
            continue
        dist, d_ab, d_ba = dist[near], d_ab[near, 1:-1], d_ba[near, 1:-1]
        ok_a = _inside_other(d_ab, dist[:, 1:-1, 0], dist[:, 1:-1, -1], edge)
        ok_b = _inside_other(d_ba, dist[:, 0, 1:-1], dist[:, -1, 1:-1], edge)
        sure[s + np.flatnonzero(near.numpy())] = (ok_a | ok_b).numpy()
    return cham, sure


def _inside_other(d_min: torch.Tensor, d_first: torch.Tensor, d_last: torch.Tensor,
                  edge: float) -> torch.Tensor:
    tie = 1e-9
    return ((d_min <= edge) & (d_min < d_first - tie) & (d_min < d_last - tie)).any(1)


def buffers_intersect(p_pts: np.ndarray, g_pts: np.ndarray, pi: np.ndarray, gi: np.ndarray,
                      buffer: float) -> np.ndarray:
    """Shapely's answer for pairs ``(p_pts[pi], g_pts[gi])``, building each buffer once."""
    if not len(pi):
        return np.zeros(0, dtype=bool)
    up, p_inv = np.unique(pi, return_inverse=True)
    ug, g_inv = np.unique(gi, return_inverse=True)
    kw = dict(cap_style='flat', join_style='mitre')
    p_buf = shapely.buffer(shapely.linestrings(p_pts[up]), buffer, **kw)
    g_buf = shapely.buffer(shapely.linestrings(g_pts[ug]), buffer, **kw)
    return shapely.intersects(p_buf[p_inv], g_buf[g_inv])


def greedy_true_positives(best_gt: np.ndarray, best_d: np.ndarray, scores: np.ndarray,
                          thr: float) -> np.ndarray:
    """MapTR's greedy assignment, vectorised.

    In order of decreasing score (equal scores: earlier prediction first) a prediction is a
    true positive iff its nearest matchable GT is within ``thr`` and not yet taken. A GT is
    taken only by such a prediction, so the winner for each GT is simply the first
    prediction, in that order, whose nearest GT it is within ``thr``.
    """
    tp = np.zeros(len(best_gt), dtype=bool)
    cand = np.flatnonzero(best_d <= thr)
    if len(cand):
        order = cand[np.lexsort((cand, -scores[cand], best_gt[cand]))]
        gts = best_gt[order]
        tp[order[np.r_[True, gts[1:] != gts[:-1]]]] = True
    return tp


def average_precision(tp: np.ndarray, scores: np.ndarray, num_gts: int) -> float:
    """VOC 'area' AP over detections sorted by decreasing score (ties: earlier first)."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    tp_cum = np.cumsum(tp[order].astype(np.float64))
    fp_cum = np.cumsum(~tp[order], dtype=np.float64)
    eps = np.finfo(np.float32).eps
    recall = tp_cum / max(num_gts, eps)
    precision = tp_cum / np.maximum(tp_cum + fp_cum, eps)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))
