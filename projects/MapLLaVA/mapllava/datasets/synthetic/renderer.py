"""Camera images and lidar sweeps of the synthetic world.

Every camera pixel is a ray through the stored calibration (ego pose x calibrated sensor x
intrinsics), cast against the ground raster and the boxes, then shaded; so a map element is
painted exactly where projecting the map with the devkit puts it. The lidar casts its 32 beams
into the same world.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from .raster import KERB, ROAD, SIDEWALK, TERRAIN, WHITE, YELLOW, LabelRaster
from .raycast import KERB_FACE, SKY, Boxes, Hits, cast

# Surface colours (RGB) and how much texture each one gets.
_PALETTE = {TERRAIN: ((118, 128, 92), 0.22), ROAD: ((92, 92, 96), 0.16),
            SIDEWALK: ((168, 164, 156), 0.10), KERB: ((196, 194, 188), 0.06),
            WHITE: ((232, 232, 226), 0.05), YELLOW: ((226, 182, 40), 0.06),
            KERB_FACE: ((150, 148, 142), 0.06)}
_COLOURS = np.zeros((256, 3), dtype=np.float32)
_TEXTURE = np.zeros(256, dtype=np.float32)
for _label, (_rgb, _amp) in _PALETTE.items():
    _COLOURS[_label], _TEXTURE[_label] = _rgb, _amp
# Lidar reflectivity (0..255) per surface.
_INTENSITY = {TERRAIN: 14.0, ROAD: 7.0, SIDEWALK: 20.0, KERB: 26.0, WHITE: 75.0, YELLOW: 60.0,
              KERB_FACE: 22.0}
MAX_CAMERA_RANGE = 400.0
TEXEL = 0.05                # m, cell size of the ground texture noise
MAX_LIDAR_RANGE = 80.0
LIDAR_BEAMS = np.radians(np.linspace(-30.67, 10.67, 32))


@dataclass
class Style:
    """Per-scene look: light level and colour, sky, haze, sun direction, sensor noise."""
    gain: np.ndarray
    sky_top: np.ndarray
    sky_horizon: np.ndarray
    sun: np.ndarray
    noise: float
    fine: np.ndarray
    coarse: np.ndarray


def scene_style(rng: np.random.Generator) -> Style:
    """Random but plausible daytime lighting."""
    overcast = rng.random() < 0.35
    level = rng.uniform(0.75, 1.15)
    gain = level * (1 + rng.normal(0, 0.04, size=3))
    top = np.array([150, 160, 170.0]) if overcast else np.array([70, 120, 200.0])
    horizon = np.array([205, 208, 210.0]) if overcast else np.array([185, 205, 230.0])
    az, el = rng.uniform(-np.pi, np.pi), rng.uniform(0.35, 1.2)
    sun = np.array([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)])
    fine = cv2.GaussianBlur(rng.normal(0, 1, (251, 251)), (0, 0), 1.2)
    coarse = cv2.GaussianBlur(rng.normal(0, 1, (241, 241)), (0, 0), 3.0)
    fine = (fine / fine.std()).astype(np.float32)
    coarse = (coarse / coarse.std()).astype(np.float32)
    return Style(gain, top, horizon, sun, float(rng.uniform(2.0, 5.0)), fine, coarse)


@dataclass
class World:
    """What the sensors see at one instant."""
    raster: LabelRaster
    boxes: Boxes
    colours: np.ndarray      # (N, 3) RGB of the boxes
    kinds: np.ndarray        # (N,) 0 vehicle, 1 pedestrian, 2 cone, 3 building
    style: Style


def render_camera(world: World, cam2global: np.ndarray, intrinsic: np.ndarray, width: int,
                  height: int, rng: np.random.Generator) -> np.ndarray:
    """RGB ``(height, width, 3)`` uint8 image seen through ``intrinsic`` from ``cam2global``."""
    ss = 2 if width <= 800 else 1   # supersampling against aliasing of distant markings
    k = intrinsic.copy()
    k[:2] *= ss
    k[:2, 2] += (ss - 1) / 2
    hh, ww = height * ss, width * ss
    dirs = _pixel_rays(tuple(k.ravel()), ww, hh) @ cam2global[:3, :3].T.astype(np.float32)
    origin = cam2global[:3, 3]
    windows = _camera_windows(world.boxes, cam2global, k, ww, hh)
    hits = cast(origin, dirs, world.raster, world.boxes, MAX_CAMERA_RANGE, windows).flat()
    img = _shade(world, origin, dirs.reshape(-1, 3), hits).reshape(hh, ww, 3)
    if ss > 1:
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    img = img + rng.normal(0.0, world.style.noise, size=img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _pixel_rays(k: tuple[float, ...], w: int, h: int) -> np.ndarray:
    """Unit rays ``(h, w, 3)`` through the pixel centres, in the camera frame."""
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    rays = np.stack([u, v, np.ones_like(u)], axis=-1) @ np.linalg.inv(np.reshape(k, (3, 3))).T
    return (rays / np.linalg.norm(rays, axis=-1, keepdims=True)).astype(np.float32)


def _camera_windows(boxes: Boxes, cam2global: np.ndarray, k: np.ndarray, w: int,
                    h: int) -> list[tuple[int, tuple[int, int, int, int]]]:
    """Per visible box, the image rectangle (rows, columns) its projection covers."""
    if len(boxes) == 0:
        return []
    g2c = np.linalg.inv(cam2global)
    c = boxes.all_corners() @ g2c[:3, :3].T + g2c[:3, 3]          # (N, 8, 3)
    front = c[..., 2] > 0.05
    near = np.linalg.norm(c.mean(1), axis=1) < MAX_CAMERA_RANGE
    p = c @ k.T
    p = p[..., :2] / np.where(front, p[..., 2], 1.0)[..., None]
    lo = np.floor(np.where(front[..., None], p, np.inf).min(1)).clip(0, None)
    hi = np.ceil(np.where(front[..., None], p, -np.inf).max(1)) + 1
    out = []
    for i in np.nonzero(front.any(1) & near)[0]:
        if not front[i].all():       # straddles the camera plane: test the whole image
            out.append((int(i), (0, h, 0, w)))
            continue
        x0, y0 = int(lo[i, 0]), int(lo[i, 1])
        x1, y1 = int(min(hi[i, 0], w)), int(min(hi[i, 1], h))
        if x1 > x0 and y1 > y0:
            out.append((int(i), (y0, y1, x0, x1)))
    return out


def _shade(world: World, origin: np.ndarray, dirs: np.ndarray, hits: Hits) -> np.ndarray:
    """RGB (float32) per ray (``dirs`` and ``hits`` flattened)."""
    st = world.style
    finite = np.isfinite(hits.t)
    t = np.where(finite, hits.t, 0.0).astype(np.float32)
    px = origin[0] + t * dirs[:, 0]
    py = origin[1] + t * dirs[:, 1]
    col = np.floor(px / TEXEL).astype(np.int64)
    row = np.floor(py / TEXEL).astype(np.int64)
    tex = st.fine[row % 251, col % 251] + 0.8 * st.coarse[(row // 8) % 241, (col // 8) % 241]
    lab = hits.label
    light = np.where(lab == KERB_FACE, 0.55 + 0.3 * st.sun[2], 0.75 + 0.25 * st.sun[2])
    rgb = _COLOURS[lab] * ((1 + _TEXTURE[lab] * tex * 0.5) * light).astype(np.float32)[:, None]
    boxed = np.nonzero(hits.box >= 0)[0]
    if len(boxed):
        rgb[boxed] = _shade_boxes(world, hits, boxed)
    elev = np.clip(dirs[:, 2], 0.0, 1.0) ** 0.6
    sky = (st.sky_horizon * (1 - elev[:, None]) + st.sky_top * elev[:, None]).astype(np.float32)
    fog = (1.0 - np.exp(-t / 600.0))[:, None]
    rgb = np.where(finite[:, None], rgb * (1 - fog) + st.sky_horizon.astype(np.float32) * fog,
                   sky)
    return rgb * st.gain.astype(np.float32)


_WHEEL = np.array([25.0, 25.0, 28.0], dtype=np.float32)
_GLASS = np.array([40.0, 55.0, 75.0], dtype=np.float32)


def _shade_boxes(world: World, hits: Hits, idx: np.ndarray) -> np.ndarray:
    """Flat-shaded boxes: vehicles get dark wheels and windows, buildings a window grid."""
    box = hits.box[idx]
    n = hits.normal[idx]
    yaw = world.boxes.yaws[box]
    cy, sy = np.cos(yaw), np.sin(yaw)
    sun = world.style.sun
    lambert = np.clip((cy * n[:, 0] - sy * n[:, 1]) * sun[0] + (sy * n[:, 0] + cy * n[:, 1]) *
                      sun[1] + n[:, 2] * sun[2], 0.0, 1.0)
    col = world.colours[box].astype(np.float32) * (0.45 + 0.55 * lambert).astype(
        np.float32)[:, None]
    local = hits.local[idx]
    kind = world.kinds[box]
    height = world.boxes.sizes[box, 2]
    side = n[:, 2] == 0
    z = local[:, 2]
    vehicle = kind == 0
    col = np.where((vehicle & (z < 0.3 * height))[:, None], _WHEEL, col)
    glass = vehicle & side & (z > 0.6 * height) & (z < 0.92 * height)
    u = np.where(n[:, 0] != 0, local[:, 1], local[:, 0])
    zm = np.mod(z, 3.5)
    window = (kind == 3) & side & (z > 1.5) & (np.mod(u, 3.2) > 0.8) & (zm > 1.1) & (zm < 2.7)
    col = np.where(glass[:, None], col * 0.35, col)
    return np.where(window[:, None], col * 0.35 + _GLASS, col)


def render_lidar(world: World, lidar2global: np.ndarray, rng: np.random.Generator,
                 azimuth_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """One sweep ``(N, 5)`` float32 (x, y, z, intensity, ring) in the lidar frame, and for each
    point the index of the box it hit (-1 for the ground)."""
    az = np.linspace(-np.pi, np.pi, azimuth_steps, endpoint=False) + rng.uniform(0, 2 * np.pi /
                                                                                 azimuth_steps)
    el, az = np.meshgrid(LIDAR_BEAMS, az, indexing='ij')
    ring = np.repeat(np.arange(len(LIDAR_BEAMS)), azimuth_steps).astype(np.float32)
    d_lidar = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1)
    dirs = d_lidar @ lidar2global[:3, :3].T
    origin = lidar2global[:3, 3]
    full = (0, dirs.shape[0], 0, dirs.shape[1])
    near = [(i, full) for i in range(len(world.boxes))
            if np.linalg.norm(world.boxes.centres[i, :2] - origin[:2]) < MAX_LIDAR_RANGE + 40]
    hits = cast(origin, dirs, world.raster, world.boxes, MAX_LIDAR_RANGE, near).flat()
    ok = hits.label != SKY
    rng_noise = rng.normal(0.0, 0.015, size=int(ok.sum()))
    t = hits.t[ok] + rng_noise
    pts_lidar = d_lidar.reshape(-1, 3)[ok] * t[:, None]
    inten = np.zeros(int(ok.sum()))
    lab = hits.label[ok]
    for value, r in _INTENSITY.items():
        inten[lab == value] = r
    box_id = hits.box[ok]
    kinds = world.kinds[box_id[box_id >= 0]]
    inten[box_id >= 0] = np.array([35.0, 12.0, 110.0, 18.0])[kinds]
    inten = np.clip(inten * rng.uniform(0.7, 1.3, size=len(inten)), 0, 255)
    out = np.concatenate([pts_lidar, inten[:, None], ring[ok, None]], axis=1).astype(np.float32)
    return out, box_id
