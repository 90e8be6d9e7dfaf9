"""Vector-map GT targets: ROI filtering and permutation-equivalent resampled orders."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from mmcv.transforms import BaseTransform
from mmdet3d.registry import TRANSFORMS
from shapely.geometry import LineString, box
from shapely.ops import linemerge

from ..datasets.map_gt.geometry import line_parts
from ..utils.polyline import resample_polyline


@TRANSFORMS.register_module()
class MapRangeFilter(BaseTransform):
    """Clip ``gt_map_vectors`` to the ROI; drop what falls outside.

    A no-op for GT extracted with the same ROI. With a smaller ROI, a vector that leaves it
    is cut into its inside pieces (a cut ring becomes open); ``gt_map_closed`` is updated.

    Args:
        roi_size: (x, y) extent in metres; ``None`` uses ``results['roi_size']``.
    """

    def __init__(self, roi_size: Sequence[float] | None = None) -> None:
        self.roi_size = roi_size

    def transform(self, results: dict) -> dict:
        rx, ry = (self.roi_size or results['roi_size'])
        hx, hy = rx / 2, ry / 2
        roi = box(-hx, -hy, hx, hy)
        vectors, labels, closed = [], [], []
        for vec, lab, is_closed in zip(results['gt_map_vectors'], results['gt_map_labels'],
                                       results['gt_map_closed']):
            if np.all(np.abs(vec[:, 0]) <= hx) and np.all(np.abs(vec[:, 1]) <= hy):
                vectors.append(vec)
                labels.append(lab)
                closed.append(bool(is_closed))
                continue
            inside = LineString(vec).intersection(roi)
            if is_closed and inside.geom_type == 'MultiLineString':
                inside = linemerge(inside)  # rejoin the pieces at the ring's start vertex
            for part in line_parts(inside):
                pts = np.asarray(part.coords, dtype=np.float64)[:, :2]
                pts = np.clip(pts, [-hx, -hy], [hx, hy]).astype(np.float32)
                vectors.append(pts)
                labels.append(lab)
                closed.append(len(pts) > 2 and bool(np.all(pts[0] == pts[-1])))
        results['gt_map_vectors'] = vectors
        results['gt_map_labels'] = np.asarray(labels, dtype=np.int64)
        results['gt_map_closed'] = np.asarray(closed, dtype=bool)
        return results


def permutation_orders(pts: np.ndarray, closed: bool) -> np.ndarray:
    """All equivalent point orders of a resampled polyline, the forward order first.

    Open: forward and reversed. Closed (``pts[0] == pts[-1]``): every cyclic shift of the
    ring in both directions, each re-closed, ``2 * (len(pts) - 1)`` orders; the first
    reversed order is ``pts[::-1]``.
    """
    if not closed:
        return np.stack([pts, pts[::-1]])
    ring = pts[:-1]
    orders = []
    for base in (ring, np.roll(ring[::-1], 1, axis=0)):
        for k in range(len(ring)):
            rolled = np.roll(base, -k, axis=0)
            orders.append(np.concatenate([rolled, rolled[:1]]))
    return np.stack(orders)


@TRANSFORMS.register_module()
class MapPermutationTargets(BaseTransform):
    """Resample the GT to ``num_pts`` points and list its equivalent orders (MapTR targets).

    Adds ``gt_map_polylines`` float32 (M, num_pts, 2), ``gt_map_shifts`` float32
    (M, P, num_pts, 2) and ``gt_map_shifts_valid`` bool (M, P). P defaults to
    ``2 * (num_pts - 1)``, the count of a closed ring; unused slots repeat the forward order
    and are invalid. With a smaller ``num_shifts`` a closed ring keeps evenly spaced shifts
    of each direction (deterministic, unlike MapTR's random pick).
    """

    def __init__(self, num_pts: int = 20, num_shifts: int | None = None) -> None:
        if num_pts < 3:
            raise ValueError(f'num_pts must be >= 3, got {num_pts}')
        self.num_pts = num_pts
        self.num_shifts = num_shifts or 2 * (num_pts - 1)
        if self.num_shifts < 2:
            raise ValueError(f'num_shifts must be >= 2, got {self.num_shifts}')

    def _subsample(self, orders: np.ndarray) -> np.ndarray:
        half = len(orders) // 2
        idx = np.round(np.linspace(0, half - 1, self.num_shifts // 2)).astype(int)
        return np.concatenate([orders[idx], orders[half + idx]])

    def transform(self, results: dict) -> dict:
        n, p = self.num_pts, self.num_shifts
        vectors, closed = results['gt_map_vectors'], results['gt_map_closed']
        polylines = np.zeros((len(vectors), n, 2), np.float32)
        shifts = np.zeros((len(vectors), p, n, 2), np.float32)
        valid = np.zeros((len(vectors), p), bool)
        for i, (vec, is_closed) in enumerate(zip(vectors, closed)):
            pts = resample_polyline(np.asarray(vec, np.float64), n)
            if is_closed:
                pts[-1] = pts[0]
            orders = permutation_orders(pts, bool(is_closed))
            if len(orders) > p:
                orders = self._subsample(orders)
            polylines[i] = pts
            shifts[i] = pts
            shifts[i, :len(orders)] = orders
            valid[i, :len(orders)] = True
        results['gt_map_polylines'] = polylines
        results['gt_map_shifts'] = shifts
        results['gt_map_shifts_valid'] = valid
        return results
