"""Runtime hooks: checkpoint naming and per-group learning-rate logging."""
from .group_lr_logger_hook import GroupLRLoggerHook
from .map_checkpoint_hook import MapCheckpointHook

__all__ = ['GroupLRLoggerHook', 'MapCheckpointHook']
