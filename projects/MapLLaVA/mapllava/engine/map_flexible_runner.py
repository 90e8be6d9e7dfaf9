"""``MapFlexibleRunner``: mmengine's ``FlexibleRunner`` with ``MapRunner``'s conventions, for
configs whose ``strategy`` shards the model (``FSDP2Strategy``).

``FlexibleRunner`` hands building, loading and saving to its strategy; this subclass adds
what ``MapRunner`` adds to ``Runner`` at the runner level:

* the config's ``checkpoint_check`` reaches the strategy, so loading is strict and names the
  keys that do not fit (``CheckpointMismatchError``), with the same allow-patterns;
* ``dump_config`` also writes ``<work_dir>/config.py``.

Atomic saves and the random generators in checkpoints are the strategy's (it writes them).
"""
from __future__ import annotations

import os.path as osp
from typing import Optional, Union

from mmdet3d.registry import RUNNERS
from mmengine._strategy import BaseStrategy
from mmengine.dist import master_only
from mmengine.registry import STRATEGIES
from mmengine.runner import FlexibleRunner

from .fsdp2_strategy import FSDP2Strategy
from .map_runner import atomic_write


@RUNNERS.register_module()
class MapFlexibleRunner(FlexibleRunner):
    """FlexibleRunner passing ``checkpoint_check`` to the strategy and writing config.py."""

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

    @master_only
    def dump_config(self) -> None:
        """Dump as mmengine does, and also to the fixed name ``<work_dir>/config.py``."""
        super().dump_config()
        atomic_write(osp.join(self.work_dir, 'config.py'), self.cfg.pretty_text.encode())
