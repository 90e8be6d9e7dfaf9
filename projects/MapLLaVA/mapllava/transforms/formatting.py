"""Pack a pipeline result into the model inputs and a ``Det3DDataSample``."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmdet3d.registry import TRANSFORMS
from mmdet3d.structures import Det3DDataSample
from mmengine.structures import InstanceData

DEFAULT_META_KEYS = ('token', 'sample_idx', 'scene_token', 'timestamp', 'cam_names',
                     'img_path', 'lidar2img', 'cam2img', 'lidar2cam', 'cam2ego',
                     'img_aug_matrix', 'ego2global', 'lidar2ego', 'ori_shape', 'img_shape',
                     'pad_shape', 'num_views', 'roi_size', 'classes', 'questions', 'answers',
                     'qa_types')


def _common_shape(shapes, key: str) -> tuple[int, int]:
    shapes = {tuple(int(v) for v in s) for s in shapes}
    if len(shapes) != 1:
        raise ValueError(f'views have different {key} {sorted(shapes)}: resize them to one '
                         'size (MultiViewResize(scale=...)) before PackMapInputs')
    return shapes.pop()


@TRANSFORMS.register_module()
class PackMapInputs(BaseTransform):
    """Pack images (and points) as ``inputs`` and everything else into a data sample.

    ``inputs['img']``: (N_cam, 3, H, W) tensor, BGR, not normalized (dtype of the pipeline:
    uint8, float32 after photometric distortion); ``Det3DDataPreprocessor`` normalizes, pads
    and stacks it into ``inputs['imgs']`` (B, N_cam, 3, H, W). ``inputs['points']`` when
    loaded. ``gt_instances_3d``: ``labels`` and, when present, ``polylines`` / ``shifts`` /
    ``shifts_valid`` from ``MapPermutationTargets`` (docs/data_format.md).
    """

    def __init__(self, meta_keys: Sequence[str] = DEFAULT_META_KEYS) -> None:
        self.meta_keys = tuple(meta_keys)

    def transform(self, results: dict) -> dict:
        inputs = {}
        if 'img' in results:
            imgs = np.stack(results['img'])  # N, H, W, 3; raises on mixed shapes
            inputs['img'] = torch.from_numpy(np.ascontiguousarray(imgs.transpose(0, 3, 1, 2)))
            shape = _common_shape(results['img_shape'], 'img_shape')
            results['img_shape'] = shape
            results.setdefault('pad_shape', shape)
            results['ori_shape'] = _common_shape(results['ori_shape'], 'ori_shape')
        if 'points' in results:
            inputs['points'] = results['points'].tensor
        sample = Det3DDataSample()
        sample.set_metainfo({k: results[k] for k in self.meta_keys if k in results})
        sample.gt_instances_3d = self._gt(results)
        return dict(inputs=inputs, data_samples=sample)

    @staticmethod
    def _gt(results: dict) -> InstanceData:
        gt = InstanceData()
        if 'gt_map_labels' not in results:
            return gt
        gt.labels = torch.as_tensor(results['gt_map_labels'], dtype=torch.long)
        for src, dst in (('gt_map_polylines', 'polylines'), ('gt_map_shifts', 'shifts'),
                         ('gt_map_shifts_valid', 'shifts_valid')):
            if src in results:
                gt[dst] = torch.from_numpy(np.ascontiguousarray(results[src]))
        return gt
