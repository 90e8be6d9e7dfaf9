from .fp32_deformable_attention import FP32MultiScaleDeformableAttention
from .map_decoder import MapDecoderLayer
from .map_head import MapTRHead, denormalize_pts, normalize_pts

__all__ = [
    'FP32MultiScaleDeformableAttention', 'MapDecoderLayer', 'MapTRHead', 'denormalize_pts',
    'normalize_pts'
]
