from .map_decoder import MapDecoderLayer
from .map_head import MapTRHead, denormalize_pts, normalize_pts

__all__ = ['MapDecoderLayer', 'MapTRHead', 'denormalize_pts', 'normalize_pts']
