"""``DivergenceCheckHook``: stop in the iteration that diverged, before anything saves it.

mmdet's ``CheckInvalidLossHook`` looks every ``interval`` (50) iterations at the loss only and
fails with a bare ``AssertionError``. A large learning rate typically first shows as a NaN
gradient norm with a huge but finite loss: the step writes NaN weights, and the next forward
fails in the Hungarian assigner ("non-finite matching cost") or trains on; an epoch end in
between checkpoints the NaN weights, ``best_model.pth`` included. This hook looks at every
iteration, at the losses and at the gradient norm the optimizer wrapper logged for this step,
runs before the other hooks' ``after_train_iter`` (the logger, an iteration-based checkpoint
hook) and raises :class:`TrainingDivergedError`: the iteration and the epoch never end, so
nothing is written from the diverged weights and the files already on disk stay as they were.
"""
from __future__ import annotations

import math
import os.path as osp
from typing import Optional

import torch
from mmdet3d.registry import HOOKS
from mmengine.dist import all_reduce, is_distributed
from mmengine.hooks import Hook
from mmengine.optim import OptimWrapperDict
from mmengine.runner import find_latest_checkpoint


class TrainingDivergedError(RuntimeError):
    """The loss or the gradient norm became NaN / infinite; the run stopped unsaved."""


def _saved(runner) -> str:
    last = runner.message_hub.get_info('last_ckpt') or find_latest_checkpoint(runner.work_dir)
    best = runner.message_hub.get_info('best_ckpt')
    if not last and not best:
        return 'no checkpoint was saved before it'
    saved = [f'last checkpoint {last}'] if last else []
    saved += [f'best {best}'] if best and osp.isfile(best) else []
    return ', '.join(saved) + ' (untouched)'


def _scaled(optim_wrapper) -> bool:
    """Whether a loss scaler skips steps whose gradients overflow (AMP): then a non-finite
    gradient norm leaves the weights as they were."""
    wrappers = (optim_wrapper.values() if isinstance(optim_wrapper, OptimWrapperDict)
                else [optim_wrapper])
    return any(getattr(w, 'loss_scaler', None) is not None for w in wrappers)


@HOOKS.register_module()
class DivergenceCheckHook(Hook):
    """Raise :class:`TrainingDivergedError` when this iteration's step diverged.

    Checked: every output whose name contains ``loss`` (the terms ``parse_losses`` sums), and
    the ``grad_norm`` of the step when the optimizer wrapper clips gradients (``clip_grad``)
    and no AMP loss scaler skips overflowing steps. In distributed training the ranks agree
    through one ``all_reduce`` of a flag, so they all stop in the same iteration.
    """

    priority = 'VERY_HIGH'

    def after_train_iter(self, runner, batch_idx: int, data_batch: Optional[dict] = None,
                         outputs: Optional[dict] = None) -> None:
        values = {name: float(value.detach() if isinstance(value, torch.Tensor) else value)
                  for name, value in (outputs or {}).items() if 'loss' in name}
        grad_norm = runner.message_hub.log_scalars.get('train/grad_norm')
        if grad_norm is not None and not _scaled(getattr(runner, 'optim_wrapper', None)):
            # a value from an earlier step was finite, or training would have stopped there
            values['grad_norm'] = float(grad_norm.current())
        bad = {name: value for name, value in values.items() if not math.isfinite(value)}
        diverged = bool(bad)
        if is_distributed():
            flag = torch.tensor(float(diverged))
            all_reduce(flag)
            diverged = flag.item() > 0
        if not diverged:
            return
        found = ', '.join(f'{k} = {v}' for k, v in bad.items()) or 'on another rank'
        raise TrainingDivergedError(
            f'training diverged at iteration {runner.iter + 1} (epoch {runner.epoch + 1}): '
            f'{found}; stopped without saving, {_saved(runner)}. Lower the learning rate '
            '(optim_wrapper.optimizer.lr) or check the inputs of that iteration')
