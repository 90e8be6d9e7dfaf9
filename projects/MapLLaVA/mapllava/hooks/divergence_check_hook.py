"""``DivergenceCheckHook``: stop in the iteration whose loss is not finite, before any save.

mmdet's ``CheckInvalidLossHook`` looks every ``interval`` (50) iterations and fails with a
bare ``AssertionError``; by then the NaN weights have trained on, may have been checkpointed
(``best_model.pth`` included), and the Hungarian assigner has usually failed first with
"non-finite matching cost". This hook looks at every iteration, runs before the other hooks'
``after_train_iter`` (the logger, an iteration-based checkpoint hook) and raises
:class:`TrainingDivergedError`: the iteration and the epoch never end, so nothing is written
from the diverged weights and the checkpoints already on disk stay as they were.
"""
from __future__ import annotations

import math
import os.path as osp
from typing import Optional

import torch
from mmdet3d.registry import HOOKS
from mmengine.dist import all_reduce, is_distributed
from mmengine.hooks import Hook
from mmengine.runner import find_latest_checkpoint


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the run stopped without saving its weights."""


def _saved(runner) -> str:
    last = runner.message_hub.get_info('last_ckpt') or find_latest_checkpoint(runner.work_dir)
    best = runner.message_hub.get_info('best_ckpt')
    if not last and not best:
        return 'no checkpoint was saved before it'
    saved = [f'last checkpoint {last}'] if last else []
    saved += [f'best {best}'] if best and osp.isfile(best) else []
    return ', '.join(saved) + ' (untouched)'


@HOOKS.register_module()
class DivergenceCheckHook(Hook):
    """Raise :class:`TrainingDivergedError` when a loss of the current iteration is not finite.

    Every output whose name contains ``loss`` (the terms ``parse_losses`` sums) is checked.
    In distributed training the ranks agree through one ``all_reduce`` of a flag, so they all
    stop in the same iteration instead of waiting on the one that stopped.
    """

    priority = 'VERY_HIGH'

    def after_train_iter(self, runner, batch_idx: int, data_batch: Optional[dict] = None,
                         outputs: Optional[dict] = None) -> None:
        bad = {name: float(value) for name, value in (outputs or {}).items()
               if 'loss' in name and not math.isfinite(float(value))}
        diverged = bool(bad)
        if is_distributed():
            flag = torch.tensor(float(diverged))
            all_reduce(flag)
            diverged = flag.item() > 0
        if not diverged:
            return
        values = ', '.join(f'{k} = {v}' for k, v in bad.items()) or 'on another rank'
        raise TrainingDivergedError(
            f'training diverged at iteration {runner.iter + 1} (epoch {runner.epoch + 1}): '
            f'non-finite loss ({values}); stopped without saving, {_saved(runner)}. Lower the '
            'learning rate (optim_wrapper.optimizer.lr) or check the inputs of that iteration')
