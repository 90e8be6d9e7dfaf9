"""Create a synthetic dataset in the nuScenes layout (tables, map expansion, images, lidar).

Example:
    python tools/create_synthetic_nuscenes.py --out data/nuscenes --version v1.0-mini --seed 0
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from projects.MapLLaVA.mapllava.datasets.synthetic import (  # noqa: E402
    VERSIONS,
    GeneratorConfig,
    OutputFolderError,
    generate,
)
from projects.MapLLaVA.mapllava.datasets.synthetic.traffic import (  # noqa: E402
    DEFAULT_START_SPAN,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default='data/nuscenes', help='dataset root to create')
    p.add_argument('--version', default='v1.0-mini', choices=sorted(VERSIONS))
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--scenes', type=int, default=None,
                   help='number of scenes (default: 10 for mini, 40 for trainval, 10 for test)')
    p.add_argument('--val-scenes', type=int, default=None,
                   help='how many of the scenes are val (default: ~20%%, test: 0)')
    p.add_argument('--samples-per-scene', type=int, default=20, help='keyframes (2 Hz) per scene')
    p.add_argument('--image-scale', type=float, default=0.25,
                   help='camera size relative to 1600x900 (intrinsics are scaled to match)')
    p.add_argument('--sweeps', type=int, default=1,
                   help='lidar sweeps (20 Hz) stored before each keyframe, 0..9')
    p.add_argument('--start-span', type=float, default=DEFAULT_START_SPAN,
                   help='fraction of its first lane, from the start, where the ego may begin: '
                        '0.5 keeps most intersections behind a short scene, 1.0 lets as many '
                        'scenes approach one as leave one')
    p.add_argument('--workers', type=int, default=max(1, min(4, os.cpu_count() or 1)),
                   help='rendering processes')
    p.add_argument('--overwrite', action='store_true',
                   help='replace --out even if it is a non-empty folder not made by this tool')
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = GeneratorConfig(out=args.out, version=args.version, seed=args.seed, scenes=args.scenes,
                          samples_per_scene=args.samples_per_scene, image_scale=args.image_scale,
                          sweeps=args.sweeps, workers=args.workers, overwrite=args.overwrite,
                          start_span=args.start_span, val_scenes=args.val_scenes)
    start = time.time()
    try:
        out = generate(cfg)
    except (OutputFolderError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'synthetic nuScenes {args.version} in {out} ({time.time() - start:.0f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
