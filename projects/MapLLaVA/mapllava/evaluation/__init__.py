"""Chamfer-distance mAP for vectorized maps (MapTR protocol): fast core and mmengine metric."""
from .chamfer_ap import ChamferAPResult, compute_chamfer_ap

__all__ = ['ChamferAPResult', 'compute_chamfer_ap']
