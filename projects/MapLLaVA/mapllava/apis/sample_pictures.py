"""PNG pictures of one predicted sample: the BEV and single camera views, drawn by the
project's drawing functions (GT pale and wide, predictions solid)."""
from __future__ import annotations

import cv2
import numpy as np
from mmdet3d.structures import Det3DDataSample

from ..visualization import render_bev, render_camera
from .inference import instances


def encode_png(bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode('.png', bgr)
    if not ok:
        raise RuntimeError('cv2 could not encode the picture as PNG')
    return buf.tobytes()


def bev_png(sample: Det3DDataSample, classes, roi_size, score_thr: float = 0.3) -> bytes:
    """The BEV of the prediction over the sample's GT (when it has one)."""
    rgb = render_bev(instances(sample, 'pred_instances_3d'),
                     instances(sample, 'gt_instances_3d'), classes, roi_size, score_thr,
                     title=str(sample.metainfo.get('token', '')))
    return encode_png(np.ascontiguousarray(rgb[..., ::-1]))


def camera_png(sample: Det3DDataSample, view: int, classes, score_thr: float = 0.3) -> bytes:
    """Camera ``view`` (dataset order) at its original size, read from ``img_path``, with
    the GT and the prediction projected by ``lidar2img``."""
    meta = sample.metainfo
    image = cv2.imread(meta['img_path'][view])
    if image is None:
        raise FileNotFoundError(f'camera image not found or unreadable: '
                                f'{meta["img_path"][view]}')
    bgr = render_camera(image, np.asarray(meta['lidar2img'])[view],
                        instances(sample, 'pred_instances_3d'),
                        instances(sample, 'gt_instances_3d'), classes, score_thr,
                        lidar2ego=meta.get('lidar2ego'), ground_height=meta.get('ground_height'))
    return encode_png(bgr)

