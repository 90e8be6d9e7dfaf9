"""Model-ready fake batches for speed benchmarks: a nuScenes-like camera rig and random GT.

The batch is what the dataloader hands the model (before ``Det3DDataPreprocessor``): it is
built by the project's own ``MapPermutationTargets`` and ``PackMapInputs`` from a pipeline-like
results dict, so it follows docs/data_format.md exactly (uint8 BGR images of the resized size,
original-image calibration, the resize in ``img_aug_matrix``, GT ``labels`` / ``polylines`` /
``shifts`` / ``shifts_valid``).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from mmdet3d.structures import LiDARPoints

from ..transforms.formatting import PackMapInputs
from ..transforms.map_targets import MapPermutationTargets

CAM_NAMES = ('CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_FRONT_LEFT', 'CAM_BACK', 'CAM_BACK_LEFT',
             'CAM_BACK_RIGHT')
# Heading of each camera in the ego frame (degrees, left positive), nuScenes order.
CAM_YAWS_DEG = (0.0, -55.0, 55.0, 180.0, 110.0, -110.0)
ORI_HW = (900, 1600)  # nuScenes image size (H, W)
FOCAL = 1266.0  # nuScenes front-camera focal length at 1600x900, px
CLASSES = ('divider', 'ped_crossing', 'boundary', 'centerline')
PED_CROSSING = 1  # closed rings; every other class is an open line


def _pad4(mat: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:mat.shape[0], :mat.shape[1]] = mat
    return out


def camera_rig(img_hw: Sequence[int]) -> dict:
    """Calibration of six nuScenes-like cameras whose 1600x900 images are resized to ``img_hw``.

    The LiDAR frame is nuScenes LIDAR_TOP (x right, y forward, z up), taken as the ego
    origin rotated by -90 deg about z. Each camera sits 0.5 m out from the LiDAR axis along
    its viewing direction and 0.3 m lower, looking horizontally. ``cam2img`` / ``lidar2cam`` /
    ``lidar2img`` are those of the original images; the resize is ``img_aug_matrix``.

    Returns:
        ``cam_names`` and float64 ``(6, 4, 4)`` ``cam2img``, ``lidar2cam``, ``lidar2img``,
        ``cam2ego``, ``img_aug_matrix``, plus ``lidar2ego`` ``(4, 4)``.
    """
    height, width = img_hw
    cam2img = _pad4(np.array([[FOCAL, 0.0, ORI_HW[1] / 2], [0.0, FOCAL, ORI_HW[0] / 2],
                              [0.0, 0.0, 1.0]]))
    lidar2ego = _pad4(np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    lidar2ego[:3, 3] = (0.94, 0.0, 1.84)
    lidar2cam = []
    for yaw in np.deg2rad(CAM_YAWS_DEG):
        forward = np.array([-np.sin(yaw), np.cos(yaw), 0.0])  # in the LiDAR frame
        right = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        rot = np.stack([right, [0.0, 0.0, -1.0], forward])  # rows: camera x, y (down), z
        centre = 0.5 * forward + np.array([0.0, 0.0, -0.3])
        mat = _pad4(rot)
        mat[:3, 3] = -rot @ centre
        lidar2cam.append(mat)
    lidar2cam = np.stack(lidar2cam)
    cam2img = np.repeat(cam2img[None], len(CAM_NAMES), axis=0)
    resize = np.diag([width / ORI_HW[1], height / ORI_HW[0], 1.0, 1.0])
    return dict(cam_names=list(CAM_NAMES), cam2img=cam2img, lidar2cam=lidar2cam,
                lidar2img=cam2img @ lidar2cam,
                cam2ego=lidar2ego @ np.linalg.inv(lidar2cam),
                img_aug_matrix=np.repeat(resize[None], len(CAM_NAMES), axis=0),
                lidar2ego=lidar2ego)


def random_map_vectors(rng: np.random.Generator, num_instances: int, num_classes: int,
                       roi_size: Sequence[float]) -> tuple[list, np.ndarray, np.ndarray]:
    """Random map elements inside the ROI: gently curved open lines, closed crossing boxes.

    Returns ``(vectors, labels, closed)`` as ``LoadMapAnnotations`` produces them.
    """
    hx, hy = roi_size[0] / 2, roi_size[1] / 2
    vectors, labels, closed = [], [], []
    for _ in range(num_instances):
        label = int(rng.integers(num_classes))
        if label == PED_CROSSING:
            cx, cy = rng.uniform(-hx + 4, hx - 4), rng.uniform(-hy + 3, hy - 3)
            w, d = rng.uniform(3.0, 8.0) / 2, rng.uniform(2.0, 4.0) / 2
            pts = np.array([[-w, -d], [w, -d], [w, d], [-w, d], [-w, -d]]) + (cx, cy)
        else:
            t = np.linspace(0.0, 1.0, int(rng.integers(2, 12)))[:, None]
            start = rng.uniform((-hx, -hy), (hx, hy))
            end = rng.uniform((-hx, -hy), (hx, hy))
            bend = rng.uniform(-3.0, 3.0) * np.sin(np.pi * t) * np.array([[1.0, 0.0]])
            pts = np.clip(start + t * (end - start) + bend, (-hx, -hy), (hx, hy))
        vectors.append(pts.astype(np.float32))
        labels.append(label)
        closed.append(label == PED_CROSSING)
    return vectors, np.array(labels, np.int64), np.array(closed, bool)


def make_batch(batch_size: int, img_hw: Sequence[int], num_classes: int = 3,
               num_pts: int = 20, num_instances: int = 20,
               roi_size: Sequence[float] = (30.0, 60.0), with_gt: bool = True,
               seed: int = 0, num_lidar_points: int = 0) -> dict:
    """``dict(inputs=dict(img=[(6, 3, H, W) uint8, ...]), data_samples=[...])`` as collated by
    the dataloader: random images, the rig of :func:`camera_rig`, random GT (``with_gt``) and,
    with ``num_lidar_points``, ``inputs['points']``: that many random (x, y, z, intensity,
    ring) points per sample, x in ±roi_w, y in ±roi_h (the ROI and around it), z in [-2, 1] m."""
    rng = np.random.default_rng(seed)
    height, width = img_hw
    rig = camera_rig(img_hw)
    num_cams = len(CAM_NAMES)
    targets = MapPermutationTargets(num_pts=num_pts)
    pack = PackMapInputs()
    imgs, points, samples = [], [], []
    for i in range(batch_size):
        results = dict(
            rig, token=f'benchmark_{i:04d}', sample_idx=i, scene_token='benchmark',
            timestamp=0, num_views=num_cams, roi_size=tuple(roi_size),
            classes=CLASSES[:num_classes], ego2global=np.eye(4),
            img=list(rng.integers(0, 256, (num_cams, height, width, 3), np.uint8)),
            img_shape=[(height, width)] * num_cams, ori_shape=[ORI_HW] * num_cams)
        if with_gt:
            vectors, labels, closed = random_map_vectors(rng, num_instances, num_classes,
                                                         roi_size)
            results.update(gt_map_vectors=vectors, gt_map_labels=labels, gt_map_closed=closed)
            results = targets.transform(results)
        if num_lidar_points:
            # x in ±roi_w, y in ±roi_h: the ROI and as much around it, as a real sweep has
            pts = rng.uniform([-roi_size[0], -roi_size[1], -2.0, 0.0, 0.0],
                              [roi_size[0], roi_size[1], 1.0, 255.0, 31.0],
                              (num_lidar_points, 5))
            results['points'] = LiDARPoints(pts.astype(np.float32), points_dim=5)
        packed = pack.transform(results)
        imgs.append(packed['inputs']['img'])
        if num_lidar_points:
            points.append(packed['inputs']['points'])
        samples.append(packed['data_samples'])
    inputs = dict(img=imgs, points=points) if num_lidar_points else dict(img=imgs)
    return dict(inputs=inputs, data_samples=samples)


def with_crop_shift(batch: dict, shift_px: Sequence[float] = (8.0, 4.0)) -> dict:
    """The same images as if cropped ``shift_px = (x, y)`` pixels further right and down:
    every sample's ``img_aug_matrix`` (so its calibration values) changes, no shape does.
    Used to show that a compiled model does not recompile for another sample's rig."""
    samples = []
    for sample in batch['data_samples']:
        sample = sample.clone()
        aug = np.array(sample.img_aug_matrix, dtype=np.float64, copy=True)
        aug[..., :2, 3] -= np.asarray(shift_px, dtype=np.float64)
        sample.set_metainfo(dict(img_aug_matrix=aug))
        samples.append(sample)
    return dict(inputs=batch['inputs'], data_samples=samples)
