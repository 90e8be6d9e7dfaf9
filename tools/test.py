"""Test (and evaluate) a MapLLaVA checkpoint: the command line of mmdet3d 1.4's test tool.

``--out preds.json`` (or ``preds.pkl``) also dumps the predictions in the offline evaluator's
format (``DumpMapPredictions``); ``--show-dir DIR`` draws BEV and camera pictures per sample
(``MapVisualizationHook``).
"""
import argparse
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:  # custom_imports of projects.MapLLaVA work from any cwd
    sys.path.insert(0, REPO_ROOT)

from mmengine.config import DictAction  # noqa: E402

from projects.MapLLaVA.mapllava.engine import cli  # noqa: E402
from projects.MapLLaVA.mapllava.engine.config_checks import (  # noqa: E402
    ConfigCheckError,
    check_ann_files,
    check_pretrained,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and evaluate) a MapLLaVA model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='folder for the evaluation logs')
    parser.add_argument('--out', help='dump predictions to this .json or .pkl '
                        '(tools/eval_map.py input)')
    parser.add_argument('--show-dir', help='write <token>_bev.png and <token>_cams.jpg here')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='draw predictions scoring at least this')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, key=value; keys must exist in the '
                        'config (prefix with + to add a new one)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    cli.set_local_rank(args.local_rank)
    return args


def _add_dump(cfg, out: str) -> None:
    dump = dict(type='DumpMapPredictions', out_file_path=out)
    evaluator = cfg.test_evaluator
    if isinstance(evaluator, dict) and 'metrics' in evaluator:  # an Evaluator config
        evaluator.metrics = list(evaluator.metrics) + [dump]
    elif isinstance(evaluator, (list, tuple)):
        cfg.test_evaluator = list(evaluator) + [dump]
    else:
        cfg.test_evaluator = [evaluator, dump]


def _add_visualization(cfg, show_dir: str, score_thr: float) -> None:
    hook = dict(cfg.default_hooks.get('visualization') or {})
    if hook.get('type', 'MapVisualizationHook') != 'MapVisualizationHook':
        hook = {}
    hook.update(type='MapVisualizationHook', draw=True, show_dir=show_dir,
                score_thr=score_thr)
    cfg.default_hooks.visualization = hook


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = cli.load_config(args.config, args.cfg_options, args.launcher, args.work_dir)
    if osp.isdir(args.checkpoint):
        raise ConfigCheckError(f'{args.checkpoint} is a sharded checkpoint folder; write it '
                               'as one file with tools/export_checkpoint.py first')
    if '://' not in args.checkpoint and not osp.isfile(args.checkpoint):
        raise ConfigCheckError(f'checkpoint not found: {args.checkpoint}')
    cfg.load_from, cfg.resume = args.checkpoint, False
    if args.out:
        _add_dump(cfg, args.out)
    if args.show_dir:
        _add_visualization(cfg, args.show_dir, args.score_thr)
    check_ann_files(cfg, ('test',))
    check_pretrained(cfg)
    cli.setup_cpu_distributed(cfg)
    cli.build_runner(cfg).test()


if __name__ == '__main__':
    cli.run_cli(main)
