"""Plain drawing functions for map predictions: a BEV picture and the six camera views.

Geometry follows docs/data_format.md: polylines are (K, P, 2) metres in the LiDAR frame
(x right, y forward); ``lidar2img`` maps LiDAR points to pixels of the original images
(the files at ``img_path``), so the camera pictures are drawn on those files, not on
normalised tensors. Map elements lie on the ground, which in the LiDAR frame is about one
LiDAR height below the sensor; polylines are lifted onto that plane before projection.
"""
from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

CLASS_COLORS = {  # RGB, 0-255
    'divider': (255, 140, 0), 'ped_crossing': (30, 90, 255), 'boundary': (220, 20, 60),
    'centerline': (0, 170, 80)}
FALLBACK_COLOR = (128, 128, 128)
DEFAULT_GROUND_Z = -1.84  # nuScenes LIDAR_TOP height above the ground, in the LiDAR frame
# nuScenes order FRONT, FRONT_RIGHT, FRONT_LEFT, BACK, BACK_LEFT, BACK_RIGHT laid out as
# front-left front front-right / back-left back back-right
CAMERA_GRID = ((2, 0, 1), (4, 3, 5))


def class_color(classes: Sequence[str], label: int) -> tuple:
    """RGB colour of a class index."""
    name = classes[label] if 0 <= label < len(classes) else None
    return CLASS_COLORS.get(name, FALLBACK_COLOR)


def _as_numpy(instances: Optional[dict], score_thr: Optional[float]) -> tuple:
    """``(polylines, labels)`` as numpy, keeping scores >= ``score_thr`` when given."""
    if instances is None or 'polylines' not in instances:
        return np.zeros((0, 0, 2), np.float32), np.zeros((0,), np.int64)
    lines, labels = (np.asarray(_cpu(instances[k])) for k in ('polylines', 'labels'))
    if score_thr is not None and 'scores' in instances:
        keep = np.asarray(_cpu(instances['scores'])) >= score_thr
        lines, labels = lines[keep], labels[keep]
    return lines.astype(np.float32), labels.astype(np.int64)


def _cpu(x):
    return x.detach().cpu().numpy() if hasattr(x, 'detach') else x


def render_bev(pred: Optional[dict], gt: Optional[dict], classes: Sequence[str],
               roi_size: Sequence[float] = (30., 60.), score_thr: float = 0.3,
               title: str = '', dpi: int = 100) -> np.ndarray:
    """RGB image of predictions (solid, with vertices) over GT (wide, pale) in the ROI."""
    w, h = float(roi_size[0]), float(roi_size[1])
    fig = Figure(figsize=(4.2, 3.4 * h / w + 1.3), dpi=dpi)  # equal axes + legend
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.add_patch(Rectangle((-w / 2, -h / 2), w, h, fill=False, lw=1.5, ec='black'))
    gt_lines, gt_labels = _as_numpy(gt, None)
    for line, label in zip(gt_lines, gt_labels):
        ax.plot(line[:, 0], line[:, 1], color=np.array(class_color(classes, label)) / 255,
                lw=5, alpha=0.3, solid_capstyle='round')
    lines, labels = _as_numpy(pred, score_thr)
    for line, label in zip(lines, labels):
        color = np.array(class_color(classes, label)) / 255
        ax.plot(line[:, 0], line[:, 1], color=color, lw=1.5)
        ax.scatter(line[:, 0], line[:, 1], color=color, s=4)
    ax.plot([0], [0], marker='^', color='black', ms=8)  # ego / LiDAR at the origin
    handles = [Line2D([], [], color=np.array(CLASS_COLORS.get(c, FALLBACK_COLOR)) / 255,
                      lw=2, label=c) for c in classes]
    handles += [Line2D([], [], color='grey', lw=5, alpha=0.3, label='GT'),
                Line2D([], [], color='grey', lw=1.5, label=f'pred >= {score_thr:g}')]
    ax.legend(handles=handles, loc='upper center', bbox_to_anchor=(0.5, -0.04), ncol=3,
              fontsize=7, frameon=False)
    margin = 1.0
    ax.set_xlim(-w / 2 - margin, w / 2 + margin)
    ax.set_ylim(-h / 2 - margin, h / 2 + margin)
    ax.set_aspect('equal')
    ax.set_xlabel('x [m]', fontsize=7)
    ax.set_ylabel('y [m] (forward)', fontsize=7)
    ax.tick_params(labelsize=6)
    ax.set_title(title, fontsize=7)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def ground_z(xy: np.ndarray, lidar2ego: Optional[np.ndarray] = None,
             ground_height: Optional[float] = None) -> np.ndarray:
    """LiDAR-frame z of the ground below ``xy`` (N, 2).

    A given ``ground_height`` wins; else the ego frame's z = 0 plane through ``lidar2ego``;
    else :data:`DEFAULT_GROUND_Z`.
    """
    if ground_height is not None:
        return np.full(len(xy), float(ground_height))
    if lidar2ego is None:
        return np.full(len(xy), DEFAULT_GROUND_Z)
    rot, t = np.asarray(lidar2ego)[2, :3], np.asarray(lidar2ego)[2, 3]
    return -(rot[0] * xy[:, 0] + rot[1] * xy[:, 1] + t) / rot[2]


def project_polyline(points: np.ndarray, lidar2img: np.ndarray,
                     near: float = 0.1) -> list:
    """Pixel polylines (list of (M, 2)) of 3-D ``points`` (N, 3), cut at depth ``near``.

    Each segment is clipped against the plane in front of the camera (depth is affine in the
    LiDAR point, so the cut is exact); parts behind the camera are dropped.
    """
    proj = np.asarray(lidar2img, dtype=np.float64)
    depth = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ proj[2]
    pieces, current = [], []
    for i in range(len(points) - 1):
        a, b, da, db = points[i], points[i + 1], depth[i], depth[i + 1]
        if da < near and db < near:
            continue
        if da < near:  # enters the view: start a new piece at the near plane
            a = a + (b - a) * (near - da) / (db - da)
        elif db < near:  # leaves the view
            b = a + (b - a) * (near - da) / (db - da)
        current = current or [a]
        current.append(b)
        if db < near:
            pieces.append(current)
            current = []
    if current:
        pieces.append(current)
    out = []
    for piece in pieces:
        pts = np.concatenate([np.asarray(piece), np.ones((len(piece), 1))], axis=1)
        uvd = pts @ proj[:3].T
        out.append(uvd[:, :2] / np.maximum(uvd[:, 2:3], 1e-6))
    return out


def _draw_lines(img: np.ndarray, lines: np.ndarray, labels: np.ndarray, lidar2img: np.ndarray,
                classes: Sequence[str], thickness: int, pale: bool, **ground) -> None:
    rect = (0, 0, img.shape[1], img.shape[0])
    for line, label in zip(lines, labels):
        pts = np.concatenate([line, ground_z(line, **ground)[:, None]], axis=1)
        rgb = np.array(class_color(classes, label), np.float64)
        if pale:
            rgb = 0.45 * rgb + 0.55 * 255
        bgr = tuple(int(c) for c in rgb[::-1])
        for uv in project_polyline(pts, lidar2img):
            uv = np.clip(uv, -1e8, 1e8).round().astype(np.int64)
            for p, q in zip(uv[:-1], uv[1:]):  # clip in 64-bit before cv2's fixed point
                inside, p, q = cv2.clipLine(rect, tuple(map(int, p)), tuple(map(int, q)))
                if inside:
                    cv2.line(img, p, q, bgr, thickness, cv2.LINE_AA)


def render_camera(image: np.ndarray, lidar2img: np.ndarray, pred: Optional[dict],
                  gt: Optional[dict], classes: Sequence[str], score_thr: float = 0.3,
                  lidar2ego: Optional[np.ndarray] = None,
                  ground_height: Optional[float] = None) -> np.ndarray:
    """One BGR camera image (a copy, original size) with GT (pale, thin) and predictions."""
    ground = dict(lidar2ego=lidar2ego, ground_height=ground_height)
    gt_lines, gt_labels = _as_numpy(gt, None)
    lines, labels = _as_numpy(pred, score_thr)
    img = np.ascontiguousarray(image.copy())
    _draw_lines(img, gt_lines, gt_labels, lidar2img, classes, 2, True, **ground)
    _draw_lines(img, lines, labels, lidar2img, classes, 4, False, **ground)
    return img


def render_cameras(images: Sequence[np.ndarray], lidar2img: np.ndarray,
                   pred: Optional[dict], gt: Optional[dict], classes: Sequence[str],
                   score_thr: float = 0.3, cam_names: Optional[Sequence[str]] = None,
                   lidar2ego: Optional[np.ndarray] = None,
                   ground_height: Optional[float] = None, tile_width: int = 640) -> np.ndarray:
    """BGR mosaic (2 x 3) of the camera images with GT (pale, thin) and predictions."""
    tiles = []
    for i, image in enumerate(images):
        img = render_camera(image, lidar2img[i], pred, gt, classes, score_thr, lidar2ego,
                            ground_height)
        scale = tile_width / img.shape[1]
        img = cv2.resize(img, (tile_width, int(round(img.shape[0] * scale))))
        if cam_names is not None:
            cv2.putText(img, str(cam_names[i]), (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7,
                        (255, 255, 255), 2, cv2.LINE_AA)
        tiles.append(img)
    tile_h = max(t.shape[0] for t in tiles)
    blank = np.zeros((tile_h, tile_width, 3), np.uint8)
    rows = []
    grid = CAMERA_GRID if len(tiles) == 6 else [range(i, min(i + 3, len(tiles)))
                                                for i in range(0, len(tiles), 3)]
    for row in grid:
        cells = [cv2.resize(tiles[j], (tile_width, tile_h)) for j in row]
        cells += [blank] * (3 - len(cells))
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows + [_legend_strip(classes, 3 * tile_width, score_thr)], axis=0)


def _legend_strip(classes: Sequence[str], width: int, score_thr: float) -> np.ndarray:
    strip = np.full((34, width, 3), 255, np.uint8)
    x = 10
    for name in classes:
        bgr = tuple(int(c) for c in CLASS_COLORS.get(name, FALLBACK_COLOR)[::-1])
        cv2.line(strip, (x, 17), (x + 30, 17), bgr, 4)
        cv2.putText(strip, name, (x + 36, 23), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1,
                    cv2.LINE_AA)
        x += 60 + 11 * len(name)
    cv2.putText(strip, f'thick: prediction (score >= {score_thr:g})   thin pale: GT', (x, 23),
                cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    return strip
