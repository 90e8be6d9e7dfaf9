"""BEV encoder: shapes, frustum geometry, pooling, LiDAR branch and fusion (CPU, small)."""
import numpy as np
import pytest
import torch
from mmdet3d.models.data_preprocessors import Det3DDataPreprocessor
from mmdet3d.registry import MODELS
from mmdet3d.structures import Det3DDataSample

from projects.MapLLaVA.mapllava.models.bev_encoder import (
    BEVGrid,
    LSSViewTransform,
    depth_weighted_bev_pool,
)

IMG_H, IMG_W = 64, 112
BEV_SIZE = (50, 25)  # 1.2 m cells over the default 30 m × 60 m ROI
FOCAL, CX, CY = 56.0, 55.5, 31.5
CAM_T = np.array([0.0, 1.0, 1.5])  # camera centre in the LiDAR frame
# LiDAR (x right, y forward, z up) → camera (x right, y down, z forward), by viewing direction.
CAM_ROTS = {
    'front': np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.float64),
    'back': np.array([[-1, 0, 0], [0, 0, -1], [0, -1, 0]], dtype=np.float64),
}


def make_sample(num_cams: int = 6, img_aug: np.ndarray = None) -> Det3DDataSample:
    """Cameras alternating front/back, all at CAM_T, with a pinhole of FOCAL."""
    cam2img = np.eye(4)
    cam2img[:2, :3] = [[FOCAL, 0, CX], [0, FOCAL, CY]]
    lidar2cams = []
    for i in range(num_cams):
        rot = CAM_ROTS['front' if i % 2 == 0 else 'back']
        mat = np.eye(4)
        mat[:3, :3], mat[:3, 3] = rot, -rot @ CAM_T
        lidar2cams.append(mat)
    lidar2cam = np.stack(lidar2cams)
    aug = np.eye(4) if img_aug is None else img_aug
    return Det3DDataSample(metainfo=dict(
        cam2img=np.stack([cam2img] * num_cams), lidar2cam=lidar2cam,
        lidar2img=np.stack([cam2img] * num_cams) @ lidar2cam,
        img_aug_matrix=np.stack([aug] * num_cams)))


def tiny_cam_cfg(**kwargs) -> dict:
    return dict(
        type='BEVFusionEncoder',
        img_backbone=dict(type='mmdet.ResNet', depth=18, base_channels=16, out_indices=(1, 2, 3),
                          norm_eval=False),
        img_neck=dict(type='LSSFPN', in_channels=[32, 64, 128], out_channels=32),
        view_transform=dict(type='LSSViewTransform', in_channels=32, out_channels=16,
                            depth_bins=(1.0, 60.0, 2.0), downsample=2),
        bev_size=BEV_SIZE, **kwargs)


def expected_cell(x: float, y: float, grid: BEVGrid) -> tuple:
    x0, y0, _, _ = grid.xy_range
    return int((y - y0) // grid.dy), int((x - x0) // grid.dx)


@pytest.mark.parametrize('extra', [dict(), dict(channels_last=True, with_cp=True)])
def test_camera_encoder_shape_and_grad(extra):
    torch.manual_seed(0)
    model = MODELS.build(tiny_cam_cfg(**extra))
    model.train()
    imgs = torch.randn(1, 6, 3, IMG_H, IMG_W)
    out = model(imgs, [make_sample()])
    assert model.out_channels == 16
    assert out.shape == (1, 16, *BEV_SIZE)
    assert out.abs().sum() > 0
    out.square().mean().backward()
    grad = model.img_backbone.conv1.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_frustum_pixels_follow_cell_centres():
    vt = LSSViewTransform(8, 4, depth_bins=(1.0, 60.0, 2.0), bev_size=BEV_SIZE)
    frustum = vt.create_frustum((IMG_H, IMG_W), (8, 14))
    assert frustum.shape == (8, 14, vt.num_bins, 3)
    torch.testing.assert_close(frustum[3, 10, 10], torch.tensor([83.5, 27.5, 21.0]))


def test_geometry_and_one_hot_splat():
    """A front and a back camera: pixel (83.5, 27.5) at depth 21 m is 28 px right of and
    4 px above the principal point, i.e. camera (10.5, -1.5, 21)."""
    vt = LSSViewTransform(8, 2, depth_bins=(1.0, 60.0, 2.0), bev_size=BEV_SIZE)
    samples = [make_sample(num_cams=2)] * 2
    geom = vt.get_geometry(samples, (IMG_H, IMG_W), (8, 14))
    assert geom.shape == (2, 2, 8, 14, vt.num_bins, 3)
    k = int((vt.depth_values == 21.0).nonzero())
    front, back = (10.5, 21.0 + 1.0, 1.5 + 1.5), (-10.5, -21.0 + 1.0, 1.5 + 1.5)
    torch.testing.assert_close(geom[1, 0, 3, 10, k], torch.tensor(front))
    torch.testing.assert_close(geom[1, 1, 3, 10, k], torch.tensor(back))

    # One-hot depth at that pixel/bin of sample 1's back camera, features = (1, 2).
    depth = torch.zeros(2, 2, vt.num_bins, 8, 14)
    depth[1, 1, k, 3, 10] = 1.0
    feats = torch.tensor([1.0, 2.0]).view(1, 1, 2, 1, 1).expand(2, 2, 2, 8, 14)
    bev = vt.splat(depth, feats, geom)
    assert bev.shape == (2, 2, *BEV_SIZE)
    row, col = expected_cell(back[0], back[1], vt.grid)
    assert (row, col) == (8, 3)  # y = -20 m, x = -10.5 m
    expected = torch.zeros_like(bev)
    expected[1, :, row, col] = torch.tensor([1.0, 2.0])
    torch.testing.assert_close(bev, expected)


def test_image_augmentation_keeps_geometry():
    """Resize by 0.5 then crop (4, 2) px: augmented pixel (u', v') is original
    (2u' + 8, 2v' + 4), so both must lift to the same LiDAR points."""
    vt = LSSViewTransform(8, 2, depth_bins=(1.0, 60.0, 2.0), bev_size=BEV_SIZE)
    aug = np.diag([0.5, 0.5, 1.0, 1.0])
    aug[:2, 3] = [-4.0, -2.0]
    plain = vt.get_geometry([make_sample(2)], (IMG_H, IMG_W), (IMG_H, IMG_W))
    augmented = vt.get_geometry([make_sample(2, img_aug=aug)], (24, 48), (24, 48))
    rows = torch.arange(24) * 2 + 4
    cols = torch.arange(48) * 2 + 8
    torch.testing.assert_close(augmented, plain[:, :, rows][:, :, :, cols], atol=1e-4,
                               rtol=1e-5)


def test_geometry_stays_float32_under_autocast():
    vt = LSSViewTransform(8, 2, depth_bins=(1.0, 60.0, 2.0), bev_size=BEV_SIZE)
    ref = vt.get_geometry([make_sample(2)], (IMG_H, IMG_W), (8, 14))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        geom = vt.get_geometry([make_sample(2)], (IMG_H, IMG_W), (8, 14))
    assert geom.dtype == torch.float32
    torch.testing.assert_close(geom, ref)


def test_pool_matches_dense_and_gradcheck():
    torch.manual_seed(0)
    depth = torch.rand(5, 3, dtype=torch.float64, requires_grad=True)
    feats = torch.rand(5, 4, dtype=torch.float64, requires_grad=True)
    point_idx = torch.tensor([0, 2, 4, 7, 8, 11, 14])
    cell_idx = torch.tensor([1, 1, 0, 5, 3, 1, 5])
    # one cell per frustum point; 6 (= num_cells) marks the points outside, which are dropped
    every = torch.full((15,), 6).index_put((point_idx,), cell_idx)
    dense = depth.reshape(-1, 1)[point_idx] * feats[point_idx // 3]
    ref = torch.zeros(6, 4, dtype=torch.float64).index_add(0, cell_idx, dense)
    for chunk in (3, 7, 1 << 18):  # one pixel, two pixels with a remainder, all at once
        out = depth_weighted_bev_pool(depth, feats, every, 6, chunk_size=chunk)
        torch.testing.assert_close(out, ref)
        assert torch.autograd.gradcheck(
            lambda d, f: depth_weighted_bev_pool(d, f, every, 6, chunk), (depth, feats))
    with pytest.raises(ValueError, match='one entry per frustum point'):
        depth_weighted_bev_pool(depth, feats, cell_idx, 6)


def test_splat_equals_pooling_only_the_points_inside():
    """All points pooled with a dropped extra cell = the inside points selected and pooled
    (the former ``nonzero`` formulation), forward and gradients."""
    vt = LSSViewTransform(8, 3, depth_bins=(1.0, 60.0, 2.0), bev_size=BEV_SIZE, downsample=2,
                          pool_chunk_size=100)
    geom = vt.get_geometry([make_sample(2), make_sample(2, np.diag([0.5, 0.5, 1, 1]))],
                           (IMG_H, IMG_W), (8, 14))
    gen = torch.Generator().manual_seed(0)
    depth = torch.rand(2, 2, vt.num_bins, 8, 14, generator=gen, requires_grad=True)
    feats = torch.rand(2, 2, 3, 8, 14, generator=gen, requires_grad=True)
    weights = torch.rand(2, 3, vt.pool_grid.bev_h, vt.pool_grid.bev_w, generator=gen)
    out = vt.splat(depth, feats, geom)
    grads = torch.autograd.grad((out * weights).sum(), (depth, feats))

    grid = vt.pool_grid
    cells, valid = grid.flat_index(geom)
    assert 0 < valid.float().mean() < 0.9  # some points fall outside the grid
    cells = cells + torch.arange(2).view(2, 1, 1, 1, 1) * grid.num_cells
    points = depth.permute(0, 1, 3, 4, 2)[..., None] * feats.permute(0, 1, 3, 4, 2)[..., None, :]
    ref = torch.zeros(2 * grid.num_cells, 3).index_add(0, cells[valid], points[valid])
    ref = ref.view(2, grid.bev_h, grid.bev_w, 3).permute(0, 3, 1, 2)
    ref_grads = torch.autograd.grad((ref * weights).sum(), (depth, feats))
    torch.testing.assert_close(out, ref)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad)


def test_view_transform_compiles_without_breaks_or_recompiles():
    """Static shapes (no ``nonzero``): the splat traces as one graph, and another sample's
    calibration is new input data, not a reason to recompile (dynamo's ``eager`` backend:
    the guards are dynamo's, whatever the backend)."""
    torch._dynamo.reset()
    vt = LSSViewTransform(8, 3, depth_bins=(1.0, 60.0, 2.0), bev_size=BEV_SIZE, downsample=2)
    geom = vt.get_geometry([make_sample(2)], (IMG_H, IMG_W), (8, 14))
    depth = torch.rand(1, 2, vt.num_bins, 8, 14, requires_grad=True)
    feats = torch.rand(1, 2, 3, 8, 14, requires_grad=True)
    splat = torch.compile(vt.splat, fullgraph=True, backend='eager')
    torch.testing.assert_close(splat(depth, feats, geom), vt.splat(depth, feats, geom))

    forward = torch.compile(vt, backend='eager')
    img_feats = torch.randn(1, 2, 8, 8, 14)
    shifted = np.eye(4)
    shifted[:2, 3] = [-3.0, 2.0]  # another crop: different calibration values
    samples = ([make_sample(2)], [make_sample(2, shifted)])
    with torch.no_grad():
        eager = [vt(img_feats, s, (IMG_H, IMG_W)) for s in samples]
        forward(img_feats, samples[0], (IMG_H, IMG_W))
        with torch._dynamo.config.patch(error_on_recompile=True):
            compiled = forward(img_feats, samples[1], (IMG_H, IMG_W))
    torch.testing.assert_close(compiled, eager[1])
    assert not torch.equal(eager[0], eager[1])


def lidar_cfg(voxel_size: float, pts_range: list, grid_hw: tuple, with_cam: bool) -> dict:
    cfg = tiny_cam_cfg() if with_cam else dict(type='BEVFusionEncoder', bev_size=BEV_SIZE,
                                              pts_out_channels=8)
    cfg.update(
        pts_voxel_encoder=dict(type='PillarFeatureNet', in_channels=4, feat_channels=(8, ),
                               voxel_size=(voxel_size, voxel_size, 8.0),
                               point_cloud_range=pts_range),
        pts_middle_encoder=dict(type='PointPillarsScatter', in_channels=8,
                                output_shape=grid_hw),
        pts_bev_range=(pts_range[0], pts_range[1], pts_range[3], pts_range[4]))
    if with_cam:
        cfg['fuser'] = dict(type='ConvFuser', in_channels=[16, 8], out_channels=16)
    return cfg


def voxelize(points: list, voxel_size: float, pts_range: list) -> dict:
    pre = Det3DDataPreprocessor(voxel=True, voxel_layer=dict(
        max_num_points=8, point_cloud_range=pts_range,
        voxel_size=[voxel_size, voxel_size, 8.0], max_voxels=(200, 200)))
    return pre.voxelize(points, [Det3DDataSample() for _ in points])


@pytest.mark.parametrize('voxel_size,pts_range,grid_hw', [
    (1.2, [-15.0, -30.0, -5.0, 15.0, 30.0, 3.0], (50, 25)),  # same grid as the camera BEV
    (0.6, [-30.0, -30.0, -5.0, 30.0, 30.0, 3.0], (100, 100)),  # finer and wider: resampled
])
def test_lidar_points_land_in_their_cell(voxel_size, pts_range, grid_hw):
    torch.manual_seed(0)
    model = MODELS.build(lidar_cfg(voxel_size, pts_range, grid_hw, with_cam=False)).eval()
    xy = {0: [(10.5, 22.0), (-7.0, -25.0)], 1: [(3.1, 4.1)]}
    points = [torch.tensor([[x, y, 0.0, 0.5] for x, y in xy[b]]) for b in range(2)]
    with torch.no_grad():
        bev = model(None, [Det3DDataSample()] * 2, voxelize(points, voxel_size, pts_range))
    assert bev.shape == (2, 8, *BEV_SIZE)
    for b in range(2):
        hit = {tuple(rc) for rc in (bev[b].abs().sum(0) > 0).nonzero().tolist()}
        assert hit == {expected_cell(x, y, model.grid) for x, y in xy[b]}


def test_camera_lidar_fusion_shape():
    torch.manual_seed(0)
    pts_range = [-15.0, -30.0, -5.0, 15.0, 30.0, 3.0]
    model = MODELS.build(lidar_cfg(1.2, pts_range, (50, 25), with_cam=True))
    points = [torch.rand(50, 4) * torch.tensor([30.0, 60.0, 2.0, 1.0])
              - torch.tensor([15.0, 30.0, 1.0, 0.0]) for _ in range(2)]
    out = model(torch.randn(2, 6, 3, IMG_H, IMG_W), [make_sample()] * 2,
                voxelize(points, 1.2, pts_range))
    assert model.out_channels == 16
    assert out.shape == (2, 16, *BEV_SIZE)
    out.mean().backward()
    assert model.pts_voxel_encoder.pfn_layers[0].linear.weight.grad.abs().sum() > 0
