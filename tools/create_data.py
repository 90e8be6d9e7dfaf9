"""Create MapLLaVA info files (vector-map GT cache).

Example:
    python tools/create_data.py nuscenes --root-path data/nuscenes --version v1.0-mini \
        --out-dir data/nuscenes --workers 4

Infos written before the language targets existed gain them (from their map GT, which is
kept) with ``--language-only``:
    python tools/create_data.py nuscenes --root-path data/nuscenes --language-only
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from projects.MapLLaVA.mapllava.datasets.map_gt import (  # noqa: E402
    add_language_targets,
    create_nuscenes_map_infos,
)
from projects.MapLLaVA.mapllava.datasets.map_gt.info_builder import VERSION_SPLITS  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('dataset', choices=['nuscenes'])
    parser.add_argument('--root-path', default='data/nuscenes', help='nuScenes data root')
    parser.add_argument('--version', default='v1.0-mini',
                        choices=['v1.0-mini', 'v1.0-trainval', 'v1.0-test'])
    parser.add_argument('--out-dir', default=None, help='defaults to --root-path')
    parser.add_argument('--workers', type=int, default=min(4, os.cpu_count() or 1),
                        help='map GT worker processes (0/1: in process)')
    parser.add_argument('--roi', type=float, nargs=2, default=(30., 60.), metavar=('X', 'Y'),
                        help='ROI extent in metres in the LiDAR frame (x right, y forward); '
                        'e.g. 30 60 (MapTR), 50 100, 102.4 102.4')
    parser.add_argument('--with-centerline', action='store_true',
                        help='add the 4th class "centerline"')
    parser.add_argument('--max-sweeps', type=int, default=10)
    parser.add_argument('--extra-tag', default='nuscenes_map')
    parser.add_argument('--language-only', action='store_true',
                        help='only (re)compute the language targets of the existing '
                        '{extra-tag}_infos_{split}.pkl in --out-dir from their map GT')
    return parser.parse_args(argv)


def add_language_only(out_dir: str, version: str, extra_tag: str) -> list[str]:
    """Rewrite the existing info files of ``version``'s splits with language targets."""
    paths = [os.path.join(out_dir, f'{extra_tag}_infos_{split}.pkl')
             for split in VERSION_SPLITS[version]]
    present = [p for p in paths if os.path.isfile(p)]
    if not present:
        raise FileNotFoundError(f'--language-only: none of the info files {paths} exists '
                                '(create them first, without --language-only)')
    for path in present:
        print(f'{path}: language targets for {add_language_targets(path)} samples')
    return present


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.language_only:
        add_language_only(args.out_dir or args.root_path, args.version, args.extra_tag)
        return
    create_nuscenes_map_infos(
        args.root_path, args.version, out_dir=args.out_dir, extra_tag=args.extra_tag,
        workers=args.workers, roi_size=tuple(args.roi), with_centerline=args.with_centerline,
        max_sweeps=args.max_sweeps)


if __name__ == '__main__':
    main()
