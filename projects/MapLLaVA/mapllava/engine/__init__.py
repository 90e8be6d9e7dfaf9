"""Training / testing infrastructure: the runner, the prediction dump and input checks."""
from .config_checks import ConfigCheckError, validate_cfg_options
from .dump_predictions import DumpMapPredictions
from .map_runner import CheckpointMismatchError, MapRunner

__all__ = ['MapRunner', 'CheckpointMismatchError', 'DumpMapPredictions', 'ConfigCheckError',
           'validate_cfg_options']
