"""Plot training curves from an mmengine work dir or its scalar json file.

    python tools/analysis_tools/plot_loss_curve.py work_dirs/demo \
        --keys loss loss_cls loss_pts loss_dir --out curve.png

Reads ``<work_dir>/<timestamp>/vis_data/scalars.json`` (every run of the work dir, oldest
first, so a resumed training continues its curve) or the given ``.json`` file: one json
object per line with ``step`` (iteration for training lines, epoch for validation lines).
Validation keys (e.g. ``mAP``) are plotted against epochs in a second panel.
"""
from __future__ import annotations

import argparse
import glob
import json
import os.path as osp
import sys

import matplotlib

matplotlib.use('Agg')
from matplotlib.figure import Figure  # noqa: E402


def find_scalar_files(path: str) -> list:
    """The json files to read: ``path`` itself or every run's scalars.json, oldest first."""
    if osp.isfile(path):
        return [path]
    files = sorted(glob.glob(osp.join(path, '*', 'vis_data', 'scalars.json')))
    if not files:
        raise FileNotFoundError(f'no */vis_data/scalars.json under {path}')
    return files


def load_series(files: list) -> tuple:
    """``(train, val)``: ``{key: {step: value}}`` dicts; later runs overwrite earlier steps."""
    train, val = {}, {}
    for file in files:
        with open(file) as f:
            for line in f:
                if not line.strip():
                    continue
                record = json.loads(line)
                step = record.pop('step', None)
                if step is None:
                    continue
                # training lines carry 'iter' and 'lr'; validation lines do not
                target = train if ('iter' in record or 'lr' in record) else val
                for key, value in record.items():
                    if isinstance(value, (int, float)) and key not in ('epoch', 'iter'):
                        target.setdefault(key, {})[step] = value
    return train, val


def plot(train: dict, val: dict, keys: list, out: str, val_keys: list | None = None) -> None:
    """Write a PNG with the train ``keys`` (by iteration) and validation ``val_keys``."""
    missing = [k for k in keys if k not in train]
    if missing:
        raise KeyError(f'keys {missing} not in the log; available: {sorted(train)}')
    if val_keys is None:  # default: the AP-like metrics, else every validation number
        val_keys = [k for k in sorted(val) if 'AP' in k] or sorted(val)
    val_keys = [k for k in val_keys if k in val and k not in ('data_time', 'time')]
    fig = Figure(figsize=(10 if val_keys else 6, 4), dpi=100)
    ax = fig.add_subplot(1, 2 if val_keys else 1, 1)
    for key in keys:
        steps = sorted(train[key])
        ax.plot(steps, [train[key][s] for s in steps], label=key, lw=1)
    ax.set_xlabel('iteration')
    ax.set_title('training')
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if val_keys:
        ax2 = fig.add_subplot(1, 2, 2)
        for key in val_keys:
            steps = sorted(val[key])
            ax2.plot(steps, [val[key][s] for s in steps], marker='o', label=key)
        ax2.set_xlabel('epoch')
        ax2.set_title('validation')
        ax2.legend(fontsize=8)
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description='Plot mmengine training curves')
    parser.add_argument('path', help='work dir, or a vis_data/scalars.json file')
    parser.add_argument('--keys', nargs='+', default=['loss'], help='training keys to plot')
    parser.add_argument('--val-keys', nargs='*', default=None,
                        help='validation keys (default: those with AP in the name)')
    parser.add_argument('--out', default='loss_curve.png', help='output PNG')
    args = parser.parse_args(argv)
    train, val = load_series(find_scalar_files(args.path))
    plot(train, val, args.keys, args.out, args.val_keys)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    try:
        main()
    except (FileNotFoundError, KeyError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        sys.exit(2)
