"""``MapFlexibleRunner``: mmengine's ``FlexibleRunner`` with ``MapRunner``'s conventions, for
configs whose ``strategy`` shards the model (``FSDP2Strategy``).

``FlexibleRunner`` hands building, loading and saving to its strategy (the strategy writes
atomically, keeps the random generators in checkpoints and restores them). This subclass
adds what ``MapRunner`` adds to ``Runner`` at the runner level:

* the config's ``checkpoint_check`` reaches the strategy, so loading is strict and names the
  keys that do not fit (``CheckpointMismatchError``), with the same allow-patterns;
* the ``epoch`` / ``iter`` a hook passes in ``meta`` are kept (``FlexibleRunner`` overwrites
  them, so ``final_model.pth`` would claim one iteration more than was trained);
* validation leaves the random generators as it found them, and a checkpoint saved during
  validation (``best_model.pth``, the periodic one re-saved with it) holds the state the
  next epoch starts from, as in ``MapRunner``: a resumed run draws what an uninterrupted one
  draws;
* resuming an iteration checkpoint continues mid-epoch (``MapEpochBasedTrainLoop``), by
  ``MapRunner``'s rule;
* ``dump_config`` also writes ``<work_dir>/config.py``.
"""
from __future__ import annotations

from typing import Optional, Union

from mmdet3d.registry import RUNNERS
from mmengine._strategy import BaseStrategy
from mmengine.fileio import join_path
from mmengine.registry import STRATEGIES
from mmengine.runner import EpochBasedTrainLoop, FlexibleRunner

from .fsdp2_strategy import FSDP2Strategy
from .runner_conventions import MapRunnerConventions


@RUNNERS.register_module()
class MapFlexibleRunner(MapRunnerConventions, FlexibleRunner):
    """FlexibleRunner with strict loading, exact resume and config.py (see the module)."""

    _loaded_meta: Optional[dict] = None  # meta of the checkpoint being resumed

    def build_strategy(self, strategy: Optional[Union[BaseStrategy, dict]] = None,
                       **kwargs) -> BaseStrategy:
        """Build as mmengine does; an ``FSDP2Strategy`` also gets ``checkpoint_check``."""
        if isinstance(strategy, dict):
            strategy_type = strategy.get('type')
            cls = STRATEGIES.get(strategy_type) if isinstance(strategy_type, str) \
                else strategy_type
            if isinstance(cls, type) and issubclass(cls, FSDP2Strategy):
                strategy = dict(strategy)
                strategy.setdefault('checkpoint_check', self.cfg.get('checkpoint_check'))
        return super().build_strategy(strategy, **kwargs)

    def save_checkpoint(self, out_dir: str, filename: str,
                        file_client_args: Optional[dict] = None, save_optimizer: bool = True,
                        save_param_scheduler: bool = True, meta: Optional[dict] = None,
                        by_epoch: bool = True, backend_args: Optional[dict] = None) -> None:
        """``FlexibleRunner.save_checkpoint``, keeping a hook's ``epoch`` / ``iter`` and
        saving the random state the next training step starts from. Every rank calls it."""
        if file_client_args is not None:
            raise ValueError('MapFlexibleRunner.save_checkpoint: use backend_args, not '
                             'file_client_args')
        meta = dict(meta or {})
        meta.setdefault('epoch', self.epoch + 1 if by_epoch else self.epoch)
        meta.setdefault('iter', self.iter if by_epoch else self.iter + 1)
        meta['rng_state'] = self.next_step_rng_state()
        if isinstance(self._train_loop, EpochBasedTrainLoop):
            meta.setdefault('iters_per_epoch', len(self._train_loop.dataloader))
        meta.update(cfg=self.cfg.pretty_text, experiment_name=self.experiment_name)
        dataset = getattr(self._train_loop, 'dataloader', None)
        if hasattr(getattr(dataset, 'dataset', None), 'metainfo'):
            meta.update(dataset_meta=dataset.dataset.metainfo)
        checkpoint = dict(meta=meta, message_hub=self.message_hub.state_dict())
        self.strategy.save_checkpoint(
            filename=join_path(out_dir, filename, backend_args=backend_args),
            save_optimizer=save_optimizer, save_param_scheduler=save_param_scheduler,
            extra_ckpt=checkpoint,
            callback=lambda ckpt: self.call_hook('before_save_checkpoint', checkpoint=ckpt))

    def resume(self, filename: str, resume_optimizer: bool = True,
               resume_param_scheduler: bool = True, map_location: str = 'default') -> None:
        """Resume as mmengine does (the strategy restores the generators), then tell an
        epoch loop how far into its epoch the checkpoint was written."""
        self._loaded_meta = None
        super().resume(filename, resume_optimizer, resume_param_scheduler, map_location)
        self.continue_epoch(filename, self._loaded_meta or {})

    def call_hook(self, fn_name: str, **kwargs) -> None:
        """Call the hooks as :class:`MapRunnerConventions` does, noting the meta of a
        checkpoint being loaded (the strategy, not the runner, reads the file)."""
        if fn_name == 'after_load_checkpoint':
            self._loaded_meta = kwargs['checkpoint'].get('meta', {})
        super().call_hook(fn_name, **kwargs)
