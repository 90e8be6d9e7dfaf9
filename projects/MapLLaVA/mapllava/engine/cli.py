"""What ``tools/train.py`` and ``tools/test.py`` share: loading the config with checked
overrides, the work dir rule of mmdet3d's tools, the CPU fallback for ``--launcher pytorch``
and building the runner (``MapRunner`` unless the config names another ``runner_type``).
"""
from __future__ import annotations

import os
import os.path as osp
import sys
from typing import Callable, Optional

import torch
from mmdet3d.registry import RUNNERS
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

from ..hooks.divergence_check_hook import TrainingDivergedError
from ..transforms.loading import CorruptFileError
from ..utils.safe_pickle import DataFileError, UnsafePickleError
from .config_checks import ConfigCheckError, check_config_keys, validate_cfg_options
from .map_runner import CheckpointMismatchError

USER_ERRORS = (ConfigCheckError, CheckpointMismatchError, FileNotFoundError, UnsafePickleError,
               DataFileError, CorruptFileError, TrainingDivergedError)


def load_config(path: str, cfg_options: Optional[dict], launcher: str,
                work_dir: Optional[str]) -> Config:
    """Read ``path``, apply validated ``--cfg-options``, set launcher and work_dir."""
    if not osp.isfile(path):
        raise ConfigCheckError(f'config file not found: {path}')
    cfg = Config.fromfile(path)
    cfg.merge_from_dict(validate_cfg_options(cfg, cfg_options))
    check_config_keys(cfg, path + (' with its --cfg-options' if cfg_options else ''))
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(path))[0])
    return cfg


def setup_cpu_distributed(cfg: Config) -> None:
    """Make ``--launcher pytorch`` work without CUDA: gloo backend and a CPU DDP wrapper.

    mmengine's ``init_dist('pytorch')`` calls ``torch.cuda.set_device`` and its default DDP
    wrapper passes ``device_ids=[LOCAL_RANK]``; both fail on a CPU-only machine. We start the
    gloo process group ourselves (the runner then skips its own init) and wrap without
    device ids.
    """
    if cfg.launcher != 'pytorch' or torch.cuda.is_available():
        return
    cfg.env_cfg.setdefault('dist_cfg', {})['backend'] = 'gloo'
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend='gloo')


def build_runner(cfg: Config) -> Runner:
    """``RUNNERS.build`` with ``MapRunner`` as the default ``runner_type``.

    The config's ``default_scope`` is made current first: a scope left over from an earlier
    runner in the same process (another default scope) would otherwise hide ``MapRunner``.
    """
    cfg.setdefault('runner_type', 'MapRunner')
    init_default_scope(cfg.get('default_scope', 'mmdet3d'))
    return RUNNERS.build(cfg)


def set_local_rank(local_rank: int) -> None:
    """Keep the ``--local-rank`` of ``torch.distributed.launch`` in ``LOCAL_RANK``."""
    os.environ.setdefault('LOCAL_RANK', str(local_rank))


def run_cli(main: Callable[[], None]) -> None:
    """Run ``main``; report user-input errors as one clear message and exit status 2."""
    try:
        main()
    except USER_ERRORS as exc:
        print(f'error: {_user_message(exc)}', file=sys.stderr)
        sys.exit(2)


def _user_message(exc: Exception) -> str:
    """The message of ``exc``; for one re-raised from a DataLoader worker (whose message is
    the worker's whole traceback) the original message, from the traceback's last line."""
    text = str(exc)
    if not (text.startswith('Caught ') and '\nOriginal Traceback' in text):
        return text
    last = text.rstrip().splitlines()[-1]
    return last.split(': ', 1)[1] if ': ' in last else last
