"""Runtime hooks: checkpoint naming, per-group learning-rate logging, divergence stop."""
from .divergence_check_hook import DivergenceCheckHook, TrainingDivergedError
from .group_lr_logger_hook import GroupLRLoggerHook
from .map_checkpoint_hook import MapCheckpointHook

__all__ = ['DivergenceCheckHook', 'GroupLRLoggerHook', 'MapCheckpointHook',
           'TrainingDivergedError']
