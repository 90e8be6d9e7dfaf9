"""BEVDepth-style LiDAR depth supervision of the LSS view transform (CPU, small)."""
import copy
import os.path as osp

import numpy as np
import pytest
import torch
from _cpu_amp import cpu_optim_wrapper_cfg
from mmdet3d.registry import MODELS, TRANSFORMS
from mmdet3d.structures import Det3DDataSample
from mmdet3d.utils import register_all_modules
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper

import projects.MapLLaVA.mapllava  # noqa: F401  (registers the components)
from projects.MapLLaVA.mapllava.models.bev_encoder import (
    LSSViewTransform,
    depth_bce_loss,
    depth_bin_targets,
)
from projects.MapLLaVA.mapllava.utils.benchmark_inputs import make_batch

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEPTH_CFG = osp.join(REPO_ROOT, 'configs', 'mapllava',
                     'mapllava_tiny-depth_1xb4-demo_synthetic-nus-map.py')
IMG_H, IMG_W = 64, 112
FEAT_HW = (8, 14)  # stride 8
FOCAL, CX, CY = 56.0, 55.5, 31.5
CAM_T = np.array([0.0, 1.0, 1.5])  # camera centre in the LiDAR frame
# LiDAR (x right, y forward, z up) -> camera (x right, y down, z forward)
ROTS = (np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]),  # looking forward (+y)
        np.array([[-1.0, 0, 0], [0, 0, -1], [0, -1, 0]]))  # looking backward (-y)
BINS = (4.0, 40.0, 2.0)  # candidates 4, 6, ..., 38 m; a target needs 3 m <= d < 39 m


pytestmark = pytest.mark.usefixtures('single_thread')


def pinhole(focal: float = FOCAL, cx: float = CX, cy: float = CY) -> np.ndarray:
    mat = np.eye(4)
    mat[:2, :3] = [[focal, 0, cx], [0, focal, cy]]
    return mat


def rig(num_cams: int = 1, cam2img: np.ndarray = None, img_aug: np.ndarray = None) -> dict:
    """Cameras at CAM_T alternating forward/backward (calibration as metainfo)."""
    lidar2cam = []
    for i in range(num_cams):
        mat = np.eye(4)
        mat[:3, :3], mat[:3, 3] = ROTS[i % 2], -ROTS[i % 2] @ CAM_T
        lidar2cam.append(mat)
    cam2img = pinhole() if cam2img is None else cam2img
    aug = np.eye(4) if img_aug is None else img_aug
    return dict(cam2img=np.stack([cam2img] * num_cams), lidar2cam=np.stack(lidar2cam),
                img_aug_matrix=np.stack([aug] * num_cams))


def as_tensors(calib: dict, batch: int = 1) -> tuple:
    return tuple(torch.from_numpy(np.stack([calib[k]] * batch))
                 for k in ('lidar2cam', 'cam2img', 'img_aug_matrix'))


def front_point(u: float, v: float, depth: float) -> list:
    """LiDAR point of the forward camera seen at pixel (u, v) and depth ``depth``."""
    x_c, y_c = (u - CX) * depth / FOCAL, (v - CY) * depth / FOCAL
    return [CAM_T[0] + x_c, CAM_T[1] + depth, CAM_T[2] - y_c, 0.5]


def cell_centre(row: int, col: int, stride: float = 8.0) -> tuple:
    return (col + 0.5) * stride - 0.5, (row + 0.5) * stride - 0.5


def targets_of(points: list, calib: dict, img_hw=(IMG_H, IMG_W), feat_hw=FEAT_HW,
               **kwargs) -> torch.Tensor:
    pts = torch.tensor(points, dtype=torch.float32)
    return depth_bin_targets([pts], *as_tensors(calib), feat_hw, img_hw, BINS, **kwargs)


def test_points_land_in_their_cell_nearest_wins():
    u, v = cell_centre(3, 10)
    corner_u, corner_v = cell_centre(0, 0)
    points = [
        front_point(u, v, 31.0), front_point(u + 3.0, v - 3.0, 20.6),  # same cell: nearest
        front_point(corner_u - 3.4, corner_v - 3.4, 8.6),  # pixel (0.1, 0.1): cell (0, 0)
        front_point(*cell_centre(5, 2), 38.9),  # 38.9 m: nearest candidate 38 m (last bin)
        front_point(*cell_centre(6, 6), 2.0),  # too close for the bins ...
        front_point(*cell_centre(6, 6), 20.0),  # ... and it occludes this one: no target
        front_point(*cell_centre(7, 13), 39.5),  # beyond the last bin
        front_point(200.0, 30.0, 10.0),  # right of the image
        front_point(50.0, -20.0, 10.0),  # above the image
    ]
    behind = front_point(*cell_centre(4, 4), 10.0)
    behind[1] = CAM_T[1] - 10.0  # behind: dividing by its depth (-10) gives pixel (75.5, 27.5)
    targets = targets_of(points + [behind], rig())
    assert targets.shape == (1, *FEAT_HW) and targets.dtype == torch.long
    expected = torch.full((1, *FEAT_HW), -1, dtype=torch.long)
    expected[0, 3, 10] = 8  # 20.6 m: nearest candidate 20 m = 4 + 8 * 2
    expected[0, 0, 0] = 2  # 8.6 m -> 8 m
    expected[0, 5, 2] = 17
    assert torch.equal(targets, expected)


def test_bin_edges_are_half_a_step_around_the_candidates():
    depths = [2.9, 3.0, 4.9, 5.1, 38.9, 39.0]
    points = [front_point(*cell_centre(1, i), d) for i, d in enumerate(depths)]
    targets = targets_of(points, rig())[0, 1, :len(depths)]
    assert targets.tolist() == [-1, 0, 0, 1, 17, -1]


def test_resize_in_img_aug_matrix_is_honoured():
    """A 224x128 original image (focal 112) resized by 0.5 sees the point where the 112x64
    camera does; without the resize the same point falls in another cell."""
    big = pinhole(2 * FOCAL, 2 * CX, 2 * CY)
    resize = np.diag([0.5, 0.5, 1.0, 1.0])
    points = [front_point(*cell_centre(3, 10), 20.0), front_point(*cell_centre(6, 1), 10.0)]
    reference = targets_of(points, rig())
    resized = targets_of(points, rig(cam2img=big, img_aug=resize))
    assert torch.equal(resized, reference)
    assert (reference >= 0).sum() == 2
    unresized = targets_of(points, rig(cam2img=big))  # pixels (167, 55), (23, 103): outside
    assert (unresized == -1).all()


def test_valid_hw_drops_points_in_the_padding():
    """A 56-row image padded to 64: the stride stays 8 px, rows >= 55.5 are padding."""
    points = [front_point(*cell_centre(7, 3), 10.0), front_point(58.0, 51.0, 10.0)]
    padded = targets_of(points, rig())
    real = targets_of(points, rig(), valid_hw=[(56, IMG_W)])
    assert padded[0, 7, 3] == 3 and real[0, 7, 3] == -1
    assert padded[0, 6, 7] == 3 and real[0, 6, 7] == 3


def affine(angle_deg: float, scale: float, shift: tuple, flip_w: float = None) -> np.ndarray:
    """4x4 pixel affine as MultiViewRandomAffine composes it (scale+crop, flip, rotation)."""
    mat = np.array([[scale, 0, -shift[0]], [0, scale, -shift[1]], [0, 0, 1.0]])
    if flip_w is not None:
        mat = np.array([[-1.0, 0, flip_w], [0, 1, 0], [0, 0, 1]]) @ mat
    a = np.deg2rad(angle_deg)
    cx, cy = IMG_W / 2, IMG_H / 2
    rot = np.array([[np.cos(a), -np.sin(a), cx - np.cos(a) * cx + np.sin(a) * cy],
                    [np.sin(a), np.cos(a), cy - np.sin(a) * cx - np.cos(a) * cy], [0, 0, 1]])
    out = np.eye(4)
    out[:2, :2], out[:2, 3] = (rot @ mat)[:2, :2], (rot @ mat)[:2, 2]
    return out


def test_targets_invert_the_view_transform_geometry():
    """Lift one frustum point per cell with ``get_geometry`` (2 samples x 2 cameras, rotated,
    flipped, cropped views): projecting them back gives each cell exactly its bin."""
    vt = LSSViewTransform(8, 2, depth_bins=BINS, bev_size=(50, 25))
    augs = [affine(4.0, 0.55, (3.0, 2.0)), affine(-5.0, 0.5, (1.0, 0.0), flip_w=IMG_W)]
    samples = [Det3DDataSample(metainfo=rig(2, cam2img=pinhole(112.0, 112.0, 64.0), img_aug=a))
               for a in augs]
    geom = vt.get_geometry(samples, (IMG_H, IMG_W), FEAT_HW)  # (B, N, fH, fW, D, 3)
    b, n, h, w = torch.meshgrid(*(torch.arange(s) for s in geom.shape[:4]), indexing='ij')
    bins = (h + 2 * w + 5 * n + 7 * b) % vt.num_bins
    points = [geom[i][n[i], h[i], w[i], bins[i]].reshape(-1, 3) for i in range(2)]
    targets = vt.depth_targets(points, samples, (IMG_H, IMG_W), FEAT_HW)
    assert torch.equal(targets, bins.reshape(-1, *FEAT_HW))


def test_bce_formula_and_ordering():
    depth = torch.softmax(torch.randn(2, 5, 3, 4, generator=torch.Generator().manual_seed(0)),
                          dim=1)
    targets = torch.full((2, 3, 4), -1, dtype=torch.long)
    targets[0, 1, 2], targets[1, 0, 0] = 3, 0
    loss = depth_bce_loss(depth, targets)
    ref = 0.0
    for m, r, c in ((0, 1, 2), (1, 0, 0)):
        p, k = depth[m, :, r, c], int(targets[m, r, c])
        ref += -torch.log(p[k]) - torch.log(1 - p[torch.arange(5) != k]).sum()
    torch.testing.assert_close(loss, ref / 2)

    def peaked(bin_idx: int) -> torch.Tensor:
        logits = torch.zeros(2, 5, 3, 4)
        logits[:, bin_idx] = 4.0
        return logits.softmax(1)

    one = torch.full((2, 3, 4), 2, dtype=torch.long)
    right, wrong = depth_bce_loss(peaked(2), one), depth_bce_loss(peaked(4), one)
    uniform = depth_bce_loss(torch.full((2, 5, 3, 4), 0.2), one)
    assert right < uniform < wrong
    none = depth_bce_loss(depth.requires_grad_(), torch.full_like(targets, -1))
    assert none == 0 and none.requires_grad


def view_transform(weight: float = None) -> LSSViewTransform:
    torch.manual_seed(0)
    kwargs = {} if weight is None else dict(depth_loss_weight=weight)
    return LSSViewTransform(8, 4, depth_bins=BINS, bev_size=(50, 25), **kwargs)


def test_loss_is_finite_and_reaches_the_depth_net():
    vt = view_transform(3.0).train()
    samples = [Det3DDataSample(metainfo=rig(2))] * 2
    feats = torch.randn(2, 2, 8, *FEAT_HW, generator=torch.Generator().manual_seed(1))
    vt(feats, samples, (IMG_H, IMG_W))
    rng = np.random.default_rng(0)
    pts = [torch.from_numpy(rng.uniform([-20, -40, -1, 0], [20, 40, 3, 1], (500, 4))).float()
           for _ in range(2)]
    loss = vt.depth_loss(pts, samples)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert vt.depthnet[-1].weight.grad.abs().sum() > 0
    assert vt.depthnet[0].conv.weight.grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match='forward'):  # the distribution is used once
        vt.depth_loss(pts, samples)


def test_loss_under_bf16_autocast_is_float32():
    vt = view_transform(3.0).train()
    samples = [Det3DDataSample(metainfo=rig(2))]
    with torch.autocast('cpu', dtype=torch.bfloat16):
        vt(torch.randn(1, 2, 8, *FEAT_HW), samples, (IMG_H, IMG_W))
        loss = vt.depth_loss([torch.tensor([front_point(*cell_centre(3, 3), 10.0)])], samples)
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and loss > 0


def test_weight_zero_is_bit_identical():
    samples = [Det3DDataSample(metainfo=rig(2))] * 2
    feats = torch.randn(2, 2, 8, *FEAT_HW, generator=torch.Generator().manual_seed(2))
    plain, off, on = view_transform(), view_transform(0.0), view_transform(3.0)
    state = plain.state_dict()
    for other in (off, on):
        assert state.keys() == other.state_dict().keys()
        assert all(torch.equal(state[k], v) for k, v in other.state_dict().items())
    for train in (True, False):
        outs = [m.train(train)(feats, samples, (IMG_H, IMG_W)) for m in (plain, off, on)]
        assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert off._last_depth is None and on._last_depth is not None


def tiny_depth_model():
    register_all_modules()
    cfg = Config.fromfile(DEPTH_CFG)
    torch.manual_seed(0)
    return MODELS.build(copy.deepcopy(cfg.model)), cfg


def test_config_loads_points_in_training_only(tmp_path):
    cfg = Config.fromfile(DEPTH_CFG)
    assert cfg.model.bev_encoder.view_transform.depth_loss_weight == 3.0
    train = cfg.train_dataloader.dataset.pipeline
    assert train[0].type == 'LoadPointsFromFile'
    for loader in (cfg.val_dataloader, cfg.test_dataloader):
        assert all(t.type != 'LoadPointsFromFile' for t in loader.dataset.pipeline)
    assert cfg.model.data_preprocessor.get('voxel', False) is False  # points pass through

    path = tmp_path / 'lidar.bin'
    cloud = np.random.default_rng(0).uniform(-10, 10, (100, 5)).astype(np.float32)
    cloud.tofile(path)
    results = TRANSFORMS.build(train[0])(dict(lidar_points=dict(lidar_path=str(path))))
    packed = TRANSFORMS.build(train[-1])(results)
    assert torch.equal(packed['inputs']['points'], torch.from_numpy(cloud))


def test_one_train_step_with_depth_and_camera_only_predict():
    model, cfg = tiny_depth_model()
    batch = make_batch(1, (64, 112))
    rng = np.random.default_rng(0)
    pts = rng.uniform([-15, -30, -2, 0, 0], [15, 30, 1, 255, 0], (2000, 5)).astype(np.float32)
    model.train()
    optim = build_optim_wrapper(model, cpu_optim_wrapper_cfg(cfg.optim_wrapper))
    with pytest.raises(ValueError, match='depth_loss_weight'):  # no points: no silent skip
        model.train_step(batch, optim)
    batch['inputs']['points'] = [torch.from_numpy(pts)]
    before = model.bev_encoder.view_transform.depthnet[-1].weight.detach().clone()
    losses = model.train_step(batch, optim)
    assert 'loss_depth' in losses and {'loss_cls', 'loss_pts'} <= set(losses)
    assert all(torch.isfinite(v).all() for v in losses.values())
    assert losses['loss_depth'] > 0
    assert not torch.equal(before, model.bev_encoder.view_transform.depthnet[-1].weight)

    model.eval()
    del batch['inputs']['points']
    with torch.no_grad():
        preds = model.test_step(batch)
    assert len(preds) == 1 and 'pred_instances_3d' in preds[0]
