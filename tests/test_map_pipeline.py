"""Map transforms, and the dataset + pipeline end to end on a small synthetic nuScenes."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from mmdet3d.registry import DATASETS, MODELS
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope
from torch.utils.data import DataLoader

from projects.MapLLaVA.mapllava.datasets import NuScenesMapDataset
from projects.MapLLaVA.mapllava.transforms import (
    LoadMapAnnotations,
    MapPermutationTargets,
    MapRangeFilter,
    MultiViewRandomAffine,
    MultiViewResize,
    PackMapInputs,
    permutation_orders,
)
from projects.MapLLaVA.mapllava.utils.polyline import resample_polyline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
init_default_scope('mmdet3d')  # pipelines are built from the mmdet3d registry


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


@pytest.mark.parametrize('seed', range(6))
def test_random_affine_moves_pixels_as_its_matrix_says(seed):
    """A bright dot at original pixel (u, v) shows up at img_aug_matrix @ (u, v)."""
    np.random.seed(seed)
    dots = [(40.0, 60.0), (120.0, 30.0)]
    imgs = []
    for u, v in dots:
        img = np.zeros((90, 160, 3), np.uint8)
        img[int(v) - 1:int(v) + 2, int(u) - 1:int(u) + 2] = 255
        imgs.append(img)
    prev = np.repeat(np.diag([2.0, 2.0, 1.0, 1.0])[None], 2, axis=0)  # an earlier resize
    aug = MultiViewRandomAffine(scale=(128, 64), scale_range=(0.8, 1.2), rot_deg=10,
                                flip_prob=0.5)
    out = aug.transform(dict(img=imgs, img_aug_matrix=prev))
    assert out['img_shape'] == [(64, 128)] * 2 and out['img'][0].shape == (64, 128, 3)
    for (u, v), img, mat in zip(dots, out['img'], out['img_aug_matrix']):
        step = mat @ np.linalg.inv(prev[0])  # this transform's own part
        exp_u, exp_v = (step @ np.array([u, v, 1.0, 1.0]))[:2]
        if not (3 <= exp_u < 125 and 3 <= exp_v < 61):
            continue  # cropped away (or cut by the border)
        gray = img[..., 0].astype(float)
        rows, cols = np.nonzero(gray > 0.5 * gray.max())
        assert abs(cols.mean() - exp_u) < 1.0 and abs(rows.mean() - exp_v) < 1.0
    with pytest.raises(ValueError, match='scale'):
        MultiViewRandomAffine(scale=(0, 10))


def _fake_info(tmp_path, labels, classes):
    """One-sample info file (no images on disk) with the given map labels."""
    from projects.MapLLaVA.mapllava.datasets.map_gt import dump_atomic, make_map_annos
    cam = dict(img_path='samples/CAM_FRONT/x.jpg', cam2img=np.eye(3), lidar2cam=np.eye(4),
               cam2ego=np.eye(4), lidar2img=np.eye(4), sample_data_token='sd', timestamp=0,
               height=9, width=16)
    vectors = [np.array([(0, 0), (1, float(i))], np.float32) for i in range(len(labels))]
    entry = dict(token='tok', sample_idx=0, scene_token='s', scene_name='scene-0001',
                 location='boston-seaport', timestamp=0, ego2global=np.eye(4),
                 lidar2ego=np.eye(4), lidar_points=dict(lidar_path='samples/L/x.bin',
                                                        num_pts_feats=5),
                 lidar_sweeps=[], images=dict(CAM_FRONT=cam),
                 map_annos=make_map_annos(labels, vectors))
    dump_atomic(dict(metainfo=dict(classes=classes, roi_size=(30., 60.)), data_list=[entry]),
                str(tmp_path / 'infos.pkl'))
    return str(tmp_path)


def test_dataset_keeps_empty_and_remaps_labels(tmp_path):
    root = _fake_info(tmp_path, [], ('divider', 'ped_crossing', 'boundary'))
    ds = NuScenesMapDataset(ann_file='infos.pkl', data_root=root,
                            filter_cfg=dict(filter_empty_gt=True))
    info = ds.get_data_info(0)
    assert len(ds) == 1 and len(info['map_annos']['labels']) == 0
    assert info['img_path'] == [os.path.join(root, 'samples/CAM_FRONT/x.jpg')]
    assert info['lidar_points']['lidar_path'] == os.path.join(root, 'samples/L/x.bin')
    assert info['cam2img'].shape == (1, 4, 4) and info['img_aug_matrix'].shape == (1, 4, 4)

    root = _fake_info(tmp_path, [3, 0, 2, 1],
                      ('divider', 'ped_crossing', 'boundary', 'centerline'))
    ds = NuScenesMapDataset(ann_file='infos.pkl', data_root=root,
                            metainfo=dict(classes=('boundary', 'divider')))
    annos = ds.get_data_info(0)['map_annos']
    assert annos['labels'].tolist() == [1, 0]  # centerline and ped_crossing dropped
    assert [v[1, 1] for v in annos['vectors']] == [1, 2]
    assert annos['vectors_resampled'].shape == (2, 20, 2)


def test_old_info_version_is_named(tmp_path, monkeypatch):
    """Infos of an older converter still load, with a warning naming the file and version."""
    from projects.MapLLaVA.mapllava.datasets import nuscenes_map_dataset
    from projects.MapLLaVA.mapllava.datasets.map_gt import dump_atomic
    from projects.MapLLaVA.mapllava.datasets.map_gt.info_builder import INFO_VERSION
    from projects.MapLLaVA.mapllava.utils.safe_pickle import load_data_file
    root = _fake_info(tmp_path, [0], ('divider', 'ped_crossing', 'boundary'))
    said = []
    monkeypatch.setattr(nuscenes_map_dataset, 'print_log', lambda msg, *a, **k: said.append(msg))
    for version, warned in ((INFO_VERSION - 1, True), (INFO_VERSION, False), (None, False)):
        infos = load_data_file(os.path.join(root, 'infos.pkl'))
        infos['metainfo']['info_version'] = version
        dump_atomic(infos, os.path.join(root, 'infos.pkl'))
        said.clear()
        assert len(NuScenesMapDataset(ann_file='infos.pkl', data_root=root)) == 1
        assert [m for m in said if 'info_version' in m] == (
            [f'{os.path.join(root, "infos.pkl")} has info_version {version}, older than this '
             f'code\'s {INFO_VERSION} (docs/data_format.md, "Info versions"): its map GT may '
             'differ; rerun tools/create_data.py'] if warned else [])


def test_bad_input_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='info file not found'):
        NuScenesMapDataset(ann_file='nope.pkl', data_root=str(tmp_path))
    root = _fake_info(tmp_path, [0], ('divider', 'ped_crossing', 'boundary'))
    ds = NuScenesMapDataset(ann_file='infos.pkl', data_root=root,
                            pipeline=[dict(type='LoadMultiViewImages')], test_mode=True)
    with pytest.raises(FileNotFoundError, match='samples/CAM_FRONT/x.jpg'):
        ds[0]
    with pytest.raises(KeyError, match='no map_annos'):
        LoadMapAnnotations().transform(dict(token='t'))
    assert len(LoadMapAnnotations(allow_missing=True).transform({})['gt_map_labels']) == 0


# ----------------------------------------------------------------- end to end (synthetic)
# `synthetic_root`: tests/conftest.py
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
    # the model's preprocessor normalizes, pads and stacks the packed views
    pre = MODELS.build(dict(type='Det3DDataPreprocessor', mean=[123.675, 116.28, 103.53],
                            std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_size_divisor=32))
    out = pre(batch, training=True)
    assert out['inputs']['imgs'].shape == (len(batch['data_samples']), 6, 3, 32, 64)


@pytest.mark.slow
def test_base_dataset_config(synthetic_root):
    cfg = Config.fromfile(os.path.join(REPO, 'configs', '_base_', 'datasets', 'nus-map.py'))
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        ds = DATASETS.build(dict(loader.dataset, data_root=synthetic_root))
        item = ds[0]
        assert item['inputs']['img'].shape == (6, 3, 450, 800)
        assert item['data_samples'].gt_instances_3d.shifts.shape[1:] == (38, 20, 2)


def _divider_brightness(info: dict, img: np.ndarray, dx: float) -> np.ndarray:
    """Grey values under the dividers (4-25 m ahead, every 0.25 m) shifted by ``dx`` metres
    sideways, projected on the flat ground with the info's CAM_FRONT lidar2img."""
    h, w = img.shape
    z = -info['lidar2ego'][2, 3]  # ground below the LiDAR (flat synthetic world)
    vals = []
    for vec, lab in zip(info['map_annos']['vectors'], info['map_annos']['labels']):
        if lab != 0:
            continue
        n = max(2, int(np.linalg.norm(np.diff(vec, axis=0), axis=1).sum() / 0.25))
        pts = resample_polyline(vec.astype(np.float64), n)
        pts = pts[(pts[:, 1] > 4) & (pts[:, 1] < 25)] + [dx, 0.0]
        uvd = np.concatenate([pts, np.full((len(pts), 1), z), np.ones((len(pts), 1))], 1)
        uvd = uvd @ info['lidar2img'][0].T
        uv = uvd[uvd[:, 2] > 1, :2] / uvd[uvd[:, 2] > 1, 2:3]
        uv = np.round(uv[(uv[:, 0] >= 0) & (uv[:, 0] < w - 1) & (uv[:, 1] >= 0)
                         & (uv[:, 1] < h - 1)]).astype(int)
        vals.append(img[uv[:, 1], uv[:, 0]])
    return np.concatenate(vals) if vals else np.zeros(0)


@pytest.mark.slow
def test_gt_divider_projects_onto_marking(synthetic_root):
    """GT dividers projected with the info's lidar2img land on the painted markings: the
    pixels under them are clearly brighter than under the same lines moved 0.8 m aside."""
    import mmcv
    for split in ('train', 'val'):
        ds = NuScenesMapDataset(ann_file=f'nuscenes_map_infos_{split}.pkl',
                                data_root=synthetic_root)
        for idx in range(len(ds)):
            info = ds.get_data_info(idx)
            img = mmcv.imread(info['img_path'][0], 'grayscale').astype(np.float32)
            on = _divider_brightness(info, img, 0.0)
            off = np.concatenate([_divider_brightness(info, img, d) for d in (-0.8, 0.8)])
            assert len(on) > 50, f'{info["token"]}: no divider in view of CAM_FRONT'
            assert on.mean() > off.mean() + 15, (info['token'], on.mean(), off.mean())


@pytest.mark.slow
def test_infos_contract_and_parallel_determinism(synthetic_root, tmp_path):
    """Infos follow docs/data_format.md; in-process and 2-worker conversions agree."""
    import mmengine

    from projects.MapLLaVA.mapllava.datasets.map_gt import CAMERAS, create_nuscenes_map_infos
    paths = create_nuscenes_map_infos(synthetic_root, 'v1.0-mini', out_dir=str(tmp_path),
                                      workers=1)
    for split, path in paths.items():
        ours = mmengine.load(path)
        ref = mmengine.load(os.path.join(synthetic_root, f'nuscenes_map_infos_{split}.pkl'))
        assert ours['metainfo'] == ref['metainfo'] == dict(
            classes=('divider', 'ped_crossing', 'boundary'), roi_size=(30., 60.),
            version='v1.0-mini', dataset='nuscenes', info_version=2, qa_version=1)
        assert [e['token'] for e in ours['data_list']] == [e['token'] for e in ref['data_list']]
        for a, b in zip(ours['data_list'], ref['data_list']):
            assert list(a['images']) == list(CAMERAS)
            cam = a['images']['CAM_FRONT']
            k4 = np.eye(4)
            k4[:3, :3] = cam['cam2img']
            assert np.allclose(cam['lidar2img'], k4 @ cam['lidar2cam'])
            assert a['ego2global'].shape == a['lidar2ego'].shape == (4, 4)
            assert not os.path.isabs(a['lidar_points']['lidar_path'])
            for key in ('labels', 'vectors_resampled', 'bboxes', 'is_closed'):
                assert np.array_equal(a['map_annos'][key], b['map_annos'][key])
            assert all(np.array_equal(u, v) for u, v in zip(a['map_annos']['vectors'],
                                                              b['map_annos']['vectors']))


@pytest.mark.slow
def test_converter_bad_input(synthetic_root, tmp_path):
    """Broken copies of the synthetic tables / maps fail with errors naming the culprit."""
    import json
    import shutil

    from projects.MapLLaVA.mapllava.datasets.map_gt import (
        MapFormatError,
        create_nuscenes_map_infos,
    )

    def broken_copy(name):
        root = tmp_path / name
        shutil.copytree(synthetic_root, root, ignore=shutil.ignore_patterns(
            'samples', 'sweeps', '*.pkl'))
        return root

    def convert(root):
        return create_nuscenes_map_infos(str(root), 'v1.0-mini', workers=1)

    root = broken_copy('location')
    logs = json.loads((root / 'v1.0-mini' / 'log.json').read_text())
    logs[0]['location'] = 'atlantis'
    (root / 'v1.0-mini' / 'log.json').write_text(json.dumps(logs))
    with pytest.raises(ValueError, match="unknown map location 'atlantis'"):
        convert(root)

    root = broken_copy('table')
    sds = json.loads((root / 'v1.0-mini' / 'sample_data.json').read_text())
    del sds[0]['ego_pose_token']
    (root / 'v1.0-mini' / 'sample_data.json').write_text(json.dumps(sds))
    with pytest.raises(MapFormatError, match='ego_pose_token'):
        convert(root)

    root = broken_copy('expansion')
    for f in (root / 'maps' / 'expansion').iterdir():
        f.unlink()
    with pytest.raises(FileNotFoundError, match=str(root / 'maps' / 'expansion')):
        convert(root)
    assert not list(root.glob('*.pkl'))  # nothing half-written
