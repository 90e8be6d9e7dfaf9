from .polyline import resample_polyline

__all__ = ['resample_polyline']
