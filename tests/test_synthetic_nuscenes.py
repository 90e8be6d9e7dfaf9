"""The synthetic nuScenes generator: the unmodified devkit loads its output, the output is
deterministic, images agree with the map geometry, and bad output folders are refused."""
from __future__ import annotations

import filecmp
import json
import os

import numpy as np
import pytest
from nuscenes.map_expansion.map_api import NuScenesMap
from nuscenes.nuscenes import NuScenes
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import view_points
from nuscenes.utils.splits import create_splits_scenes
from PIL import Image
from pyquaternion import Quaternion

from projects.MapLLaVA.mapllava.datasets.synthetic import (
    CAMERAS,
    LOCATIONS,
    MARKER,
    GeneratorConfig,
    OutputFolderError,
    generate,
)
from projects.MapLLaVA.mapllava.datasets.synthetic import generator as generator_module
from projects.MapLLaVA.mapllava.datasets.synthetic.capture import network
from projects.MapLLaVA.mapllava.datasets.synthetic.scenes import scene_names
from projects.MapLLaVA.mapllava.datasets.synthetic.tables import TABLE_NAMES
from projects.MapLLaVA.mapllava.datasets.synthetic.traffic import plan_scene
from tools.create_synthetic_nuscenes import main as cli_main

VERSION = 'v1.0-mini'


def _config(out) -> GeneratorConfig:
    return GeneratorConfig(out=str(out), version=VERSION, seed=3, scenes=2, samples_per_scene=2,
                           image_scale=0.2, sweeps=1, workers=1)


@pytest.fixture(scope='module')
def dataroot(tmp_path_factory) -> str:
    return generate(_config(tmp_path_factory.mktemp('synth') / 'nuscenes'), progress=False)


@pytest.fixture(scope='module')
def nusc(dataroot) -> NuScenes:
    return NuScenes(VERSION, dataroot, verbose=False)


def test_devkit_loads_all_tables(dataroot, nusc):
    assert sorted(os.listdir(os.path.join(dataroot, VERSION))) == \
        sorted(f'{t}.json' for t in TABLE_NAMES)
    assert len(nusc.scene) == 2 and len(nusc.sample) == 4
    assert {m['filename'].split('/')[0] for m in nusc.map} == {'maps'}
    assert {log['location'] for log in nusc.log} <= set(LOCATIONS)
    for scene in nusc.scene:
        tokens, tok = [], scene['first_sample_token']
        while tok:
            tokens.append(tok)
            tok = nusc.get('sample', tok)['next']
        assert len(tokens) == scene['nbr_samples'] and tokens[-1] == scene['last_sample_token']
        for tok in tokens:
            sample = nusc.get('sample', tok)
            assert set(sample['data']) == set(CAMERAS) | {'LIDAR_TOP'}
            assert sample['timestamp'] == nusc.get('sample_data',
                                                   sample['data']['LIDAR_TOP'])['timestamp']
    assert len(nusc.sample_annotation) > 0
    for ann in nusc.sample_annotation:
        if ann['next']:
            assert nusc.get('sample_annotation', ann['next'])['prev'] == ann['token']


def test_splits_select_generated_scenes(nusc):
    splits = create_splits_scenes()
    names = [s['name'] for s in nusc.scene]
    assert sum(n in splits['mini_train'] for n in names) == 1
    assert sum(n in splits['mini_val'] for n in names) == 1


def test_sample_data_files_match_calibration(nusc):
    sample = nusc.sample[-1]
    for channel, token in sample['data'].items():
        path, _, intrinsic = nusc.get_sample_data(token)
        assert os.path.isfile(path)
        sd = nusc.get('sample_data', token)
        cs = nusc.get('calibrated_sensor', sd['calibrated_sensor_token'])
        if channel == 'LIDAR_TOP':
            points = LidarPointCloud.from_file(path).points
            assert points.shape[0] == 4 and points.shape[1] > 1000
            yaw = Quaternion(cs['rotation']).yaw_pitch_roll[0]
            assert yaw == pytest.approx(-np.pi / 2) and 1.7 < cs['translation'][2] < 2.0
            sweep = nusc.get('sample_data', sd['prev'])   # the sweep before the keyframe
            assert not sweep['is_key_frame'] and os.path.isfile(nusc.get_sample_data_path(
                sweep['token']))
        else:
            assert Image.open(path).size == (sd['width'], sd['height']) == (320, 180)
            assert intrinsic[0, 2] == pytest.approx(sd['width'] / 2, rel=0.1)
            assert intrinsic[0, 0] == pytest.approx((809 if channel == 'CAM_BACK' else 1266)
                                                    * 0.2, rel=0.02)


def test_maps_load_with_devkit(dataroot, nusc):
    for location in LOCATIONS:
        nmap = NuScenesMap(dataroot, location)
        assert nmap.lane and nmap.lane_divider and nmap.road_divider and nmap.ped_crossing
    log = nusc.get('log', nusc.scene[0]['log_token'])
    nmap = NuScenesMap(dataroot, log['location'])
    pose = nusc.get('ego_pose', nusc.get('sample_data',
                                         nusc.sample[0]['data']['LIDAR_TOP'])['ego_pose_token'])
    x, y = pose['translation'][:2]
    assert nusc.get('map', log['map_token'])['mask'].is_on_mask(x, y)[0]
    lane = nmap.get_closest_lane(x, y, radius=3)
    assert lane
    poses = np.array(nmap.discretize_lanes([lane], 0.5)[lane])
    assert np.min(np.hypot(poses[:, 0] - x, poses[:, 1] - y)) < 0.5   # ego drives on the lane
    assert nmap.get_arcline_path(lane) and nmap.get_outgoing_lane_ids(lane)
    connector = nmap.get_outgoing_lane_ids(lane)[0]
    assert connector in {c['token'] for c in nmap.lane_connector}
    start = np.array(nmap.discretize_lanes([connector], 0.5)[connector][0][:2])
    assert np.linalg.norm(start - poses[-1, :2]) < 1e-3               # lanes chain up
    near = nmap.get_records_in_patch((x - 30, y - 30, x + 30, y + 30),
                                     ['lane_divider', 'road_divider', 'lane'])
    assert all(near.values())


def _project(nusc, cam_token, xy):
    """Devkit projection of global ground points into a camera image: (uv, depth)."""
    sd = nusc.get('sample_data', cam_token)
    cs = nusc.get('calibrated_sensor', sd['calibrated_sensor_token'])
    pose = nusc.get('ego_pose', sd['ego_pose_token'])
    pts = np.vstack([xy.T, np.zeros(len(xy))])
    pts = Quaternion(pose['rotation']).inverse.rotation_matrix @ (
        pts - np.array(pose['translation'])[:, None])
    pts = Quaternion(cs['rotation']).inverse.rotation_matrix @ (
        pts - np.array(cs['translation'])[:, None])
    uv = view_points(pts, np.array(cs['camera_intrinsic']), normalize=True)[:2].T
    return uv, pts[2]


def _marking_rates(nusc, sample, point_sets):
    """Share of the points of each set that land on paint in the sample's images.

    Each set is ``(N, 3, 2)``: a ground point with its neighbours 0.1 m to either side (a double
    yellow line is centred on its map line). A point counts as paint when any of the three,
    within one pixel, is much brighter than the road (measured at the 'centre' set) or, for the
    'yellow' set, clearly yellow.
    """
    hits = {name: [] for name in point_sets}
    for channel in CAMERAS:
        token = sample['data'][channel]
        path, boxes, intrinsic = nusc.get_sample_data(token)
        img = np.asarray(Image.open(path), dtype=np.float32)
        h, w = img.shape[:2]
        # Annotated objects (vehicles, pedestrians) may hide the road: skip points behind them.
        occluders = []
        for box in boxes:
            corners = box.corners()
            if (corners[2] > 0.1).all():
                uv = view_points(corners, intrinsic, normalize=True)[:2]
                occluders.append((*uv.min(1), *uv.max(1), corners[2].min()))
        bright = img.mean(-1)
        yellow = (img[..., 0] + img[..., 1]) / 2 - img[..., 2]
        values = {}
        for name, pts in point_sets.items():
            uv, depth = _project(nusc, token, pts.reshape(-1, 2))
            uv, depth = uv.reshape(-1, 3, 2), depth.reshape(-1, 3)
            ok = ((depth > 4) & (depth < 25) & (uv[..., 0] > 2) & (uv[..., 0] < w - 3) &
                  (uv[..., 1] > 2) & (uv[..., 1] < h - 3)).all(1)
            for u0, v0, u1, v1, near in occluders:
                ok &= ~((uv[:, 1, 0] >= u0 - 1) & (uv[:, 1, 0] <= u1 + 1) &
                        (uv[:, 1, 1] >= v0 - 1) & (uv[:, 1, 1] <= v1 + 1) & (depth[:, 1] > near))
            cols, rows = np.round(uv[ok]).astype(int).transpose(2, 0, 1)
            win = [(rows + dr, cols + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
            values[name] = (np.max([bright[r, c] for r, c in win], axis=(0, 2)),
                            np.max([yellow[r, c] for r, c in win], axis=(0, 2)))
        if len(values['centre'][0]) < 5:
            continue
        road = np.median(values['centre'][0])
        for name, (b, yl) in values.items():
            hits[name] += list(yl > 50) if name == 'yellow' else list((b > road + 35) | (yl > 50))
    return {k: float(np.mean(v)) for k, v in hits.items()}


def _with_sides(poses):
    """(N, >=3) x, y, yaw -> (N, 3, 2): 0.1 m left of, on, and 0.1 m right of the line."""
    poses = np.asarray(poses, dtype=np.float64)
    normal = np.stack([-np.sin(poses[:, 2]), np.cos(poses[:, 2])], axis=1)
    xy = poses[:, :2]
    return np.stack([xy + 0.1 * normal, xy, xy - 0.1 * normal], axis=1)


def _line_poses(line, step=0.25):
    pts = np.array([line.interpolate(d).coords[0] for d in np.arange(0.0, line.length, step)])
    heading = np.arctan2(*np.gradient(pts, axis=0).T[::-1])
    return np.column_stack([pts, heading])


def test_images_show_map_markings_where_the_map_says(dataroot, nusc):
    """Lane/road dividers from NuScenesMap, projected with the devkit calibration, land on
    painted pixels far more often than lane centres do."""
    sample = nusc.sample[1]
    log = nusc.get('log', nusc.get('scene', sample['scene_token'])['log_token'])
    nmap = NuScenesMap(dataroot, log['location'])
    pose = nusc.get('ego_pose', nusc.get('sample_data',
                                         sample['data']['LIDAR_TOP'])['ego_pose_token'])
    x, y = pose['translation'][:2]
    rec = nmap.get_records_in_patch((x - 40, y - 40, x + 40, y + 40),
                                    ['lane_divider', 'road_divider', 'lane'])
    sets = {}
    for layer, name in (('lane_divider', 'divider'), ('road_divider', 'yellow')):
        sets[name] = np.concatenate([
            _with_sides(_line_poses(nmap.extract_line(nmap.get(layer, t)['line_token'])))
            for t in rec[layer]])
    sets['divider'] = np.concatenate([sets['divider'], sets['yellow']])
    sets['centre'] = _with_sides([p for poses in nmap.discretize_lanes(rec['lane'], 0.5).values()
                                  for p in poses[14:-14]])   # away from the zebra crossings
    rates = _marking_rates(nusc, sample, sets)
    assert rates['divider'] > 0.5, rates
    assert rates['yellow'] > 0.8, rates
    assert rates['centre'] < 0.1 and rates['divider'] > 5 * rates['centre'], rates


def test_generation_is_deterministic(dataroot, tmp_path):
    again = generate(_config(tmp_path / 'again'), progress=False)
    cmp = filecmp.dircmp(dataroot, again)
    assert not cmp.left_only and not cmp.right_only
    for sub in [VERSION, 'maps/expansion', 'samples/CAM_FRONT', 'samples/LIDAR_TOP',
                'sweeps/LIDAR_TOP']:
        files = sorted(os.listdir(os.path.join(dataroot, sub)))
        assert files == sorted(os.listdir(os.path.join(again, sub)))
        match, mismatch, errors = filecmp.cmpfiles(os.path.join(dataroot, sub),
                                                   os.path.join(again, sub), files, shallow=False)
        assert not mismatch and not errors, (sub, mismatch, errors)


def test_same_arguments_reuse_previous_output(dataroot):
    stamp = os.path.getmtime(os.path.join(dataroot, MARKER))
    assert generate(_config(dataroot), progress=False) == dataroot
    assert os.path.getmtime(os.path.join(dataroot, MARKER)) == stamp


def test_refuses_foreign_non_empty_out(tmp_path, capsys):
    out = tmp_path / 'precious'
    out.mkdir()
    (out / 'keep.txt').write_text('not a dataset')
    with pytest.raises(OutputFolderError, match='not written by this tool'):
        generate(_config(out), progress=False)
    assert cli_main(['--out', str(out), '--scenes', '1', '--samples-per-scene', '1']) == 2
    assert 'refusing' in capsys.readouterr().err
    assert os.listdir(out) == ['keep.txt'] and os.listdir(tmp_path) == ['precious']


def test_failure_leaves_no_partial_dataset(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError('disk full')

    monkeypatch.setattr(generator_module, 'write_map', broken)
    with pytest.raises(RuntimeError, match='disk full'):
        generate(_config(tmp_path / 'nuscenes'), progress=False)
    assert os.listdir(tmp_path) == []


def test_bad_version_and_sizes_are_rejected(tmp_path):
    with pytest.raises(ValueError, match='unknown version'):
        generate(GeneratorConfig(out=str(tmp_path / 'a'), version='v2.0-mini'), progress=False)
    with pytest.raises(ValueError, match='has 1..10 scenes'):
        generate(GeneratorConfig(out=str(tmp_path / 'a'), scenes=11), progress=False)
    with pytest.raises(ValueError, match='image_scale'):
        generate(GeneratorConfig(out=str(tmp_path / 'a'), image_scale=2.0), progress=False)
    with pytest.raises(SystemExit):
        cli_main(['--out', str(tmp_path / 'a'), '--version', 'v9'])
    assert os.listdir(tmp_path) == []


def test_marker_records_arguments(dataroot):
    with open(os.path.join(dataroot, MARKER)) as f:
        marker = json.load(f)
    assert marker['version'] == VERSION and marker['scenes'] == 2 and marker['seed'] == 3


def test_val_scenes_add_val_scenes_and_keep_the_others():
    """Scene i is planned from seed i, so a larger val split leaves every train scene as is."""
    default = scene_names('v1.0-trainval', 40)
    more_val = scene_names('v1.0-trainval', 48, val_scenes=16)
    val = create_splits_scenes()['val']
    assert more_val[:32] == default[:32] and more_val[32:40] == default[32:]
    assert more_val[32:] == val[:16]
    assert scene_names('v1.0-trainval', 10, val_scenes=0) == create_splits_scenes()['train'][:10]
    with pytest.raises(ValueError, match='val_scenes must be in 0..10'):
        scene_names('v1.0-trainval', 10, val_scenes=11)
    with pytest.raises(ValueError, match='has 8 train scenes'):
        scene_names('v1.0-mini', 10, val_scenes=1)
    with pytest.raises(ValueError, match='v1.0-test has no val split'):
        scene_names('v1.0-test', 4, val_scenes=2)
    assert scene_names('v1.0-test', 4, val_scenes=0) == scene_names('v1.0-test', 4)


def test_start_span_moves_only_where_the_ego_starts():
    net = network('boston-seaport', 0)
    starts = {}
    for span in (0.5, 1.0):
        plans = [plan_scene(net, 2.0, np.random.default_rng([0, i, 1]), span) for i in range(40)]
        lengths = [net.lanes[p.ego.route.lane_ids[0]].path.length for p in plans]
        fractions = [p.ego.s0 / n for p, n in zip(plans, lengths)]
        assert max(fractions) <= span
        starts[span] = [(p.ego.route.lane_ids[0], p.ego.speed) for p in plans], fractions
    assert starts[0.5][0] == starts[1.0][0]          # same lanes and speeds
    assert max(starts[1.0][1]) > 0.5                 # and some scenes now start further on
    np.testing.assert_allclose(starts[1.0][1], 2 * np.asarray(starts[0.5][1]))
    with pytest.raises(ValueError, match='start_span must be in'):
        generate(GeneratorConfig(out='unused', start_span=0.0), progress=False)


def test_marker_records_new_arguments_only_when_set(tmp_path):
    base = GeneratorConfig(out=str(tmp_path), version='v1.0-trainval', scenes=40)
    assert 'start_span' not in base.content_args() and 'val_scenes' not in base.content_args()
    args = GeneratorConfig(out=str(tmp_path), version='v1.0-trainval', scenes=48, val_scenes=16,
                           start_span=1.0).content_args()
    assert args['start_span'] == 1.0 and args['val_scenes'] == 16 and args['scenes'] == 48
