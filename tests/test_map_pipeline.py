"""Map transforms, and the dataset + pipeline end to end on a small synthetic nuScenes."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.dataset import pseudo_collate
from torch.utils.data import DataLoader

from projects.MapLLaVA.mapllava.datasets import NuScenesMapDataset
from projects.MapLLaVA.mapllava.transforms import (
    MapPermutationTargets,
    MapRangeFilter,
    MultiViewResize,
    PackMapInputs,
    permutation_orders,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _targets(vectors, closed, num_pts=5):
    results = dict(gt_map_vectors=[np.asarray(v, np.float32) for v in vectors],
                   gt_map_labels=np.arange(len(vectors)), gt_map_closed=np.asarray(closed))
    return MapPermutationTargets(num_pts=num_pts).transform(results)


def test_open_line_targets():
    out = _targets([[(0, 0), (4, 0)]], [False])
    line = np.array([(0, 0), (1, 0), (2, 0), (3, 0), (4, 0)], np.float32)
    assert out['gt_map_shifts'].shape == (1, 8, 5, 2)
    assert np.allclose(out['gt_map_polylines'][0], line)
    assert out['gt_map_shifts_valid'][0].tolist() == [True, True] + [False] * 6
    assert np.allclose(out['gt_map_shifts'][0, 0], line)
    assert np.allclose(out['gt_map_shifts'][0, 1], line[::-1])
    assert np.allclose(out['gt_map_shifts'][0, 2:], line)  # padding: harmless copies


def test_closed_polygon_targets():
    square = [(0, 0), (2, 0), (2, 2), (0, 2), (0, 0)]  # perimeter 8, 5 pts -> the corners
    out = _targets([square], [True])
    shifts, valid = out['gt_map_shifts'][0], out['gt_map_shifts_valid'][0]
    assert valid.all() and shifts.shape == (8, 5, 2)
    corners = [(0, 0), (2, 0), (2, 2), (0, 2)]
    expected = set()
    for direction in (corners, corners[::-1]):
        for k in range(4):
            ring = direction[k:] + direction[:k]
            expected.add(tuple(ring + ring[:1]))
    got = {tuple(map(tuple, np.round(s, 5).tolist())) for s in shifts}
    assert got == expected
    assert np.allclose(shifts[0], square) and np.allclose(shifts[4], square[::-1])
    assert all(np.array_equal(s[0], s[-1]) for s in shifts)


def test_permutation_orders_and_subsampling():
    pts = np.random.default_rng(0).normal(size=(20, 2))
    pts[-1] = pts[0]
    orders = permutation_orders(pts, closed=True)
    assert orders.shape == (38, 20, 2)
    assert len({o.tobytes() for o in orders}) == 38
    results = dict(gt_map_vectors=[pts.astype(np.float32)], gt_map_labels=np.zeros(1),
                   gt_map_closed=np.array([True]))
    out = MapPermutationTargets(num_pts=20, num_shifts=10).transform(results)
    assert out['gt_map_shifts'].shape == (1, 10, 20, 2) and out['gt_map_shifts_valid'].all()


def test_empty_targets_and_pack():
    out = _targets([], [], num_pts=20)
    assert out['gt_map_shifts'].shape == (0, 38, 20, 2)
    out.update(img=[np.zeros((8, 16, 3), np.uint8)] * 6, img_shape=[(8, 16)] * 6,
               ori_shape=[(8, 16)] * 6, token='t')
    packed = PackMapInputs().transform(out)
    assert packed['inputs']['img'].shape == (6, 3, 8, 16)
    gt = packed['data_samples'].gt_instances_3d
    assert gt.labels.shape == (0,) and gt.shifts.shape == (0, 38, 20, 2)
    assert packed['data_samples'].metainfo['img_shape'] == (8, 16)


def test_range_filter():
    results = dict(
        gt_map_vectors=[np.array([(0, 0), (0, 40)], np.float32),       # crosses y = 30
                        np.array([(20, 0), (25, 0)], np.float32),      # outside
                        np.array([(-1, -1), (1, -1), (1, 1), (-1, 1), (-1, -1)], np.float32),
                        np.array([(14, 0), (16, 0), (16, 2), (14, 2), (14, 0)], np.float32)],
        gt_map_labels=np.array([0, 0, 1, 1]), gt_map_closed=np.array([False, False, True, True]),
        roi_size=(30, 60))
    out = MapRangeFilter().transform(results)
    assert out['gt_map_labels'].tolist() == [0, 1, 1]
    assert np.allclose(out['gt_map_vectors'][0], [(0, 0), (0, 30)])
    assert out['gt_map_closed'].tolist() == [False, True, False]  # the cut ring is open
    assert np.all(np.abs(out['gt_map_vectors'][2][:, 0]) <= 15)


def test_resize_updates_img_aug_matrix():
    results = dict(img=[np.zeros((90, 160, 3), np.uint8)] * 2,
                   img_aug_matrix=np.repeat(np.eye(4)[None], 2, axis=0))
    out = MultiViewResize(scale_factor=0.5).transform(results)
    assert out['img'][0].shape == (45, 80, 3) and out['img_shape'] == [(45, 80)] * 2
    assert np.allclose(out['img_aug_matrix'][1], np.diag([0.5, 0.5, 1, 1]))
    out = MultiViewResize(scale=(40, 30)).transform(out)
    assert np.allclose(out['img_aug_matrix'][0], np.diag([0.25, 30 / 90, 1, 1]))


# ----------------------------------------------------------------- end to end (synthetic)
GENERATOR = os.path.join(REPO, 'tools', 'create_synthetic_nuscenes.py')


@pytest.fixture(scope='module')
def synthetic_root(tmp_path_factory):
    if not os.path.isfile(GENERATOR):
        pytest.skip('tools/create_synthetic_nuscenes.py not available yet')
    root = str(tmp_path_factory.mktemp('synthetic_nus'))
    subprocess.run([sys.executable, GENERATOR, '--out', root, '--scenes', '10',
                    '--samples-per-scene', '2', '--image-scale', '0.1'],
                   check=True, cwd=REPO, capture_output=True)
    subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'create_data.py'), 'nuscenes',
                    '--root-path', root, '--version', 'v1.0-mini', '--workers', '2'],
                   check=True, cwd=REPO, capture_output=True)
    return root


PIPELINE = [
    dict(type='LoadMultiViewImages'),
    dict(type='LoadMapAnnotations'),
    dict(type='MapRangeFilter'),
    dict(type='MapPermutationTargets', num_pts=20),
    dict(type='MultiViewPhotoMetricDistortion'),
    dict(type='MultiViewResize', scale=(64, 32)),
    dict(type='PackMapInputs'),
]


@pytest.mark.slow
def test_dataset_epoch(synthetic_root):
    for split in ('train', 'val'):
        ds = NuScenesMapDataset(ann_file=f'nuscenes_map_infos_{split}.pkl',
                                data_root=synthetic_root, pipeline=PIPELINE,
                                test_mode=split == 'val')
        assert len(ds) > 0
        loader = DataLoader(ds, batch_size=3, num_workers=0, collate_fn=pseudo_collate)
        seen = 0
        for batch in loader:
            for img, sample in zip(batch['inputs']['img'], batch['data_samples']):
                assert img.shape == (6, 3, 32, 64) and img.dtype == torch.float32
                gt = sample.gt_instances_3d
                m = len(gt.labels)
                assert gt.polylines.shape == (m, 20, 2) and gt.shifts.shape == (m, 38, 20, 2)
                assert gt.shifts_valid.shape == (m, 38) and gt.shifts_valid[:, :2].all()
                assert gt.labels.dtype == torch.long and (gt.labels < 3).all()
                meta = sample.metainfo
                assert np.asarray(meta['lidar2img']).shape == (6, 4, 4)
                assert np.asarray(meta['img_aug_matrix']).shape == (6, 4, 4)
                assert isinstance(meta['token'], str)
            seen += len(batch['data_samples'])
        assert seen == len(ds)


@pytest.mark.slow
def test_gt_divider_projects_onto_marking(synthetic_root):
    """A GT divider projected with the info's lidar2img lands on bright paint."""
    import mmcv
    ds = NuScenesMapDataset(ann_file='nuscenes_map_infos_val.pkl', data_root=synthetic_root,
                            pipeline=[])
    hits = total = 0
    for idx in range(len(ds)):
        info = ds.get_data_info(idx)
        annos = info['map_annos']
        img = mmcv.imread(info['img_path'][0], 'grayscale').astype(np.float32)
        h, w = img.shape
        z = -info['lidar2ego'][2, 3]  # ground plane below the LiDAR (flat synthetic world)
        for vec, lab in zip(annos['vectors_resampled'], annos['labels']):
            if lab != 0:
                continue
            pts = np.concatenate([vec, np.full((20, 1), z), np.ones((20, 1))], axis=1)
            uvd = pts @ info['lidar2img'][0].T
            ok = uvd[:, 2] > 1.0
            uv = uvd[ok, :2] / uvd[ok, 2:3]
            inside = (uv[:, 0] >= 1) & (uv[:, 0] < w - 1) & (uv[:, 1] >= 1) & (uv[:, 1] < h - 1)
            for u, v in uv[inside]:
                patch = img[int(v) - 1:int(v) + 2, int(u) - 1:int(u) + 2]
                total += 1
                hits += patch.max() > np.percentile(img, 90)
    assert total > 20, 'no divider visible in CAM_FRONT'
    assert hits / total > 0.8, f'only {hits}/{total} projected divider points on bright pixels'
