"""Polyline helpers shared by the GT converter, the transforms and the evaluator."""
from __future__ import annotations

from typing import Sequence

import numba
import numpy as np


def resample_polyline(points: np.ndarray, num_pts: int) -> np.ndarray:
    """Resample a polyline to ``num_pts`` points evenly spaced by arc length.

    Matches shapely's ``LineString.interpolate(np.linspace(0, length, num_pts))`` which the
    MapTR protocol uses, but runs in plain numpy so it can be batched and used in workers.
    Like GEOS, a fraction that rounds to >= 1 gives the segment's end vertex and the full
    length gives the last vertex exactly, so a closed ring stays exactly closed (GEOS buffers
    a line whose ends differ by one ulp with flat caps instead of a mitre join).
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
    res = np.where(t[:, None] >= 1, p[idx + 1], res)
    res[-1] = p[-1]
    return res.astype(out_dtype)


def resample_polylines(polylines: Sequence[np.ndarray] | np.ndarray, num_pts: int
                       ) -> np.ndarray:
    """Batched :func:`resample_polyline` for the evaluator's hundreds of thousands of lines.

    A compiled loop (numba, which mmdet3d already depends on) doing the same float64
    arithmetic in the same order, so every output equals
    ``resample_polyline(line.astype(np.float64), num_pts)`` (and shapely's interpolate) bit
    for bit.

    Args:
        polylines: ``(M, N, D)`` array or a sequence of ``(Ni, D)`` arrays, ``Ni >= 1``.
        num_pts: number of output points per line (``>= 2``).

    Returns:
        float64 ``(M, num_pts, D)`` array (``(0, num_pts, 2)`` for no lines).
    """
    if isinstance(polylines, np.ndarray):
        if polylines.ndim != 3 or polylines.shape[1] < 1:
            raise ValueError(f'expected an (M, N, D) array with N >= 1, got {polylines.shape}')
        flat = polylines.reshape(-1, polylines.shape[2])
        lengths = np.full(len(polylines), polylines.shape[1], dtype=np.int64)
    else:
        arrs = [np.asarray(p) for p in polylines]
        if not arrs:
            return np.zeros((0, num_pts, 2))
        for i, p in enumerate(arrs):
            if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] != arrs[0].shape[1]:
                raise ValueError(f'polyline {i}: expected shape (N >= 1, D), got {p.shape}')
        flat = np.concatenate(arrs)
        lengths = np.array([len(p) for p in arrs], dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    return resample_packed(flat, starts, lengths, num_pts)


def resample_packed(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                    num_pts: int) -> np.ndarray:
    """:func:`resample_polylines` for lines stored back to back: line k is
    ``flat[starts[k]:starts[k] + lengths[k]]`` (``lengths >= 1``). Saves the evaluator from
    splitting its vertex arrays into hundreds of thousands of small ones.

    Returns:
        float64 ``(len(starts), num_pts, D)`` array.
    """
    if num_pts < 2:
        raise ValueError(f'num_pts must be >= 2, got {num_pts}')
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and (lengths.min() < 1 or (starts + lengths).max() > len(flat)
                         or starts.min() < 0):
        raise ValueError('resample_packed: every line needs >= 1 vertex inside `flat`')
    flat = np.ascontiguousarray(flat, dtype=np.float64)
    out = np.empty((len(lengths), num_pts, flat.shape[1] if flat.ndim == 2 else 2))
    if len(lengths):
        _resample_kernel(flat, starts, lengths, out)
    return out


@numba.njit(cache=True, nogil=True)
def _resample_kernel(flat, starts, lengths, out):  # pragma: no cover - compiled
    num_pts, dim = out.shape[1], out.shape[2]
    n_max = max(lengths.max(), 1) if len(lengths) else 1
    seg, cum = np.empty(n_max), np.empty(n_max)
    for r in range(len(starts)):
        s, n = starts[r], lengths[r]
        cum[0] = 0.0
        for k in range(n - 1):
            acc = 0.0
            for d in range(dim):
                diff = flat[s + k + 1, d] - flat[s + k, d]
                acc += diff * diff
            seg[k] = np.sqrt(acc)
            cum[k + 1] = cum[k] + seg[k]
        total = cum[n - 1]
        if not total > 0:
            for i in range(num_pts):
                out[r, i] = flat[s]
            continue
        step = total / (num_pts - 1)  # np.linspace: i * step (the last point is the end)
        out[r, num_pts - 1] = flat[s + n - 1]
        j = 0  # searchsorted(cum, target, 'right') - 1, clipped to the last segment
        for i in range(num_pts - 1):
            target = i * step
            while j + 1 < n and cum[j + 1] <= target:
                j += 1
            k = min(j, n - 2)
            t = (target - cum[k]) / seg[k] if seg[k] > 0 else 0.0
            if t >= 1:
                out[r, i] = flat[s + k + 1]
                continue
            for d in range(dim):
                out[r, i, d] = flat[s + k, d] + t * (flat[s + k + 1, d] - flat[s + k, d])
