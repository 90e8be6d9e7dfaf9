"""``MapCheckpointHook``: the project's checkpoint names on top of mmengine's CheckpointHook.

* every ``interval`` epochs: ``checkpoint_epoch_N.pth`` (model, optimizer, schedulers,
  message hub: what resume needs; ``last_checkpoint`` points at it, ``max_keep_ckpts``
  prunes old ones);
* after a validation that improves ``save_best`` (mAP, higher is better): ``best_model.pth``
  (weights and meta only), overwritten in place;
* when training ends: ``final_model.pth`` (weights and meta only).

Writing each file atomically is the runner's job (``MapRunner.save_checkpoint``); unlike
mmengine's CheckpointHook this hook never deletes a checkpoint (the oldest periodic one, the
previous best) before its successor is on disk, and it replaces ``last_checkpoint``
atomically.
"""
from __future__ import annotations

import os.path as osp
from collections import deque
from typing import Optional

from mmdet3d.registry import HOOKS
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log

from ..engine.runner_conventions import atomic_write


@HOOKS.register_module()
class MapCheckpointHook(CheckpointHook):
    """CheckpointHook writing checkpoint_epoch_N.pth, best_model.pth and final_model.pth.

    Args:
        save_best: validation metric deciding ``best_model.pth`` (``None`` disables it). An
            evaluator prefix is tolerated: ``'mAP'`` also matches ``'chamfer/mAP'``.
        rule: ``'greater'`` or ``'less'``.
        best_filename / final_filename: names of the two fixed files.
        Other arguments are ``CheckpointHook``'s.
    """

    def __init__(self, interval: int = 1, by_epoch: bool = True,
                 save_best: Optional[str] = 'mAP', rule: Optional[str] = 'greater',
                 filename_tmpl: Optional[str] = None,
                 best_filename: str = 'best_model.pth',
                 final_filename: str = 'final_model.pth', **kwargs) -> None:
        if save_best is not None and (not isinstance(save_best, str) or save_best == 'auto'):
            raise TypeError(f'MapCheckpointHook.save_best takes one metric name, '
                            f'got {save_best!r}')
        if filename_tmpl is None:
            filename_tmpl = 'checkpoint_epoch_{}.pth' if by_epoch else 'checkpoint_iter_{}.pth'
        super().__init__(interval=interval, by_epoch=by_epoch, save_best=save_best,
                         rule=rule, filename_tmpl=filename_tmpl, **kwargs)
        self.best_filename = best_filename
        self.final_filename = final_filename

    def _save_checkpoint_with_step(self, runner, step: int, meta: dict) -> None:
        """mmengine's periodic save, reordered for crash safety.

        mmengine deletes the oldest checkpoint *before* writing the new one and rewrites
        ``last_checkpoint`` in place; with ``max_keep_ckpts=1`` a crash mid-save would leave
        nothing to resume from. Here the new file is written first (atomically, by
        ``MapRunner``), then ``last_checkpoint`` (atomically), and only then the oldest is
        pruned.
        """
        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        keep = list(getattr(self, 'keep_ckpt_ids', ()))
        stale = []
        if self.max_keep_ckpts > 0 and not (keep and keep[-1] == step):
            keep.append(step)
            stale, keep = keep[:-self.max_keep_ckpts], keep[-self.max_keep_ckpts:]
            runner.message_hub.update_info('keep_ckpt_ids', keep)  # saved in the checkpoint
        runner.save_checkpoint(
            self.out_dir, ckpt_filename, self.file_client_args,
            save_optimizer=self.save_optimizer, save_param_scheduler=self.save_param_scheduler,
            meta=meta, by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        if self.max_keep_ckpts > 0:
            self.keep_ckpt_ids = deque(keep, self.max_keep_ckpts)
        if not is_main_process():
            return
        atomic_write(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt.encode())
        for old_step in stale:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old_step))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # deepspeed checkpoints are folders
                self.file_backend.rmtree(path)

    def _metric_key(self, metrics: dict) -> Optional[str]:
        key = self.key_indicators[0]
        if key in metrics:
            return key
        suffixed = [k for k in metrics if k.endswith('/' + key)]
        return suffixed[0] if len(suffixed) == 1 else None

    def _save_best_checkpoint(self, runner, metrics: dict) -> None:
        """Overwrite ``best_model.pth`` when the metric improves (replaces mmengine's)."""
        if not self.save_best:
            return
        key = self._metric_key(metrics)
        if key is None:
            print_log(f'MapCheckpointHook: metric {self.key_indicators[0]!r} not among '
                      f'{sorted(metrics)}; best_model.pth not updated', logger='current',
                      level='WARNING')
            return
        score = metrics[key]
        rule = self.rules[0]
        best = runner.message_hub.get_info('best_score', self.init_value_map[rule])
        if score is None or not self.rule_map[rule](score, best):
            return
        runner.message_hub.update_info('best_score', score)
        self.best_ckpt_path = self.file_backend.join_path(self.out_dir, self.best_filename)
        runner.message_hub.update_info('best_ckpt', self.best_ckpt_path)
        step = runner.epoch if self.by_epoch else runner.iter
        meta = dict(epoch=runner.epoch, iter=runner.iter, best_metric=key, best_score=score)
        runner.save_checkpoint(self.out_dir, self.best_filename,
                               save_optimizer=False, save_param_scheduler=False, meta=meta,
                               by_epoch=False, backend_args=self.backend_args)
        runner.logger.info(f'best {key} {score:.4f} at {"epoch" if self.by_epoch else "iter"} '
                           f'{step}: saved {self.best_filename}')
        # as mmengine does: re-save the latest periodic checkpoint, whose message hub must
        # know the new best score for resume to keep comparing against it
        if self.last_ckpt is not None:
            self._save_checkpoint_with_step(runner, step, dict(epoch=runner.epoch,
                                                               iter=runner.iter))

    def after_train(self, runner) -> None:
        """Publish as mmengine does, then write ``final_model.pth``."""
        super().after_train(runner)
        runner.save_checkpoint(self.out_dir, self.final_filename,
                               save_optimizer=False, save_param_scheduler=False,
                               meta=dict(epoch=runner.epoch, iter=runner.iter),
                               by_epoch=False, backend_args=self.backend_args)
        runner.logger.info(f'final model saved to {self.final_filename}')
