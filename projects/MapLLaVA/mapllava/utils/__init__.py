from .polyline import resample_polyline
from .safe_checkpoint import register_safe_globals
from .safe_pickle import UnsafePickleError, load_data_file, safe_load_pickle

__all__ = ['resample_polyline', 'register_safe_globals', 'UnsafePickleError', 'load_data_file',
           'safe_load_pickle']
