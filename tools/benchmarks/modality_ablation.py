"""Train the CPU-demo modality ablation (what the Q-Former reads, with and without the LLM)
and print one table row per run: best val mAP, AP per class, s/iteration.

Every run is ``tools/train.py CONFIG`` with the same data and schedule; only the seed and the
epoch budget can be changed (``--cfg-options randomness.seed=S train_cfg.max_epochs=E`` and
the cosine schedule's length), so a row is reproduced by the command it prints.

    python tools/benchmarks/modality_ablation.py --epochs 3 --jobs 2 --threads 1 \\
        --out work_dirs/modality_ablation/results.json

Runs that already have a ``result.json`` in their work dir are read, not retrained (so an
interrupted ablation continues where it stopped).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import os.path as osp
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
CONFIG_DIR = osp.join('configs', 'mapllava')
VARIANTS = {
    'BEV': 'mapllava_tiny-bev{}_1xb4-demo_synthetic-nus-map.py',
    'image': 'mapllava_tiny-img{}_1xb4-demo_synthetic-nus-map.py',
    'image + BEV': 'mapllava_tiny-img-bev{}_1xb4-demo_synthetic-nus-map.py',
    'image + camera-BEV + LiDAR-BEV':
        'mapllava_tiny-lidar-img-cambev-lidarbev{}_1xb4-demo_synthetic-nus-map.py',
}
BRIDGES = {'LLM': '', 'bypass': '_bypass'}
CLASSES = ('divider', 'ped_crossing', 'boundary')
PREFIX = 'NuscMap_chamfer/'


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--epochs', type=int, default=6,
                        help='epoch budget of every run (the demo recipe trains 6)')
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument('--bridges', nargs='+', default=list(BRIDGES), choices=list(BRIDGES))
    parser.add_argument('--seeds', type=int, nargs='+', default=[0])
    parser.add_argument('--noise-seeds', type=int, nargs='*', default=[1],
                        help='extra seeds for the BEV variant only (run-to-run noise)')
    parser.add_argument('--jobs', type=int, default=1, help='runs trained at the same time')
    parser.add_argument('--threads', type=int, default=None,
                        help='OMP/torch threads per run (default: torch default)')
    parser.add_argument('--work-dir', default='work_dirs/modality_ablation')
    parser.add_argument('--out', default=None, help='write all rows to this JSON file')
    parser.add_argument('--dry-run', action='store_true', help='print the commands only')
    return parser.parse_args(argv)


def run_plan(args: argparse.Namespace) -> list[dict]:
    plan = []
    for variant in args.variants:
        seeds = list(args.seeds) + (list(args.noise_seeds) if variant == 'BEV' else [])
        for seed in seeds:
            for bridge in args.bridges:
                config = osp.join(CONFIG_DIR, VARIANTS[variant].format(BRIDGES[bridge]))
                name = osp.splitext(osp.basename(config))[0]
                work_dir = osp.join(args.work_dir, f'{name}_e{args.epochs}_s{seed}')
                epochs = args.epochs
                cmd = [sys.executable, 'tools/train.py', config, '--work-dir', work_dir,
                       '--cfg-options', f'randomness.seed={seed}',
                       f'train_cfg.max_epochs={epochs}', f'param_scheduler.1.T_max={epochs}',
                       f'param_scheduler.1.end={epochs}']
                plan.append(dict(variant=variant, bridge=bridge, seed=seed, epochs=epochs,
                                 config=config, work_dir=work_dir, cmd=cmd))
    return plan


def read_scalars(work_dir: str) -> tuple[list[dict], list[dict]]:
    """Training-iteration and validation records of the newest run in ``work_dir``."""
    files = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    if not files:
        raise FileNotFoundError(f'{work_dir}: no */vis_data/scalars.json (did the run fail? '
                                f'see {work_dir}/train.log)')
    with open(files[-1]) as f:
        records = [json.loads(line) for line in f if line.strip()]
    train = [r for r in records if 'loss' in r]
    val = [r for r in records if PREFIX + 'mAP' in r]
    return train, val


def summarise(run: dict) -> dict:
    train, val = read_scalars(run['work_dir'])
    if not val:
        raise RuntimeError(f'{run["work_dir"]}: no validation result')
    best = max(val, key=lambda r: r[PREFIX + 'mAP'])
    times = [r['time'] for r in train[1:]]  # the first logged window holds the warm-up
    return dict(
        {k: run[k] for k in ('variant', 'bridge', 'seed', 'epochs', 'config')},
        command=' '.join(run['cmd'][1:]),
        best_epoch=int(best['step']), mAP=best[PREFIX + 'mAP'],
        mAP_per_epoch=[r[PREFIX + 'mAP'] for r in val],
        **{f'AP_{c}': best[PREFIX + f'AP_{c}'] for c in CLASSES},
        s_per_iter=sum(times) / max(len(times), 1))


def train(run: dict, threads: int | None) -> dict:
    result_file = osp.join(run['work_dir'], 'result.json')
    if osp.exists(result_file):
        with open(result_file) as f:
            return json.load(f)
    os.makedirs(run['work_dir'], exist_ok=True)
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.time()
    with open(osp.join(run['work_dir'], 'train.log'), 'w') as log:
        proc = subprocess.run(run['cmd'], cwd=REPO, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f'{" ".join(run["cmd"])} failed with exit status '
                           f'{proc.returncode}; see {run["work_dir"]}/train.log')
    result = dict(summarise(run), wall_s=round(time.time() - start), threads=threads)
    tmp = result_file + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, result_file)
    return result


def table(rows: list[dict]) -> str:
    head = ('| Q-Former reads | bridge | seed | best mAP (epoch) | divider | ped_crossing | '
            'boundary | s/iter |\n|---|---|---|---|---|---|---|---|')
    lines = [head]
    for r in rows:
        lines.append(f'| {r["variant"]} | {r["bridge"]} | {r["seed"]} | {r["mAP"]:.3f} '
                     f'({r["best_epoch"]}) | {r["AP_divider"]:.3f} | '
                     f'{r["AP_ped_crossing"]:.3f} | {r["AP_boundary"]:.3f} | '
                     f'{r["s_per_iter"]:.2f} |')
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    plan = run_plan(args)
    if args.dry_run:
        for run in plan:
            print(' '.join(run['cmd'][1:]))
        return
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(lambda run: train(run, args.threads), plan))
    print(table(rows))
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        tmp = args.out + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(rows, f, indent=1)
        os.replace(tmp, args.out)


if __name__ == '__main__':
    main()
