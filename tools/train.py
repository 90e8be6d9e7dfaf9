"""Train a MapLLaVA model: the same command line as mmdet3d 1.4's ``tools/train.py``.

Before the runner is built, bad input fails with one clear message (exit status 2):
unknown ``--cfg-options`` keys, keys of ``train_cfg`` / ``env_cfg`` / hooks ... that nothing
reads (in the file or the overrides), missing info files, LLM / BLIP-2 paths that do not
resolve, and (in the runner) a checkpoint whose keys do not fit the model. During training,
a missing or undecodable image (sample token and path) and a diverged run ("training diverged
at iteration N", nothing saved from it) end the same way.
"""
import argparse
import logging
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:  # custom_imports of projects.MapLLaVA work from any cwd
    sys.path.insert(0, REPO_ROOT)

from mmengine.config import DictAction  # noqa: E402
from mmengine.logging import print_log  # noqa: E402

from projects.MapLLaVA.mapllava.engine import cli  # noqa: E402
from projects.MapLLaVA.mapllava.engine.config_checks import (  # noqa: E402
    ConfigCheckError,
    check_ann_files,
    check_pretrained,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a MapLLaVA model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='folder for logs and checkpoints')
    parser.add_argument('--amp', action='store_true',
                        help='bf16 automatic mixed precision (AmpOptimWrapper; GPU)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by total batch size / auto_scale_lr.base_batch_size')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from this checkpoint, or without a value from the '
                        'latest checkpoint in the work dir')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, key=value; keys must exist in the '
                        'config (prefix with + to add a new one)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    cli.set_local_rank(args.local_rank)
    return args


def _enable_amp(cfg) -> None:
    wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if wrapper == 'AmpOptimWrapper':
        print_log('AMP is already enabled in the config.', logger='current',
                  level=logging.WARNING)
        return
    if wrapper != 'OptimWrapper':
        raise ConfigCheckError(f'--amp needs optim_wrapper.type OptimWrapper, got {wrapper}')
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.loss_scale = 'dynamic'
    # bf16, not mmengine's fp16 default: the LLM's weights are bf16 and fp16 overflows them
    cfg.optim_wrapper.setdefault('dtype', 'bfloat16')


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = cli.load_config(args.config, args.cfg_options, args.launcher, args.work_dir)
    if args.amp:
        _enable_amp(cfg)
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise ConfigCheckError('--auto-scale-lr needs auto_scale_lr.base_batch_size')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        if not osp.exists(args.resume):  # a file, or a sharded checkpoint folder (FSDP2)
            raise ConfigCheckError(f'--resume checkpoint not found: {args.resume}')
        cfg.resume, cfg.load_from = True, args.resume
    if cfg.get('load_from') and '://' not in cfg.load_from and not osp.exists(cfg.load_from):
        raise ConfigCheckError(f'load_from checkpoint not found: {cfg.load_from}')
    splits = ('train', 'val') if cfg.get('val_cfg') else ('train',)
    check_ann_files(cfg, splits)
    check_pretrained(cfg)
    cli.setup_cpu_distributed(cfg)
    cli.build_runner(cfg).train()


if __name__ == '__main__':
    cli.run_cli(main)
