from .polyline import resample_polyline
from .safe_checkpoint import register_safe_globals

__all__ = ['resample_polyline', 'register_safe_globals']
