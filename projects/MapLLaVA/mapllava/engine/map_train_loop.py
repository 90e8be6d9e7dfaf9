"""``MapEpochBasedTrainLoop``: mmengine's epoch loop, able to resume part-way into an epoch.

mmengine's ``EpochBasedTrainLoop`` starts every epoch at its first batch. Resuming a
checkpoint that ``CheckpointHook(by_epoch=False)`` wrote mid-epoch therefore trains the
epoch's finished batches a second time and ends past ``max_iters``. This loop is told by
``MapRunner.resume`` how many batches of the current epoch the checkpoint had trained; it
loads and drops those, as mmengine's ``IterBasedTrainLoop`` does when it resumes, then
puts the random generators back where they were, so batch ``k`` is trained on the same
samples with the same random state as in an uninterrupted run.

The dropped batches are loaded rather than skipped in the sampler so that dataloader
workers (seeded per epoch by mmengine) draw their augmentations in the same order as in
the uninterrupted run; only the main process's generators are restored. Workers kept
across epochs (``persistent_workers=True``) restart their random streams on any resume.
"""
from __future__ import annotations

from typing import Iterable

from mmdet3d.registry import LOOPS
from mmengine.logging import print_log
from mmengine.runner import EpochBasedTrainLoop

from .rng_state import get_rng_state, set_rng_state


@LOOPS.register_module()
class MapEpochBasedTrainLoop(EpochBasedTrainLoop):
    """``EpochBasedTrainLoop`` whose first epoch can start after its first batches."""

    _batches_done = 0

    def start_mid_epoch(self, batches_done: int) -> None:
        """Train the current epoch from batch ``batches_done`` on (``MapRunner.resume``).

        ``batches_done == len(dataloader)``: all batches were trained but the end-of-epoch
        hooks (epoch checkpoint, by-epoch lr steps, validation) have not run yet.
        """
        if not 0 <= batches_done <= len(self.dataloader):
            raise ValueError(f'batches_done must be in [0, {len(self.dataloader)}], '
                             f'got {batches_done}')
        self._batches_done = batches_done

    def run_epoch(self) -> None:
        """Iterate one epoch, or its batches after ``start_mid_epoch``'s."""
        done, self._batches_done = self._batches_done, 0
        if not done:
            super().run_epoch()
            return
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        for idx, data_batch in self._batches_after(done):
            self.run_iter(idx, data_batch)
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1

    def _batches_after(self, done: int) -> Iterable:
        """``(index, batch)`` for the epoch's batches after the first ``done``."""
        if done == len(self.dataloader):
            return ()
        print_log(f'resuming {done} batches into epoch {self._epoch + 1}: loading and '
                  f'dropping the batches trained before the checkpoint', logger='current')
        state = get_rng_state()
        batches = iter(self.dataloader)
        for _ in range(done):
            next(batches)
        set_rng_state(state)
        return enumerate(batches, start=done)
