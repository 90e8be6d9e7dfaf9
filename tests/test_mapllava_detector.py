"""MapLLaVA detector end to end on hand-made packed samples (CPU, tiny config)."""
import copy
import os.path as osp
import time

import numpy as np
import pytest
import torch
from mmdet3d.registry import MODELS
from mmdet3d.structures import Det3DDataSample
from mmdet3d.utils import register_all_modules
from mmengine.config import Config
from mmengine.structures import InstanceData

import projects.MapLLaVA.mapllava.models  # noqa: F401  (registers the components)

CONFIG = osp.join(osp.dirname(__file__), '..', 'configs/_base_/models/mapllava_tiny.py')
IMG_H, IMG_W = 64, 112
NUM_PTS, NUM_ORDERS = 20, 2 * (20 - 1)
# viewing directions in the LiDAR xy plane (x right, y forward), nuScenes camera order
CAM_YAWS_DEG = (0.0, 55.0, -55.0, 180.0, -110.0, 110.0)


def camera_calib(num_cams: int) -> dict:
    """nuScenes-like pinholes (1600x900, f=1260) resized to IMG_W x IMG_H."""
    cam2img = np.eye(4)
    cam2img[:3, :3] = [[1260.0, 0, 800.0], [0, 1260.0, 450.0], [0, 0, 1]]
    aug = np.diag([IMG_W / 1600, IMG_H / 900, 1.0, 1.0])
    lidar2cam = []
    for yaw in np.deg2rad(CAM_YAWS_DEG[:num_cams]):
        fwd = np.array([np.sin(yaw), np.cos(yaw), 0.0])
        rot = np.stack([[fwd[1], -fwd[0], 0.0], [0.0, 0.0, -1.0], fwd])  # right, down, fwd
        mat = np.eye(4)
        mat[:3, :3], mat[:3, 3] = rot, -rot @ np.array([0.0, 0.5, 1.8])
        lidar2cam.append(mat)
    lidar2cam = np.stack(lidar2cam)
    cam2imgs = np.stack([cam2img] * num_cams)
    return dict(cam2img=cam2imgs, lidar2cam=lidar2cam, lidar2img=cam2imgs @ lidar2cam,
                img_aug_matrix=np.stack([aug] * num_cams))


def orders(pts: np.ndarray, closed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Equivalent point orders padded to NUM_ORDERS, as the data contract describes."""
    if closed:
        ring = pts[:-1]
        seqs = [np.roll(s, -k, 0) for s in (ring, ring[::-1]) for k in range(len(ring))]
        seqs = [np.concatenate([s, s[:1]]) for s in seqs]
    else:
        seqs = [pts, pts[::-1]]
    shifts = np.full((NUM_ORDERS, NUM_PTS, 2), -10000.0, dtype=np.float32)
    shifts[:len(seqs)] = np.stack(seqs)
    valid = np.zeros(NUM_ORDERS, dtype=bool)
    valid[:len(seqs)] = True
    return shifts, valid


def make_gt() -> InstanceData:
    y = np.linspace(-28.0, 28.0, NUM_PTS)
    lines = [(0, np.stack([np.full_like(y, x), y], -1)) for x in (-1.75, 1.75)]
    lines += [(2, np.stack([np.full_like(y, x), y], -1)) for x in (-7.0, 7.0)]
    t = np.linspace(0, 2 * np.pi, NUM_PTS)
    crossing = np.stack([4.0 * np.cos(t), 12.0 + 1.5 * np.sin(t)], -1)
    crossing[-1] = crossing[0]
    items = [(label, pts, False) for label, pts in lines] + [(1, crossing, True)]
    shifts, valid = zip(*(orders(pts.astype(np.float32), closed) for _, pts, closed in items))
    return InstanceData(
        labels=torch.tensor([label for label, _, _ in items]),
        polylines=torch.from_numpy(np.stack([pts for _, pts, _ in items])).float(),
        shifts=torch.from_numpy(np.stack(shifts)), shifts_valid=torch.from_numpy(np.stack(valid)))


def make_data(batch: int = 1, num_cams: int = 2, seed: int = 0) -> dict:
    """A batch as the dataloader hands it to the model (before the data preprocessor)."""
    gen = torch.Generator().manual_seed(seed)
    imgs, samples = [], []
    for i in range(batch):
        imgs.append(torch.randint(0, 256, (num_cams, 3, IMG_H, IMG_W), generator=gen,
                                  dtype=torch.uint8))
        sample = Det3DDataSample(metainfo=dict(
            token=f'tok{i}', sample_idx=i, img_shape=(IMG_H, IMG_W), roi_size=(30.0, 60.0),
            classes=('divider', 'ped_crossing', 'boundary'), **camera_calib(num_cams)))
        sample.gt_instances_3d = make_gt()
        samples.append(sample)
    return dict(inputs=dict(img=imgs), data_samples=samples)


pytestmark = pytest.mark.usefixtures('single_thread')


BRIDGES = {
    'frozen': dict(mode='frozen'),
    'lora': dict(mode='lora', lora_cfg=dict(r=4, lora_alpha=8)),
    'full': dict(mode='full'),
    'bypass': dict(type='BypassBridge', in_channels=128, embed_dims=128, num_map_queries=50,
                   width=128, num_layers=1, num_heads=4, ffn_dims=256, dropout=0.0),
}


def build_model(bridge: str = 'frozen', **head) -> torch.nn.Module:
    register_all_modules()
    cfg = copy.deepcopy(Config.fromfile(CONFIG).model)
    if bridge == 'bypass':
        cfg.bridge = BRIDGES['bypass']
    else:
        cfg.bridge.update(BRIDGES[bridge])
    cfg.map_head.update(head)
    torch.manual_seed(0)
    return MODELS.build(cfg)


@pytest.mark.parametrize('bridge', list(BRIDGES))
def test_shapes_in_every_mode(bridge):
    model = build_model(bridge).train()
    data = model.data_preprocessor(make_data(batch=2), training=True)
    inputs, samples = data['inputs'], data['data_samples']
    # normalized, stacked to (B, N_cam, 3, H, W) and padded to a multiple of 32
    assert inputs['imgs'].shape == (2, 2, 3, IMG_H, 128)
    assert inputs['imgs'].dtype == torch.float32 and inputs['imgs'].abs().max() < 3
    losses = model(inputs, samples, mode='loss')
    assert {'loss_cls', 'loss_pts', 'loss_dir', 'd0.loss_cls'} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        out = model(inputs, samples, mode='tensor')
        preds = model(inputs, samples, mode='predict')
    assert out['pred_logits'].shape == (2, 50, 3)
    assert out['pred_points'].shape == (2, 50, NUM_PTS, 2)
    assert len(preds) == 2 and preds[0].pred_instances_3d.polylines.shape == (50, NUM_PTS, 2)


def test_frozen_llm_gets_no_grad():
    model = build_model('frozen').train()
    data = model.data_preprocessor(make_data(), training=True)
    losses = model(data['inputs'], data['data_samples'], mode='loss')
    sum(losses.values()).backward()
    llm_params = list(model.bridge.llm.parameters())
    assert llm_params and all(p.grad is None and not p.requires_grad for p in llm_params)

    def has_grad(params) -> bool:
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)

    assert has_grad(model.neck.qformer.parameters())
    assert model.bridge.map_queries.grad is not None
    assert model.bridge.map_queries.grad.abs().sum() > 0
    assert has_grad(model.bridge.scene_proj.parameters())
    assert has_grad(model.map_head.parameters())
    assert has_grad(model.bev_encoder.img_backbone.parameters())


def test_predict_returns_metres_in_roi():
    model = build_model('frozen')
    data = make_data(batch=2)
    results = model.test_step(data)
    assert [r.metainfo['token'] for r in results] == ['tok0', 'tok1']
    for res in results:
        pred = res.pred_instances_3d
        assert pred.polylines.shape == (50, NUM_PTS, 2) and pred.polylines.dtype == torch.float32
        assert pred.scores.shape == (50,) and pred.labels.dtype == torch.int64
        assert pred.labels.max() < 3
        x, y = pred.polylines[..., 0], pred.polylines[..., 1]
        assert x.min() >= -15 and x.max() <= 15 and y.min() >= -30 and y.max() <= 30
        assert x.abs().max() > 1 and y.abs().max() > 2  # metres, not normalized


@pytest.mark.slow
def test_tiny_model_overfits_one_sample():
    model = build_model('frozen').train()
    data = model.data_preprocessor(make_data(), training=True)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    history, start = [], time.time()
    for _ in range(300):
        losses = model(data['inputs'], data['data_samples'], mode='loss')
        total = sum(losses.values())
        optim.zero_grad()
        total.backward()
        optim.step()
        history.append(total.item())
        if np.mean(history[-5:]) < 0.2 * np.mean(history[:5]):
            break
    elapsed = time.time() - start
    print(f'overfit: {len(history)} steps, {elapsed:.1f}s, total loss '
          f'{np.mean(history[:5]):.3f} -> {np.mean(history[-5:]):.3f}')
    assert np.mean(history[-5:]) < 0.2 * np.mean(history[:5])
