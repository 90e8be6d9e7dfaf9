"""BEV encoder: multi-view images (+ LiDAR) → a BEV map on the project grid (see grid.py)."""
from .bev_pool import depth_weighted_bev_pool
from .bevfusion_encoder import BEVFusionEncoder
from .conv_fuser import ConvFuser
from .depth_targets import depth_bce_loss, depth_bin_targets
from .grid import DEFAULT_BEV_SIZE, DEFAULT_PC_RANGE, BEVGrid, resample_bev
from .lss_fpn import LSSFPN
from .lss_view_transform import LSSViewTransform, stack_calib

__all__ = [
    'BEVFusionEncoder', 'ConvFuser', 'LSSFPN', 'LSSViewTransform', 'BEVGrid', 'resample_bev',
    'depth_weighted_bev_pool', 'depth_bce_loss', 'depth_bin_targets', 'stack_calib',
    'DEFAULT_PC_RANGE', 'DEFAULT_BEV_SIZE'
]
