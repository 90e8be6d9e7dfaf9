"""Build ``nuscenes_map_infos_{split}.pkl`` (docs/data_format.md) from a devkit ``NuScenes``.

Poses and camera geometry are read in the main process; the map GT of each sample is
computed by worker processes (the maps are indexed once before forking, so workers share
them), with a tqdm bar. The language targets (``datasets/map_qa.py``) follow from the map GT
in the main process (about 2 ms a sample). Files are written atomically (temporary file +
``os.replace``).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import time
from collections.abc import Sequence

import numpy as np
from nuscenes import NuScenes
from nuscenes.map_expansion.map_api import locations as MAP_LOCATIONS
from nuscenes.utils.splits import create_splits_scenes
from pyquaternion import Quaternion
from tqdm import tqdm

from ...utils.safe_pickle import load_data_file
from ..map_qa import QA_VERSION, build_map_qa
from .vectorized_local_map import (
    MAP_CLASSES,
    MAP_CLASSES_WITH_CENTERLINE,
    MapFormatError,
    VectorizedLocalMap,
    load_nusc_map,
)

CAMERAS = ('CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_FRONT_LEFT', 'CAM_BACK', 'CAM_BACK_LEFT',
           'CAM_BACK_RIGHT')
#: 2: the polygon unions drop round-off rings (geometry.MIN_RING_AREA); version-1 infos of
#: maps whose polygons meet only up to round-off hold extra, CPU-dependent boundaries
INFO_VERSION = 2
#: info split name -> devkit split name, per nuScenes version
VERSION_SPLITS = {
    'v1.0-mini': {'train': 'mini_train', 'val': 'mini_val'},
    'v1.0-trainval': {'train': 'train', 'val': 'val'},
    'v1.0-test': {'test': 'test'},
}
NO_GT_SPLITS = ('test',)


def _pose(record: dict) -> np.ndarray:
    """4x4 float64 transform of a ``calibrated_sensor`` / ``ego_pose`` record."""
    mat = np.eye(4)
    mat[:3, :3] = Quaternion(record['rotation']).rotation_matrix
    mat[:3, 3] = record['translation']
    return mat


def _sensor2global(nusc: NuScenes, sd: dict) -> np.ndarray:
    cs = nusc.get('calibrated_sensor', sd['calibrated_sensor_token'])
    return _pose(nusc.get('ego_pose', sd['ego_pose_token'])) @ _pose(cs)


def _camera_entry(nusc: NuScenes, sd: dict, lidar2global: np.ndarray) -> dict:
    cs = nusc.get('calibrated_sensor', sd['calibrated_sensor_token'])
    cam2ego = _pose(cs)
    cam2global = _pose(nusc.get('ego_pose', sd['ego_pose_token'])) @ cam2ego
    lidar2cam = np.linalg.inv(cam2global) @ lidar2global
    cam2img = np.asarray(cs['camera_intrinsic'], dtype=np.float64)
    if cam2img.shape != (3, 3):
        raise MapFormatError(f'calibrated_sensor {cs["token"]}: camera_intrinsic must be 3x3, '
                             f'got shape {cam2img.shape}')
    cam2img4 = np.eye(4)
    cam2img4[:3, :3] = cam2img
    return dict(img_path=sd['filename'], cam2img=cam2img, lidar2cam=lidar2cam, cam2ego=cam2ego,
                lidar2img=cam2img4 @ lidar2cam, sample_data_token=sd['token'],
                timestamp=sd['timestamp'], height=sd['height'], width=sd['width'])


def sample_entry(nusc: NuScenes, sample: dict, sample_idx: int, max_sweeps: int = 10) -> dict:
    """Everything of an info entry but ``map_annos``."""
    try:
        scene = nusc.get('scene', sample['scene_token'])
        log = nusc.get('log', scene['log_token'])
        lidar_sd = nusc.get('sample_data', sample['data']['LIDAR_TOP'])
        lidar2ego = _pose(nusc.get('calibrated_sensor', lidar_sd['calibrated_sensor_token']))
        ego2global = _pose(nusc.get('ego_pose', lidar_sd['ego_pose_token']))
        lidar2global = ego2global @ lidar2ego
        images = {}
        for cam in CAMERAS:
            if cam not in sample['data']:
                raise MapFormatError(f'sample {sample["token"]} has no {cam} sample_data')
            sd = nusc.get('sample_data', sample['data'][cam])
            images[cam] = _camera_entry(nusc, sd, lidar2global)
        sweeps, sd = [], lidar_sd
        while len(sweeps) < max_sweeps and sd['prev']:
            sd = nusc.get('sample_data', sd['prev'])
            sweeps.append(dict(
                lidar_path=sd['filename'], timestamp=sd['timestamp'],
                lidar2lidar=np.linalg.inv(lidar2global) @ _sensor2global(nusc, sd)))
    except KeyError as e:
        raise MapFormatError(f'malformed nuScenes tables under {nusc.table_root}: sample '
                             f'{sample.get("token")} misses field/record {e}') from e
    return dict(
        token=sample['token'], sample_idx=sample_idx, scene_token=scene['token'],
        scene_name=scene['name'], location=log['location'], timestamp=sample['timestamp'],
        ego2global=ego2global, lidar2ego=lidar2ego,
        lidar_points=dict(lidar_path=lidar_sd['filename'], num_pts_feats=5),
        lidar_sweeps=sweeps, images=images)


# --------------------------------------------------------------------- map GT in workers
_WORKER_MAPS: dict[str, VectorizedLocalMap] = {}
_WORKER_CFG: dict = {}


def _init_worker(cfg: dict, maps: dict[str, VectorizedLocalMap]) -> None:
    if cfg != _WORKER_CFG:  # another root / ROI: the cached maps do not apply
        _WORKER_MAPS.clear()
        _WORKER_CFG.clear()
        _WORKER_CFG.update(cfg)
    _WORKER_MAPS.update(maps)


def _local_map(location: str) -> VectorizedLocalMap:
    if location not in _WORKER_MAPS:
        cfg = _WORKER_CFG
        _WORKER_MAPS[location] = VectorizedLocalMap(
            load_nusc_map(cfg['dataroot'], location), roi_size=cfg['roi_size'],
            with_centerline=cfg['with_centerline'], num_resample=cfg['num_resample'])
    return _WORKER_MAPS[location]


def _map_annos_job(job: tuple[str, np.ndarray]) -> dict:
    location, lidar2global = job
    return _local_map(location).extract(lidar2global)


def index_maps(locations: Sequence[str], cfg: dict) -> float:
    """Load and index the maps of ``locations`` in this process; returns the seconds."""
    t0 = time.perf_counter()
    _init_worker(cfg, {})
    for location in locations:
        _local_map(location)
    return time.perf_counter() - t0


def compute_map_annos(jobs: Sequence[tuple[str, np.ndarray]], cfg: dict, workers: int,
                      desc: str = 'map GT') -> list[dict]:
    """``map_annos`` for each (location, lidar2global) job, in order.

    The maps are indexed in this process first (see :func:`index_maps`), so a bad map
    fails fast and forked workers inherit the index instead of re-reading the JSON.
    """
    index_maps(sorted({loc for loc, _ in jobs}), cfg)
    if workers <= 1 or len(jobs) < 2:
        return [_map_annos_job(j) for j in tqdm(jobs, desc=desc)]
    fork = 'fork' in mp.get_all_start_methods()
    ctx = mp.get_context('fork' if fork else 'spawn')
    maps = dict(_WORKER_MAPS) if fork else {}
    chunksize = max(1, min(32, len(jobs) // (workers * 4)))
    with ctx.Pool(workers, initializer=_init_worker, initargs=(cfg, maps)) as pool:
        return list(tqdm(pool.imap(_map_annos_job, jobs, chunksize=chunksize),
                         total=len(jobs), desc=desc))


# --------------------------------------------------------------------- language targets
def add_language(entries: Sequence[dict], classes: Sequence[str], source: str) -> int:
    """Set ``language`` (questions and answers) of every entry that has ``map_annos``.

    Returns:
        the number of entries given language targets.
    """
    done = 0
    for entry in entries:
        if 'map_annos' not in entry:
            continue
        try:
            entry['language'] = build_map_qa(entry['map_annos'], classes)
        except ValueError as e:
            raise ValueError(f'{source}: sample {entry.get("token")!r}: {e}') from e
        done += 1
    return done


def add_language_targets(info_path: str, out_path: str | None = None) -> int:
    """(Re)compute the ``language`` of an existing info ``.pkl`` from its ``map_annos``.

    Old infos gain questions without recomputing the map GT; the file is replaced atomically
    (``out_path`` defaults to ``info_path``), and only once every entry succeeded.

    Returns:
        the number of entries given language targets.
    """
    if os.path.splitext(info_path)[1].lower() not in ('.pkl', '.pickle'):
        raise ValueError(f'{info_path}: language targets are added to .pkl info files only')
    if not os.path.isfile(info_path):
        raise FileNotFoundError(f'info file not found: {info_path}')
    infos = load_data_file(info_path)  # .pkl: builtins and numpy arrays only
    if not isinstance(infos, dict) or not {'metainfo', 'data_list'} <= set(infos):
        raise ValueError(f'{info_path}: expected dict(metainfo=..., data_list=[...])')
    classes = tuple(infos['metainfo'].get('classes', MAP_CLASSES))
    done = add_language(infos['data_list'], classes, info_path)
    infos['metainfo']['qa_version'] = QA_VERSION
    dump_atomic(infos, out_path or info_path)
    return done


# --------------------------------------------------------------------- whole conversion
def load_nuscenes(root_path: str, version: str) -> NuScenes:
    """``NuScenes`` with errors naming the missing folder / the malformed table."""
    if not os.path.isdir(root_path):
        raise FileNotFoundError(f'nuScenes data root not found: {root_path}')
    table_root = os.path.join(root_path, version)
    if not os.path.isdir(table_root):
        raise FileNotFoundError(f'nuScenes version folder not found: {table_root}')
    try:
        return NuScenes(version=version, dataroot=root_path, verbose=False)
    except KeyError as e:
        raise MapFormatError(f'malformed nuScenes table under {table_root}: missing field or '
                             f'record {e}') from e
    except AssertionError as e:  # the devkit asserts that the map-mask pngs exist
        raise FileNotFoundError(str(e)) from e


def dump_atomic(obj: object, path: str) -> None:
    """Pickle to ``path`` via a temporary file so readers never see a partial file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        with open(tmp, 'wb') as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def create_nuscenes_map_infos(root_path: str, version: str = 'v1.0-mini',
                              out_dir: str | None = None, extra_tag: str = 'nuscenes_map',
                              workers: int = 4, roi_size: Sequence[float] = (30., 60.),
                              with_centerline: bool = False, num_resample: int = 20,
                              max_sweeps: int = 10) -> dict[str, str]:
    """Write ``{extra_tag}_infos_{split}.pkl`` for the splits of ``version``.

    Returns:
        split name -> written path. Throughput is printed per split.
    """
    if version not in VERSION_SPLITS:
        raise ValueError(f'unknown nuScenes version {version!r}; one of {list(VERSION_SPLITS)}')
    nusc = load_nuscenes(root_path, version)
    devkit_splits = create_splits_scenes()
    scene_split = {name: split for split, dk in VERSION_SPLITS[version].items()
                   for name in devkit_splits[dk]}
    present = {s['name'] for s in nusc.scene}
    if not present & set(scene_split):
        raise ValueError(f'none of the {len(present)} scenes under {root_path}/{version} is in '
                         f'the devkit {version} splits {list(VERSION_SPLITS[version].values())}')
    samples = {split: [] for split in VERSION_SPLITS[version]}
    for sample in nusc.sample:  # table order: deterministic
        scene = nusc.get('scene', sample['scene_token'])
        if scene['name'] in scene_split:
            samples[scene_split[scene['name']]].append(sample)
    roi_size = (float(roi_size[0]), float(roi_size[1]))
    classes = MAP_CLASSES_WITH_CENTERLINE if with_centerline else MAP_CLASSES
    cfg = dict(dataroot=root_path, roi_size=roi_size, with_centerline=with_centerline,
               num_resample=num_resample)
    out_dir = out_dir or root_path
    gt_locations = set()
    for split, split_samples in samples.items():
        for scene_token in dict.fromkeys(s['scene_token'] for s in split_samples):
            scene = nusc.get('scene', scene_token)
            location = nusc.get('log', scene['log_token'])['location']
            if location not in MAP_LOCATIONS:
                raise ValueError(f'{scene["name"]}: log {scene["log_token"]} has unknown map '
                                 f'location {location!r}; nuScenes maps: {MAP_LOCATIONS}')
            if split not in NO_GT_SPLITS:
                gt_locations.add(location)
    gt_locations = sorted(gt_locations)
    if gt_locations:
        print(f'indexed maps {gt_locations} in {index_maps(gt_locations, cfg):.1f}s')
    written = {}
    for split, split_samples in samples.items():
        t0 = time.perf_counter()
        entries = [sample_entry(nusc, s, i, max_sweeps) for i, s in enumerate(split_samples)]
        if split not in NO_GT_SPLITS:
            jobs = [(e['location'], e['ego2global'] @ e['lidar2ego']) for e in entries]
            for entry, annos in zip(entries, compute_map_annos(jobs, cfg, workers, split)):
                entry['map_annos'] = annos
        path = os.path.join(out_dir, f'{extra_tag}_infos_{split}.pkl')
        add_language(entries, classes, path)
        dt = time.perf_counter() - t0
        dump_atomic(dict(metainfo=dict(classes=classes, roi_size=roi_size, version=version,
                                       dataset='nuscenes', info_version=INFO_VERSION,
                                       qa_version=QA_VERSION),
                         data_list=entries), path)
        print(f'{split}: {len(entries)} samples in {dt:.1f}s '
              f'({len(entries) / max(dt, 1e-9):.1f} samples/s, {workers} workers) -> {path}')
        written[split] = path
    return written
