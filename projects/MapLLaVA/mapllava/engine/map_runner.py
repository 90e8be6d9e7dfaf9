"""``MapRunner``: mmengine's Runner with crash-safe checkpoints, strict loading, exact resume.

The differences from ``mmengine.runner.Runner``, all at its own extension points:

* ``save_checkpoint`` writes ``<name>.tmp`` next to the target and ``os.replace``s it, so a
  process killed mid-save leaves the previous file (and ``last_checkpoint``) usable.
* ``load_checkpoint`` (used by ``load_from`` and by resume) raises
  :class:`CheckpointMismatchError` naming missing / unexpected / mis-shaped keys instead of
  logging a warning and training a half-loaded model. The reference is
  ``model.state_dict()``, so weights a module deliberately leaves out of its state dict
  (the frozen LLM) are not expected. ``checkpoint_check=dict(allow_missing=[...],
  allow_unexpected=[...])`` in the config lists fnmatch patterns to accept, e.g. new LoRA
  weights when a stage-3 config loads a stage-2 checkpoint.
* ``dump_config`` also writes the resolved config to ``<work_dir>/config.py``.
* checkpoints carry the random generators' state (``meta['rng_state']``) and ``resume``
  restores it, so a resumed run draws the same dropout masks and augmentations as an
  uninterrupted one. Validation leaves the generators as it found them (see
  :meth:`MapRunner.call_hook`), so that state is also the one the next epoch starts from.
* ``resume`` refuses, with :class:`CheckpointResumeError`, what it cannot continue
  exactly: a weights-only file (``best_model.pth``, ``final_model.pth``), whose resume
  would silently restart the optimizer and lr schedule, and a mid-epoch (iteration)
  checkpoint under a loop that would replay the epoch. ``MapEpochBasedTrainLoop``
  resumes those where they stopped.
"""
from __future__ import annotations

import fnmatch
import os
import os.path as osp
import re
from typing import Iterable, Optional

from mmdet3d.registry import RUNNERS
from mmengine.dist import master_only
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.model import is_model_wrapper
from mmengine.runner import EpochBasedTrainLoop, Runner

from .rng_state import set_rng_state
from .runner_conventions import CheckpointResumeError, MapRunnerConventions

_DEFAULT_REVISE_KEYS = [(r'^module\.', '')]
_MAX_LISTED = 20


class CheckpointMismatchError(ValueError):
    """The checkpoint's state dict does not fit the model."""


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def _listing(title: str, keys: list) -> str:
    shown = ', '.join(keys[:_MAX_LISTED])
    more = f' ... (+{len(keys) - _MAX_LISTED} more)' if len(keys) > _MAX_LISTED else ''
    return f'  {title} ({len(keys)}): {shown}{more}'


def check_state_dict(model_state: dict, ckpt_state: dict, source: str = 'checkpoint',
                     allow_missing: Iterable[str] = (),
                     allow_unexpected: Iterable[str] = ()) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``ckpt_state`` fits ``model_state``.

    Both are name -> tensor mappings; keys matching the fnmatch patterns in
    ``allow_missing`` / ``allow_unexpected`` are tolerated.
    """
    missing = sorted(k for k in model_state
                     if k not in ckpt_state and not _matches(k, allow_missing))
    unexpected = sorted(k for k in ckpt_state
                        if k not in model_state and not _matches(k, allow_unexpected))
    shape = sorted(
        f'{k} {tuple(ckpt_state[k].shape)} vs model {tuple(v.shape)}'
        for k, v in model_state.items()
        if k in ckpt_state and hasattr(v, 'shape') and hasattr(ckpt_state[k], 'shape')
        and tuple(ckpt_state[k].shape) != tuple(v.shape))
    if not (missing or unexpected or shape):
        return
    lines = [f'{source} does not match the model:']
    if missing:
        lines.append(_listing('missing in checkpoint', missing))
    if unexpected:
        lines.append(_listing('unexpected in checkpoint', unexpected))
    if shape:
        lines.append(_listing('shape mismatch', shape))
    lines.append('  (set checkpoint_check=dict(allow_missing=[...], allow_unexpected=[...]) '
                 'with fnmatch patterns in the config if this is intended)')
    raise CheckpointMismatchError('\n'.join(lines))


@RUNNERS.register_module()
class MapRunner(MapRunnerConventions, Runner):
    """Runner with atomic checkpoint writes, strict checkpoint loading and exact resume."""
    _resume_needs: tuple = ()  # checkpoint keys ``resume`` needs, while it runs

    @master_only
    def save_checkpoint(self, out_dir: str, filename: str,
                        file_client_args: Optional[dict] = None, save_optimizer: bool = True,
                        save_param_scheduler: bool = True, meta: Optional[dict] = None,
                        by_epoch: bool = True, backend_args: Optional[dict] = None) -> None:
        """Save like mmengine, but to ``<filename>.tmp`` first, then rename into place.

        Also saved: the random state the next training step starts from and, under an
        epoch loop, the epoch length, which tells ``resume`` whether the checkpoint was
        written mid-epoch even if the batch size changed since.
        """
        meta = dict(meta or {}, rng_state=self.next_step_rng_state())
        if isinstance(self._train_loop, EpochBasedTrainLoop):
            meta.setdefault('iters_per_epoch', len(self._train_loop.dataloader))
        kwargs = dict(file_client_args=file_client_args, save_optimizer=save_optimizer,
                      save_param_scheduler=save_param_scheduler, meta=meta,
                      by_epoch=by_epoch, backend_args=backend_args)
        backend = get_file_backend(out_dir, backend_args=backend_args)
        if file_client_args is not None or not isinstance(backend, LocalBackend):
            # remote stores have their own put semantics; nothing to rename there
            super().save_checkpoint(out_dir, filename, **kwargs)
            return
        final, tmp = osp.join(out_dir, filename), osp.join(out_dir, filename + '.tmp')
        try:
            super().save_checkpoint(out_dir, filename + '.tmp', **kwargs)
            _fsync_file(tmp)
            os.replace(tmp, final)
        finally:
            if osp.exists(tmp):
                os.remove(tmp)

    def load_checkpoint(self, filename: str, map_location: str = 'cpu', strict: bool = False,
                        revise_keys: list = _DEFAULT_REVISE_KEYS) -> dict:
        """Load like mmengine, then fail loudly if the keys did not fit the model."""
        checkpoint = super().load_checkpoint(filename, map_location, strict, revise_keys)
        missing = [key for key in self._resume_needs if key not in checkpoint]
        if missing:
            raise CheckpointResumeError(
                f'cannot resume from {filename}: it holds weights only (no '
                f'{", ".join(missing)}), so the optimizer and lr schedule would restart; use '
                f'load_from={filename} (--cfg-options load_from={filename}, without --resume) '
                'to start a new run from its weights')
        state = checkpoint.get('state_dict', checkpoint)
        for pattern, repl in revise_keys:
            state = {re.sub(pattern, repl, k): v for k, v in state.items()}
        model = self.model.module if is_model_wrapper(self.model) else self.model
        allow = self.cfg.get('checkpoint_check', None) or {}
        check_state_dict(model.state_dict(), state, source=f'checkpoint {filename}',
                         allow_missing=allow.get('allow_missing', ()),
                         allow_unexpected=allow.get('allow_unexpected', ()))
        self._loaded_meta = checkpoint.get('meta', {})
        return checkpoint

    def resume(self, filename: str, resume_optimizer: bool = True,
               resume_param_scheduler: bool = True, map_location: str = 'default') -> None:
        """Resume as mmengine does, then put the random generators where they were.

        Refused (:class:`CheckpointResumeError`): a file without the optimizer, scheduler
        or message-hub state the resume would need, and a mid-epoch checkpoint unless the
        train loop is a ``MapEpochBasedTrainLoop``.
        """
        needs = ['meta', 'message_hub']
        if resume_optimizer:
            needs.append('optimizer')
        if resume_param_scheduler and self.param_schedulers is not None:
            needs.append('param_schedulers')
        self._resume_needs = tuple(needs)
        try:
            super().resume(filename, resume_optimizer, resume_param_scheduler, map_location)
        finally:
            self._resume_needs = ()
        meta = getattr(self, '_loaded_meta', {})
        self.continue_epoch(filename, meta)
        rng_state = meta.get('rng_state')
        if rng_state is not None:
            set_rng_state(rng_state)
