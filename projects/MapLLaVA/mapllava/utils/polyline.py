"""Polyline helpers shared by the GT converter, the transforms and the evaluator."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def resample_polyline(points: np.ndarray, num_pts: int) -> np.ndarray:
    """Resample a polyline to ``num_pts`` points evenly spaced by arc length.

    Matches shapely's ``LineString.interpolate(np.linspace(0, length, num_pts))`` which the
    MapTR protocol uses, but runs in plain numpy so it can be batched and used in workers.
    A zero-length line yields ``num_pts`` copies of its first point.

    Args:
        points: ``(N, D)`` vertices, ``N >= 1``.
        num_pts: number of output points (``>= 2``).

    Returns:
        ``(num_pts, D)`` array with the dtype of ``points`` (float64 for integer input).
    """
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[0] < 1:
        raise ValueError(f'expected an (N, D) polyline with N >= 1, got shape {pts.shape}')
    out_dtype = pts.dtype if np.issubdtype(pts.dtype, np.floating) else np.float64
    p = pts.astype(np.float64)
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    total = cum[-1]
    if total <= 0:
        return np.repeat(p[:1], num_pts, axis=0).astype(out_dtype)
    targets = np.linspace(0.0, total, num_pts)
    # index of the segment each target falls in (last segment for the end point)
    idx = np.clip(np.searchsorted(cum, targets, side='right') - 1, 0, len(seg) - 1)
    seg_len = seg[idx]
    t = np.where(seg_len > 0, (targets - cum[idx]) / np.where(seg_len > 0, seg_len, 1), 0.0)
    res = p[idx] + t[:, None] * (p[idx + 1] - p[idx])
    return res.astype(out_dtype)


def resample_polylines(polylines: Sequence[np.ndarray] | np.ndarray, num_pts: int,
                       chunk: int = 8192) -> np.ndarray:
    """Batched :func:`resample_polyline`: same arithmetic, one numpy pass per chunk of lines.

    The evaluator resamples hundreds of thousands of lines; a Python loop over
    :func:`resample_polyline` would dominate its run time. Lines are padded by repeating their
    last vertex (zero-length segments leave the cumulative lengths unchanged), so every output
    equals ``resample_polyline(line.astype(np.float64), num_pts)`` bit for bit.

    Args:
        polylines: ``(M, N, D)`` array or a sequence of ``(Ni, D)`` arrays, ``Ni >= 1``.
        num_pts: number of output points per line (``>= 2``).
        chunk: lines per numpy pass (bounds the ``chunk x num_pts x N`` temporaries).

    Returns:
        float64 ``(M, num_pts, D)`` array (``(0, num_pts, 2)`` for no lines).
    """
    if isinstance(polylines, np.ndarray):
        if polylines.ndim != 3 or polylines.shape[1] < 1:
            raise ValueError(f'expected an (M, N, D) array with N >= 1, got {polylines.shape}')
        flat = polylines.reshape(-1, polylines.shape[2]).astype(np.float64, copy=False)
        lengths = np.full(len(polylines), polylines.shape[1])
    else:
        arrs = [np.asarray(p) for p in polylines]
        if not arrs:
            return np.zeros((0, num_pts, 2))
        for i, p in enumerate(arrs):
            if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] != arrs[0].shape[1]:
                raise ValueError(f'polyline {i}: expected shape (N >= 1, D), got {p.shape}')
        flat = np.concatenate(arrs).astype(np.float64, copy=False)
        lengths = np.array([len(p) for p in arrs])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    out = np.empty((len(lengths), num_pts, flat.shape[1]))
    order = np.argsort(lengths, kind='stable')  # similar N per chunk keeps the padding small
    for s in range(0, len(order), chunk):
        idx = order[s:s + chunk]
        n_max = int(lengths[idx].max())
        # pad each line to n_max vertices by repeating its last vertex
        cols = np.minimum(np.arange(n_max)[None], (lengths[idx] - 1)[:, None])
        out[idx] = _resample_padded(flat[starts[idx][:, None] + cols], lengths[idx], num_pts)
    return out


def _resample_padded(p: np.ndarray, lengths: np.ndarray, num_pts: int) -> np.ndarray:
    """Resample ``(B, N, D)`` lines padded with their last vertex (true counts ``lengths``)."""
    if p.shape[1] == 1:
        return np.repeat(p, num_pts, axis=1)
    seg = np.linalg.norm(np.diff(p, axis=1), axis=2)
    cum = np.concatenate([np.zeros((len(p), 1)), np.cumsum(seg, axis=1)], axis=1)
    total = cum[:, -1]
    # np.linspace(0, total, num_pts) row by row (its array form rounds differently when a
    # row has zero length, so spell out the scalar formula)
    targets = np.arange(num_pts, dtype=np.float64)[None] * (total / (num_pts - 1))[:, None]
    targets[:, -1] = total
    # searchsorted(cum, t, 'right') - 1 == number of cum[1:] values <= t, row by row
    seg_idx = np.count_nonzero(cum[:, None, 1:] <= targets[:, :, None], axis=-1)
    seg_idx = np.minimum(seg_idx, np.maximum(lengths - 2, 0)[:, None])
    rows = np.arange(len(p))[:, None]
    seg_len = seg[rows, seg_idx]
    safe = np.where(seg_len > 0, seg_len, 1)
    t = np.where(seg_len > 0, (targets - cum[rows, seg_idx]) / safe, 0.0)
    p0 = p[rows, seg_idx]
    res = p0 + t[..., None] * (p[rows, seg_idx + 1] - p0)
    degenerate = total <= 0
    res[degenerate] = p[degenerate, :1]
    return res
