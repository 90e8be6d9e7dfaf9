"""Create MapLLaVA info files (vector-map GT cache).

Example:
    python tools/create_data.py nuscenes --root-path data/nuscenes --version v1.0-mini \
        --out-dir data/nuscenes --workers 4
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from projects.MapLLaVA.mapllava.datasets.map_gt import create_nuscenes_map_infos  # noqa: E402


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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    create_nuscenes_map_infos(
        args.root_path, args.version, out_dir=args.out_dir, extra_tag=args.extra_tag,
        workers=args.workers, roi_size=tuple(args.roi), with_centerline=args.with_centerline,
        max_sweeps=args.max_sweeps)


if __name__ == '__main__':
    main()
