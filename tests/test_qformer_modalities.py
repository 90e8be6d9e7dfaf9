"""What the Q-Former reads: image tokens with viewing rays, camera BEV, LiDAR BEV (issue 14)."""
import copy
import os.path as osp

import numpy as np
import pytest
import torch
from mmdet3d.registry import MODELS
from mmdet3d.structures import Det3DDataSample
from mmdet3d.utils import register_all_modules
from mmengine.config import Config

import projects.MapLLaVA.mapllava.models  # noqa: F401  (registers the components)
from projects.MapLLaVA.mapllava.models.bev_encoder import LSSViewTransform
from projects.MapLLaVA.mapllava.models.necks import QFormerNeck
from projects.MapLLaVA.mapllava.models.necks.ray_encoding import (
    token_pixel_centres,
    viewing_rays,
)
from tests.test_mapllava_detector import camera_calib, make_data

pytestmark = pytest.mark.usefixtures('single_thread')
ROOT = osp.join(osp.dirname(__file__), '..')
TINY = osp.join(ROOT, 'configs/_base_/models/mapllava_tiny.py')
LIDAR_DEMO = osp.join(ROOT, 'configs/mapllava/mapllava_tiny-lidar_1xb4-demo_synthetic-nus-map.py')
QFORMER = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
               encoder_hidden_size=32, cross_attention_frequency=1)
COMBOS = {
    'image': dict(image=dict(in_channels=16, downsample=2)),
    'bev': dict(bev=dict(in_channels=8)),
    'image+bev': dict(image=dict(in_channels=16, pool_size=(3, 5)), bev=dict(in_channels=8)),
    'image+camera_bev+lidar': dict(image=dict(in_channels=16, downsample=2),
                                   bev=dict(in_channels=8, source='camera', downsample=2),
                                   lidar=dict(in_channels=12, mode='conv', downsample=2)),
}


def samples(batch: int, num_cams: int) -> list:
    return [Det3DDataSample(metainfo=camera_calib(num_cams)) for _ in range(batch)]


def features(batch: int = 2, num_cams: int = 2) -> dict:
    """``BEVFusionEncoder.encode``-shaped features (64x112 images, stride 8)."""
    gen = torch.Generator().manual_seed(0)
    bev = torch.randn(batch, 8, 10, 6, generator=gen)
    return dict(img_feats=torch.randn(batch, num_cams, 16, 8, 14, generator=gen),
                img_hw=(64, 112), bev=bev, camera_bev=bev + 1,
                lidar_bev=torch.randn(batch, 12, 10, 6, generator=gen))


@pytest.mark.parametrize('combo', list(COMBOS))
def test_every_combination_has_tokens_and_gradients(combo):
    torch.manual_seed(0)
    neck = QFormerNeck(qformer_cfg=QFORMER, num_query_tokens=4, modalities=COMBOS[combo])
    feats = {k: v.requires_grad_() if torch.is_tensor(v) else v for k, v in features().items()}
    out = neck(feats, samples(2, 2))
    assert out.shape == (2, 4, 32)
    out.square().sum().backward()
    read = set(neck.encoder_outputs.values())
    for key in ('img_feats', 'bev', 'camera_bev', 'lidar_bev'):
        grad = feats[key].grad
        assert (grad is not None and grad.abs().sum() > 0) == (key in read), key
    # every parameter of the neck takes part (a dead modality layer would have no grad)
    assert all(p.grad is not None for p in neck.parameters())


def test_memory_length_is_the_token_budget():
    """Q-Former memory = Σ tokens per modality after the per-modality reduction."""
    neck = QFormerNeck(qformer_cfg=QFORMER, num_query_tokens=4,
                       modalities=COMBOS['image+camera_bev+lidar'])
    seen = {}
    neck.qformer.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.update(n=kwargs['encoder_hidden_states'].shape[1]),
        with_kwargs=True)
    neck(features(), samples(2, 2))
    image = 2 * 4 * 7  # 2 cameras x ceil(8/2) x ceil(14/2)
    assert seen['n'] == image + 5 * 3 + 5 * 3
    assert neck.token_grid((30, 50)) == (15, 25)  # full size: 800x480 at stride 16, downsample 2


def test_bev_only_neck_is_the_old_neck():
    """``modalities=None`` and ``dict(bev=True)`` build the same layers, in the same random order,
    with the old parameter names (old checkpoints load), and take the BEV tensor itself."""
    torch.manual_seed(0)
    old = QFormerNeck(in_channels=8, qformer_cfg=QFORMER, downsample=2, downsample_mode='conv')
    torch.manual_seed(0)
    new = QFormerNeck(in_channels=8, qformer_cfg=QFORMER, downsample=2, downsample_mode='conv',
                      modalities=dict(bev=True))
    assert list(old.state_dict()) == list(new.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(),
                                                 new.state_dict().values()))
    assert 'bev_proj.0.weight' in old.state_dict() and 'modality_embed' not in str(
        list(old.state_dict()))
    bev = features()['bev']
    old.eval(), new.eval()
    assert torch.equal(old(bev), new(dict(bev=bev)))


def test_ray_encoding_follows_the_view_transform_geometry():
    """A hand-made camera: the view transform's frustum point at depth d of every cell lies at
    origin + d * direction of that cell's ray (ray_encoding.viewing_rays), with an image
    augmentation (resize + crop) in between, and the camera centre is the rig's."""
    calib = camera_calib(2)
    aug = np.diag([0.5, 0.4, 1.0, 1.0])
    aug[:2, 3] = (-7.0, -3.0)
    calib['img_aug_matrix'] = np.stack([aug, aug])
    data = [Det3DDataSample(metainfo=calib)]
    vt = LSSViewTransform(in_channels=4, out_channels=4, depth_bins=(2.0, 20.0, 6.0))
    img_hw, feat_hw = (64, 112), (4, 7)
    geom = vt.get_geometry(data, img_hw, feat_hw)  # (1, N, fH, fW, D, 3)
    origins, directions = viewing_rays(data, img_hw, feat_hw)
    expected = origins[:, :, None, None, None] + vt.depth_values.view(
        1, 1, 1, 1, -1, 1) * directions[:, :, :, :, None]
    torch.testing.assert_close(geom, expected, rtol=1e-5, atol=1e-4)
    lidar2cam = torch.as_tensor(calib['lidar2cam'], dtype=torch.float32)
    centres = torch.linalg.inv(lidar2cam)[:, :3, 3]
    torch.testing.assert_close(origins[0], centres, rtol=0, atol=1e-5)
    # without the crop: the front camera's centre token looks forward (+y), the 55-degree one
    # to the right (+x)
    _, directions = viewing_rays([Det3DDataSample(metainfo=camera_calib(2))], img_hw, feat_hw)
    front = directions[0, 0, 1:3, 3].mean(0)
    assert front[1] > 0 and abs(front[0]) < 0.2 * front[1]
    right = directions[0, 1, 1:3, 3].mean(0)
    assert right[0] > 0 and right[1] > 0
    # the pixel centres are the frustum's
    frustum = vt.create_frustum(img_hw, feat_hw)
    torch.testing.assert_close(token_pixel_centres(img_hw, feat_hw), frustum[:, :, 0, :2])


def build_detector(config: str, modalities: dict) -> torch.nn.Module:
    register_all_modules()
    cfg = copy.deepcopy(Config.fromfile(config).model)
    cfg.neck.modalities = modalities
    torch.manual_seed(0)
    return MODELS.build(cfg)


def test_detector_reads_images_and_bev_and_trains():
    model = build_detector(TINY, dict(image=dict(downsample=2), bev=True)).train()
    assert model.neck.modalities['image']['in_channels'] == 64  # from the encoder
    assert model.neck.modalities['image']['pc_range'] == tuple(model.bev_encoder.grid.pc_range)
    data = model.data_preprocessor(make_data(batch=1), training=True)
    losses = model(data['inputs'], data['data_samples'], mode='loss')
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    assert model.neck.image_proj[0].weight.grad.abs().sum() > 0
    assert model.bev_encoder.img_backbone.conv1.weight.grad.abs().sum() > 0


def test_lidar_modality_without_lidar_branch_fails_at_build():
    with pytest.raises(ValueError, match=r"model\.neck\.modalities\.lidar is switched on, but "
                                         r".*no pts_voxel_encoder"):
        build_detector(TINY, dict(bev=True, lidar=True))


def test_wrong_channels_and_unknown_options_fail_at_build():
    with pytest.raises(ValueError, match=r'modalities\.image\.in_channels is 32, but the BEV '
                                         r'encoder gives 64'):
        build_detector(TINY, dict(image=dict(in_channels=32)))
    with pytest.raises(ValueError, match=r"unknown modality \['vector'\]"):
        build_detector(TINY, dict(bev=True, vector=True))
    with pytest.raises(ValueError, match=r"modalities\.image: unknown option\(s\) \['stride'\]"):
        build_detector(TINY, dict(image=dict(stride=2)))
    with pytest.raises(ValueError, match='switches every modality off'):
        build_detector(TINY, dict(image=False, bev=False))


def test_lidar_demo_config_builds_all_three_modalities():
    model = build_detector(LIDAR_DEMO, dict(image=dict(downsample=4),
                                            bev=dict(source='camera'), lidar=True))
    assert model.neck.encoder_outputs == dict(image='img_feats', bev='camera_bev',
                                              lidar='lidar_bev')
    assert model.neck.modalities['lidar']['in_channels'] == 64
