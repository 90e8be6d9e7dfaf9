"""Chamfer-distance mAP for vectorized maps (MapTR protocol): fast core and mmengine metric."""
from .chamfer_ap import ChamferAPResult, chamfer_ap

__all__ = ['ChamferAPResult', 'chamfer_ap']
