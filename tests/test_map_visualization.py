"""BEV and camera pictures: projection with near-plane clipping, ground height, the hook."""
import os

import cv2
import numpy as np
import torch
from mmdet3d.structures import Det3DDataSample
from mmengine.structures import InstanceData

from projects.MapLLaVA.mapllava.visualization import (
    MapVisualizationHook,
    project_polyline,
    render_bev,
    render_cameras,
)
from projects.MapLLaVA.mapllava.visualization.drawing import CLASS_COLORS, ground_z

CLASSES = ('divider', 'ped_crossing', 'boundary')
W, H, F = 160, 90, 80.0


def _lidar2img(yaw: float) -> np.ndarray:
    """A camera at the LiDAR origin looking along yaw (0 = +y, forward), z up -> image up."""
    c, s = np.cos(yaw), np.sin(yaw)
    forward, right = np.array([-s, c, 0.]), np.array([c, s, 0.])
    lidar2cam = np.eye(4)
    lidar2cam[:3, :3] = np.stack([right, [0, 0, -1.], forward])
    cam2img = np.eye(4)
    cam2img[:3, :3] = [[F, 0, W / 2], [0, F, H / 2], [0, 0, 1]]
    return cam2img @ lidar2cam


def test_project_polyline_clips_behind_camera():
    proj = _lidar2img(0.)
    pts = np.array([[0., 10., -1.84], [0., -10., -1.84]])  # from ahead to behind the camera
    (piece,) = project_polyline(pts, proj, near=0.5)
    np.testing.assert_allclose(piece[0], [W / 2, H / 2 + F * 1.84 / 10])
    np.testing.assert_allclose(piece[1], [W / 2, H / 2 + F * 1.84 / 0.5])  # cut at depth 0.5
    assert project_polyline(pts[::-1].copy(), proj, near=0.5)[0].shape == (2, 2)
    assert project_polyline(np.array([[0., -5, -1.8], [1., -9, -1.8]]), proj) == []
    # behind -> front -> behind: one piece, both ends on the near plane
    (piece,) = project_polyline(np.array([[0., -1, -1.8], [0., 5, -1.8], [3., -1, -1.8]]),
                                proj, near=0.5)
    assert len(piece) == 3


def test_ground_height():
    xy = np.array([[1., 2.], [5., -3.]])
    np.testing.assert_allclose(ground_z(xy), -1.84)
    np.testing.assert_allclose(ground_z(xy, ground_height=-2.0), -2.0)
    lidar2ego = np.eye(4)
    lidar2ego[2, 3] = 1.9
    np.testing.assert_allclose(ground_z(xy, lidar2ego=lidar2ego), -1.9)


def _instances(scores=(0.9, 0.1)):
    line = np.stack([np.zeros(10), np.linspace(3, 25, 10)], -1)
    return dict(polylines=torch.tensor(np.stack([line, line + [5, 0]]), dtype=torch.float32),
                labels=torch.tensor([0, 2]), scores=torch.tensor(scores))


def _has_color(img_rgb, rgb, tol=40):
    return bool((np.abs(img_rgb.astype(int) - rgb).sum(-1) < tol).any())


def test_render_bev_draws_classes_above_threshold():
    img = render_bev(_instances(), None, CLASSES, (30., 60.), score_thr=0.5, title='t')
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[0] > img.shape[1]
    assert _has_color(img, CLASS_COLORS['divider'])
    low = render_bev(_instances(scores=(0.1, 0.1)), None, CLASSES, score_thr=0.5)
    high = render_bev(_instances(scores=(0.9, 0.9)), None, CLASSES, score_thr=0.5)
    assert (low != high).any()  # the boundary prediction only appears above the threshold


def test_render_cameras_front_only():
    images = [np.full((H, W, 3), 90, np.uint8) for _ in range(6)]
    yaws = np.deg2rad([0, -55, 55, 180, 110, -110])  # nuScenes order
    proj = np.stack([_lidar2img(y) for y in yaws])
    mosaic = render_cameras(images, proj, _instances(), None, CLASSES, score_thr=0.5,
                            cam_names=[f'c{i}' for i in range(6)], tile_width=W)
    assert mosaic.shape == (2 * H + 34, 3 * W, 3)
    bgr = np.array(CLASS_COLORS['divider'])[::-1]
    front, back = mosaic[:H, W:2 * W], mosaic[H:2 * H, W:2 * W]
    assert _has_color(front, bgr) and not _has_color(back, bgr)


def test_hook_writes_bev_and_cameras(tmp_path):
    paths = []
    for i in range(6):
        paths.append(str(tmp_path / f'cam{i}.jpg'))
        cv2.imwrite(paths[-1], np.full((H, W, 3), 60, np.uint8))
    sample = Det3DDataSample(metainfo=dict(
        token='abc', classes=CLASSES, roi_size=(30., 60.), img_path=paths,
        lidar2img=np.stack([_lidar2img(0.)] * 6)))
    sample.pred_instances_3d = InstanceData(**_instances())
    sample.gt_instances_3d = InstanceData(**{k: v for k, v in _instances().items()
                                             if k != 'scores'})
    hook = MapVisualizationHook(draw=True, show_dir=str(tmp_path / 'show'), score_thr=0.5)
    os.makedirs(hook.show_dir)
    hook.draw_sample(sample)
    assert sorted(os.listdir(hook.show_dir)) == ['abc_bev.png', 'abc_cams.jpg']


def test_hook_is_off_by_default():
    MapVisualizationHook().after_test_iter(None, 0, None, [object()])  # no runner needed
