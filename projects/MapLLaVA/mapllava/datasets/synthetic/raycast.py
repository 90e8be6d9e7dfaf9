"""Ray casting against the synthetic world: the ground (road at z=0, kerb-high sidewalks and
terrain at z=KERB_HEIGHT, the kerb faces between them) and oriented boxes.

Cameras and the lidar share it, so both sensors see the same surfaces at the same places.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .raster import KERB_HEIGHT, RAISED, LabelRaster

KERB_FACE = 6                 # label for rays stopped by the vertical face of a kerb
BOX = 7                       # label for rays stopped by a box (see Hits.box)
SKY = 255                     # label for rays that hit nothing within range


@dataclass
class Boxes:
    """Oriented boxes: centres ``(N, 3)``, sizes ``(N, 3)`` as (width, length, height), yaws."""
    centres: np.ndarray
    sizes: np.ndarray
    yaws: np.ndarray

    def __len__(self) -> int:
        return len(self.yaws)

    def corners(self, i: int) -> np.ndarray:
        """The 8 corners ``(8, 3)`` of box ``i`` in the global frame."""
        w, ln, h = self.sizes[i]
        signs = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], float)
        local = signs * np.array([ln, w, h]) / 2
        return local @ _rot_z(self.yaws[i]).T + self.centres[i]

    def all_corners(self) -> np.ndarray:
        """Corners ``(N, 8, 3)`` of every box in the global frame."""
        signs = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], float)
        half = self.sizes[:, [1, 0, 2]] / 2                       # length, width, height
        local = signs[None] * half[:, None]
        c, s = np.cos(self.yaws)[:, None], np.sin(self.yaws)[:, None]
        x = c * local[..., 0] - s * local[..., 1]
        y = s * local[..., 0] + c * local[..., 1]
        return np.stack([x, y, local[..., 2]], axis=-1) + self.centres[:, None]


@dataclass
class Hits:
    """Per ray (same leading shape as the rays): distance ``t`` in units of the ray direction,
    surface label, box index (-1 for the ground), and for box hits the face normal and the hit
    point in the box frame (origin at the box's bottom centre)."""
    t: np.ndarray
    label: np.ndarray
    box: np.ndarray
    normal: np.ndarray
    local: np.ndarray

    def flat(self) -> Hits:
        """The same hits with the ray grid flattened to one axis."""
        n = self.t.size
        return Hits(self.t.reshape(n), self.label.reshape(n), self.box.reshape(n),
                    self.normal.reshape(n, 3), self.local.reshape(n, 3))


Window = tuple[int, int, int, int]   # rows y0:y1, columns x0:x1 of the ray grid


def cast(origin: np.ndarray, dirs: np.ndarray, raster: LabelRaster, boxes: Boxes,
         max_t: float, windows: list[tuple[int, Window]] | None = None) -> Hits:
    """Intersect the ray grid ``origin + t * dirs[r, c]`` (``dirs`` of shape (R, C, 3)) with the
    ground and the boxes.

    ``windows`` limits each box to a rectangle of the grid (e.g. its projected bounding box in
    an image); by default every box is tested against every ray.
    """
    shape = dirs.shape[:2]
    t, label = _ground(origin, dirs.reshape(-1, 3), raster, max_t)
    t, label = t.reshape(shape), label.reshape(shape)
    box_idx = np.full(shape, -1, dtype=np.int64)
    normal = np.zeros(shape + (3,), dtype=np.float32)
    local = np.zeros(shape + (3,), dtype=np.float32)
    if windows is None:
        windows = [(i, (0, shape[0], 0, shape[1])) for i in range(len(boxes))]
    for i, (y0, y1, x0, x1) in windows:
        c, s = np.cos(boxes.yaws[i]), np.sin(boxes.yaws[i])
        rel = origin - boxes.centres[i]
        o = (float(c * rel[0] + s * rel[1]), float(-s * rel[0] + c * rel[1]), float(rel[2]))
        c, s = dirs.dtype.type(c), dirs.dtype.type(s)
        dw = dirs[y0:y1, x0:x1]
        d = (c * dw[..., 0] + s * dw[..., 1], -s * dw[..., 0] + c * dw[..., 1], dw[..., 2])
        w, ln, h = (float(v) for v in boxes.sizes[i])
        slabs = [_slab(oa, da, half) for oa, da, half in zip(o, d, (ln / 2, w / 2, h / 2))]
        t_in = np.maximum(np.maximum(slabs[0][0], slabs[1][0]), slabs[2][0])
        t_out = np.minimum(np.minimum(slabs[0][1], slabs[1][1]), slabs[2][1])
        tw = t[y0:y1, x0:x1]
        hit = (t_in > 0) & (t_in <= t_out) & (t_in < tw)
        if not hit.any():
            continue
        th = t_in[hit]
        tw[hit] = th
        label[y0:y1, x0:x1][hit] = BOX
        box_idx[y0:y1, x0:x1][hit] = i
        axis = np.stack([slabs[k][0][hit] for k in range(3)], axis=1).argmax(axis=1)
        dh = np.stack([d[k][hit] for k in range(3)], axis=1)
        nrm = np.zeros((len(th), 3))
        nrm[np.arange(len(th)), axis] = -np.sign(dh[np.arange(len(th)), axis])
        normal[y0:y1, x0:x1][hit] = nrm
        local[y0:y1, x0:x1][hit] = np.asarray(o) + th[:, None] * dh + np.array([0.0, 0.0, h / 2])
    return Hits(t, label, box_idx, normal, local)


def _slab(o: float, d: np.ndarray, half: float) -> tuple[np.ndarray, np.ndarray]:
    """Entry and exit distances of rays through the slab ``|x| <= half`` (NaN: no hit)."""
    with np.errstate(divide='ignore', invalid='ignore'):
        inv = 1.0 / d
        a, b = (-half - o) * inv, (half - o) * inv
    return np.minimum(a, b), np.maximum(a, b)


def _ground(origin: np.ndarray, dirs: np.ndarray, raster: LabelRaster,
            max_t: float) -> tuple[np.ndarray, np.ndarray]:
    """Ground hits with a raised kerb: a ray that passes the kerb height above road but reaches
    z=0 inside a raised area must have hit the kerb's vertical face."""
    dz = dirs[:, 2]
    down = dz < -1e-9
    t = np.full(len(dirs), np.inf, dtype=dirs.dtype)
    label = np.full(len(dirs), SKY, dtype=np.uint8)
    if not down.any():
        return t, label
    idx = np.nonzero(down)[0]
    d = dirs[idx]
    t_top = (KERB_HEIGHT - origin[2]) / d[:, 2]
    t_road = -origin[2] / d[:, 2]
    top = origin + t_top[:, None] * d
    road = origin + t_road[:, None] * d
    l_top = raster.lookup(top[:, 0], top[:, 1])
    l_road = raster.lookup(road[:, 0], road[:, 1])
    on_top = np.isin(l_top, RAISED)
    on_road = ~on_top & ~np.isin(l_road, RAISED)
    tt = np.where(on_top, t_top, np.where(on_road, t_road, 0.5 * (t_top + t_road)))
    ll = np.where(on_top, l_top, np.where(on_road, l_road, KERB_FACE)).astype(np.uint8)
    keep = tt <= max_t
    t[idx[keep]] = tt[keep]
    label[idx[keep]] = ll[keep]
    return t, label


def _rot_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
