"""What ``MapRunner`` and ``MapFlexibleRunner`` share beyond their mmengine bases.

* Validation leaves the random generators as it found them (:meth:`call_hook`), so the
  state saved with any checkpoint, including one written during validation, is the one
  the next training step starts from.
* A mid-epoch (iteration) checkpoint resumes where it stopped under
  ``MapEpochBasedTrainLoop`` and is refused under loops that would replay the epoch.
* ``dump_config`` also writes the resolved config to ``<work_dir>/config.py``.
"""
from __future__ import annotations

import os
import os.path as osp
from typing import Optional

from mmengine.dist import master_only
from mmengine.runner import EpochBasedTrainLoop

from .config_checks import ConfigCheckError
from .map_train_loop import MapEpochBasedTrainLoop
from .rng_state import get_rng_state, set_rng_state


class CheckpointResumeError(ConfigCheckError):
    """``resume`` was given a checkpoint that training cannot continue exactly from."""


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through ``path + '.tmp'`` and ``os.replace``."""
    tmp = path + '.tmp'
    try:
        with open(tmp, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


class MapRunnerConventions:
    """Mixin for an mmengine ``Runner`` / ``FlexibleRunner`` subclass (put it first)."""

    _val_rng_state: Optional[dict] = None  # set while validation runs

    def next_step_rng_state(self) -> dict:
        """The generators' state the next training step will start from."""
        return self._val_rng_state if self._val_rng_state is not None else get_rng_state()

    def continue_epoch(self, filename: str, meta: dict) -> None:
        """Tell the epoch loop how far into its epoch ``filename`` was written."""
        loop = self.train_loop
        if not isinstance(loop, EpochBasedTrainLoop):
            return
        per_epoch = meta.get('iters_per_epoch', len(loop.dataloader))  # older checkpoints
        done = loop.iter - loop.epoch * per_epoch
        if done == 0:
            return
        where = (f'{filename} was written at iteration {loop.iter}, {done} of {per_epoch} '
                 f'batches into epoch {loop.epoch + 1} (an iteration checkpoint: '
                 'default_hooks.checkpoint.by_epoch=False)')
        if not isinstance(loop, MapEpochBasedTrainLoop):
            raise CheckpointResumeError(
                f"{where}; {type(loop).__name__} would train that epoch again from its "
                "first batch: set train_cfg.type='MapEpochBasedTrainLoop' to resume "
                'mid-epoch, or resume from an epoch checkpoint')
        if not 0 < done <= per_epoch or per_epoch != len(loop.dataloader):
            raise CheckpointResumeError(
                f'{where}, but the train dataloader now has {len(loop.dataloader)} batches '
                'per epoch: resume mid-epoch with the batch size, dataset and number of '
                'processes it was saved with, or from an epoch checkpoint')
        loop.start_mid_epoch(done)

    def call_hook(self, fn_name: str, **kwargs) -> None:
        """Call the hooks as mmengine does, but undo validation's random draws.

        Validation runs between the end-of-epoch checkpoint and the next epoch and draws
        from the global generators (each DataLoader iterator draws a base seed; test-time
        transforms may be random), so the state saved with the checkpoint was not the one
        the next epoch started from. Saving after validation instead would write each
        epoch checkpoint twice. With validation random-neutral, the state at the end of
        the epoch, and at any point of validation (the checkpoint re-saved for a new
        ``best_model.pth``), is the next epoch's; and training draws the same random
        numbers whether and how often it validates.
        """
        if fn_name == 'before_val':
            self._val_rng_state = get_rng_state()
        super().call_hook(fn_name, **kwargs)
        if fn_name == 'after_val' and self._val_rng_state is not None:
            set_rng_state(self._val_rng_state)
            self._val_rng_state = None

    @master_only
    def dump_config(self) -> None:
        """Dump as mmengine does, and also to the fixed name ``<work_dir>/config.py``."""
        super().dump_config()
        atomic_write(osp.join(self.work_dir, 'config.py'), self.cfg.pretty_text.encode())
