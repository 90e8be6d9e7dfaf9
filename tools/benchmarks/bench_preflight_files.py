"""Time preflight's ``files`` check on a nuScenes-train-sized info file (28130 samples).

    .venv/bin/python tools/benchmarks/bench_preflight_files.py [--samples 28130]
        [--source data/nuscenes/nuscenes_map_infos_train.pkl] [--workers 8] [--decode-images]

The info file is the source infos repeated to ``--samples`` entries (written to a temporary
folder, nothing is added to the data): copy ``k`` names every file with ``k`` extra ``./``
path components, so each of the ~200k paths is distinct to the check (which skips paths it
has seen) while no new file is written. The files are then warm in the page cache: the
figure is the check's own cost per file, a lower bound for a cold disk or a network store.
The pipeline reads the 6 cameras and the LiDAR sweep, like the ``-lidar`` configs.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import os.path as osp
import sys
import tempfile
import time

REPO_ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
sys.path.insert(0, REPO_ROOT)

from mmdet3d.registry import DATASETS  # noqa: E402
from mmengine.config import Config  # noqa: E402

import projects.MapLLaVA.mapllava  # noqa: E402,F401  (registers the dataset and transforms)
from projects.MapLLaVA.mapllava.datasets.map_gt import dump_atomic  # noqa: E402
from projects.MapLLaVA.mapllava.utils.safe_pickle import load_data_file  # noqa: E402


def _preflight():
    spec = importlib.util.spec_from_file_location('preflight', osp.join(REPO_ROOT, 'tools',
                                                                       'preflight.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _copy(entry: dict, k: int) -> dict:
    dots = './' * k
    entry = copy.deepcopy(entry)  # a full-size file: pickle would share repeated arrays
    return dict(entry, token=f'{entry["token"]}-{k}',
                images={cam: dict(c, img_path=dots + c['img_path'])
                        for cam, c in entry['images'].items()},
                lidar_points=dict(entry['lidar_points'],
                                  lidar_path=dots + entry['lidar_points']['lidar_path']))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--samples', type=int, default=28130)
    parser.add_argument('--source', default='data/nuscenes/nuscenes_map_infos_train.pkl')
    parser.add_argument('--workers', type=int, default=8)
    parser.add_argument('--decode-images', action='store_true')
    args = parser.parse_args()
    infos = load_data_file(args.source)
    base = infos['data_list']
    entries = [_copy(base[i % len(base)], i // len(base)) for i in range(args.samples)]
    root = osp.abspath(osp.dirname(args.source))
    with tempfile.TemporaryDirectory() as tmp:
        ann = osp.join(tmp, 'infos.pkl')
        dump_atomic(dict(metainfo=infos['metainfo'], data_list=entries), ann)
        print(f'{args.samples} samples ({len(base)} distinct) in {ann}: '
              f'{os.path.getsize(ann) / 2 ** 20:.0f} MiB')
        dataset = dict(type='NuScenesMapDataset', data_root=root, ann_file=ann,
                       pipeline=[dict(type='LoadPointsFromFile', coord_type='LIDAR',
                                      load_dim=5, use_dim=5),
                                 dict(type='LoadMultiViewImages')])
        cfg = Config(dict(train_dataloader=dict(dataset=dataset)))
        t0 = time.perf_counter()
        DATASETS.build(dict(dataset, pipeline=[], serialize_data=False))
        build = time.perf_counter() - t0
        preflight = _preflight()
        report = preflight.Report()
        t0 = time.perf_counter()
        preflight.check_files(cfg, report, decode=args.decode_images, workers=args.workers)
        total = time.perf_counter() - t0
    files = args.samples * (len(base[0]['images']) + 1)
    print(f'files check: {total:.1f} s for {args.samples} samples, {files} files '
          f'({(total - build) / files * 1e6:.0f} us per file after {build:.1f} s building '
          f'the dataset), {args.workers} threads, '
          + ('full image decode' if args.decode_images else 'headers and sizes'))


if __name__ == '__main__':
    main()
