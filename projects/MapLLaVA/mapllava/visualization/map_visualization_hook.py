"""``MapVisualizationHook``: write a BEV and a camera picture per test sample.

``tools/test.py --show-dir DIR`` enables it; for every ``interval``-th sample it writes
``DIR/<token>_bev.png`` (predictions over GT in the ROI) and ``DIR/<token>_cams.jpg`` (the
six images from ``img_path`` with the vectors projected by ``lidar2img``).
"""
from __future__ import annotations

import os
import os.path as osp
from typing import Optional, Sequence

import cv2
import numpy as np
from mmdet3d.registry import HOOKS
from mmengine.dist import get_rank
from mmengine.hooks import Hook

from .drawing import render_bev, render_cameras


def _field(sample, name: str) -> Optional[dict]:
    inst = getattr(sample, name, None)
    if inst is None or 'polylines' not in inst:
        return None
    return {k: inst[k] for k in ('polylines', 'labels', 'scores') if k in inst}


@HOOKS.register_module()
class MapVisualizationHook(Hook):
    """Draw predictions of the test loop to files (nothing is shown on screen).

    Args:
        draw: off by default, so the hook can sit in configs; ``--show-dir`` turns it on.
        show_dir: output folder (created).
        score_thr: predictions scoring below are not drawn.
        interval: draw every ``interval``-th sample.
        draw_cameras: also write the camera mosaic (needs ``img_path`` in the metainfo).
    """

    priority = 'NORMAL'

    def __init__(self, draw: bool = False, show_dir: Optional[str] = None,
                 score_thr: float = 0.3, interval: int = 1, draw_cameras: bool = True) -> None:
        self.draw = draw
        self.show_dir = show_dir
        self.score_thr = score_thr
        self.interval = max(1, int(interval))
        self.draw_cameras = draw_cameras
        self._seen = 0

    def before_test(self, runner) -> None:
        if self.draw:
            self.show_dir = self.show_dir or osp.join(runner.log_dir, 'show')
            os.makedirs(self.show_dir, exist_ok=True)
            runner.logger.info(f'MapVisualizationHook: writing pictures to {self.show_dir}')

    def after_test_iter(self, runner, batch_idx: int, data_batch=None,
                        outputs: Optional[Sequence] = None) -> None:
        if not self.draw or not outputs:
            return
        for sample in outputs:
            self._seen += 1
            if (self._seen - 1) % self.interval == 0:
                self.draw_sample(sample, runner.test_dataloader.dataset.metainfo)

    def draw_sample(self, sample, dataset_meta: Optional[dict] = None) -> None:
        """Write the BEV and camera pictures of one ``Det3DDataSample``."""
        meta = dict(dataset_meta or {})
        meta.update(sample.metainfo)
        classes = tuple(meta.get('classes', ()))
        token = str(meta.get('token', f'rank{get_rank()}_{self._seen:06d}'))
        pred, gt = _field(sample, 'pred_instances_3d'), _field(sample, 'gt_instances_3d')
        bev = render_bev(pred, gt, classes, meta.get('roi_size', (30., 60.)), self.score_thr,
                         title=token)
        cv2.imwrite(osp.join(self.show_dir, f'{token}_bev.png'), bev[..., ::-1])
        paths = meta.get('img_path')
        if not self.draw_cameras or not isinstance(paths, (list, tuple)) \
                or 'lidar2img' not in meta:
            return
        images = [cv2.imread(p) for p in paths]
        if any(img is None for img in images):
            return
        mosaic = render_cameras(images, np.asarray(meta['lidar2img']), pred, gt, classes,
                                self.score_thr, cam_names=meta.get('cam_names'),
                                lidar2ego=meta.get('lidar2ego'),
                                ground_height=meta.get('ground_height'))
        cv2.imwrite(osp.join(self.show_dir, f'{token}_cams.jpg'), mosaic,
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
