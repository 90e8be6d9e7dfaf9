"""Image augmentations applied to every camera view of a sample.

Calibration convention (mmdet3d BEVFusion): ``cam2img`` / ``lidar2cam`` / ``lidar2img`` stay
those of the original images; every geometric change is composed into the per-view
``img_aug_matrix`` (original pixel -> augmented pixel), so the projection into the augmented
image is ``img_aug_matrix @ lidar2img``.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import mmcv
import numpy as np
from mmcv.transforms import BaseTransform
from mmdet.datasets.transforms import PhotoMetricDistortion
from mmdet3d.registry import TRANSFORMS


def set_views(results: dict, imgs: list, mats: list) -> dict:
    """Store augmented views and compose their pixel maps into ``img_aug_matrix``."""
    prev = results.get('img_aug_matrix', np.repeat(np.eye(4)[None], len(imgs), axis=0))
    results['img_aug_matrix'] = np.stack(mats) @ np.asarray(prev)
    results['img'] = imgs
    results['img_shape'] = [img.shape[:2] for img in imgs]
    return results


@TRANSFORMS.register_module()
class MultiViewResize(BaseTransform):
    """Resize every view to ``scale`` = (w, h), or by ``scale_factor``.

    Updates ``img``, ``img_shape`` and ``img_aug_matrix`` (pixel scaling ``u' = sx * u``).
    """

    def __init__(self, scale: Sequence[int] | None = None, scale_factor: float | None = None,
                 interpolation: str = 'bilinear') -> None:
        if (scale is None) == (scale_factor is None):
            raise ValueError('give exactly one of scale=(w, h) and scale_factor')
        self.scale = tuple(scale) if scale is not None else None
        self.scale_factor = scale_factor
        self.interpolation = interpolation

    def transform(self, results: dict) -> dict:
        imgs, mats = [], []
        for img in results['img']:
            h, w = img.shape[:2]
            new_w, new_h = self.scale or (int(w * self.scale_factor + 0.5),
                                          int(h * self.scale_factor + 0.5))
            imgs.append(mmcv.imresize(img, (new_w, new_h), interpolation=self.interpolation))
            mats.append(np.diag([new_w / w, new_h / h, 1.0, 1.0]))
        return set_views(results, imgs, mats)


@TRANSFORMS.register_module()
class MultiViewPhotoMetricDistortion(BaseTransform):
    """mmdet's ``PhotoMetricDistortion`` on each view, drawn independently per camera.

    Output images are float32 (unclipped, as mmdet's). Arguments are mmdet's.
    """

    def __init__(self, **kwargs) -> None:
        self.distortion = PhotoMetricDistortion(**kwargs)

    def transform(self, results: dict) -> dict:
        results['img'] = [self.distortion.transform(dict(img=img))['img']
                          for img in results['img']]
        return results


@TRANSFORMS.register_module()
class MultiViewRandomAffine(BaseTransform):
    """BEVFusion-style image augmentation: random scale, crop, rotation and flip per view.

    Each view is rescaled by ``s ~ U(scale_range)`` relative to the output size ``scale``
    (w, h), cropped (horizontally at random, vertically at a fraction of the surplus drawn
    from ``crop_bottom_range``, so the road at the bottom of the image is kept), rotated by
    ``U(-rot_deg, rot_deg)`` about the output centre and mirrored left-right with
    probability ``flip_prob``. The camera geometry stays exact because the whole map is one
    pixel affine composed into ``img_aug_matrix``; the map GT is unchanged (the BEV frame
    does not move). Use it in training pipelines in place of ``MultiViewResize``.
    """

    def __init__(self, scale: Sequence[int], scale_range: Sequence[float] = (0.95, 1.1),
                 crop_bottom_range: Sequence[float] = (0.0, 0.2), rot_deg: float = 5.4,
                 flip_prob: float = 0.5, interpolation: str = 'bilinear') -> None:
        if len(scale) != 2 or min(scale) <= 0:
            raise ValueError(f'scale must be (w, h) > 0, got {scale}')
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f'scale_range must be 0 < lo <= hi, got {scale_range}')
        self.scale = tuple(int(v) for v in scale)
        self.scale_range = tuple(scale_range)
        self.crop_bottom_range = tuple(crop_bottom_range)
        self.rot_deg = rot_deg
        self.flip_prob = flip_prob
        self.interpolation = interpolation

    def _matrix(self, w: int, h: int) -> np.ndarray:
        """3x3 original pixel -> augmented pixel."""
        out_w, out_h = self.scale
        s = max(out_w / w, out_h / h) * np.random.uniform(*self.scale_range)
        new_w, new_h = w * s, h * s
        crop_x = np.random.uniform(0, max(0.0, new_w - out_w))
        crop_y = max(0.0, new_h - out_h) * (1 - np.random.uniform(*self.crop_bottom_range))
        mat = np.array([[s, 0, -crop_x], [0, s, -crop_y], [0, 0, 1]])
        cx, cy = out_w / 2, out_h / 2
        if np.random.rand() < self.flip_prob:
            mat = np.array([[-1, 0, out_w], [0, 1, 0], [0, 0, 1]]) @ mat
        angle = np.deg2rad(np.random.uniform(-self.rot_deg, self.rot_deg))
        cos, sin = np.cos(angle), np.sin(angle)
        rot = np.array([[cos, -sin, cx - cos * cx + sin * cy],
                        [sin, cos, cy - sin * cx - cos * cy], [0, 0, 1]])
        return rot @ mat

    def transform(self, results: dict) -> dict:
        border = cv2.BORDER_CONSTANT
        interp = cv2.INTER_LINEAR if self.interpolation == 'bilinear' else cv2.INTER_NEAREST
        imgs, mats = [], []
        for img in results['img']:
            h, w = img.shape[:2]
            mat = self._matrix(w, h)
            imgs.append(cv2.warpAffine(img, mat[:2], self.scale, flags=interp,
                                       borderMode=border, borderValue=0))
            aug = np.eye(4)
            aug[:2, :2], aug[:2, 3] = mat[:2, :2], mat[:2, 2]
            mats.append(aug)
        return set_views(results, imgs, mats)
