"""Training / testing infrastructure: the runners, the FSDP2 strategy, the prediction dump and
input checks."""
from .config_checks import ConfigCheckError, validate_cfg_options
from .dump_predictions import DumpMapPredictions
from .fsdp2_strategy import FSDP2Strategy
from .map_flexible_runner import MapFlexibleRunner
from .map_runner import CheckpointMismatchError, MapRunner
from .map_train_loop import MapEpochBasedTrainLoop
from .runner_conventions import CheckpointResumeError
from .worker_seeding import resumable_worker_init_fn

__all__ = ['MapRunner', 'MapFlexibleRunner', 'FSDP2Strategy', 'MapEpochBasedTrainLoop',
           'CheckpointMismatchError', 'CheckpointResumeError', 'DumpMapPredictions',
           'ConfigCheckError', 'validate_cfg_options', 'resumable_worker_init_fn']
