"""Polyline helpers shared by the GT converter, the transforms and the evaluator."""
from __future__ import annotations

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
