"""Image augmentations applied to every camera view of a sample.

Calibration convention (mmdet3d BEVFusion): ``cam2img`` / ``lidar2cam`` / ``lidar2img`` stay
those of the original images; every geometric change is composed into the per-view
``img_aug_matrix`` (original pixel -> augmented pixel), so the projection into the augmented
image is ``img_aug_matrix @ lidar2img``.
"""
from __future__ import annotations

from collections.abc import Sequence

import mmcv
import numpy as np
from mmcv.transforms import BaseTransform
from mmdet.datasets.transforms import PhotoMetricDistortion
from mmdet3d.registry import TRANSFORMS


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
        n = len(imgs)
        prev = results.get('img_aug_matrix', np.repeat(np.eye(4)[None], n, axis=0))
        results['img_aug_matrix'] = np.stack(mats) @ np.asarray(prev)
        results['img'] = imgs
        results['img_shape'] = [img.shape[:2] for img in imgs]
        return results


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
