"""Chamfer-distance mAP for vectorized maps (MapTR protocol): fast core and mmengine metric."""
from .chamfer_ap import ChamferAPResult, compute_chamfer_ap
from .chamfer_map_metric import (
    MAP_CLASSES,
    ChamferMapMetric,
    evaluate_map_predictions,
    format_table,
    metrics_dict,
)

__all__ = [
    'ChamferAPResult', 'compute_chamfer_ap', 'ChamferMapMetric', 'evaluate_map_predictions',
    'format_table', 'metrics_dict', 'MAP_CLASSES'
]
