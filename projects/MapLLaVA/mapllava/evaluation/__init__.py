"""Chamfer-distance mAP for vectorized maps (MapTR protocol): fast core and mmengine metric;
accuracy of the answers to map questions."""
from .chamfer_ap import ChamferAPResult, compute_chamfer_ap
from .chamfer_map_metric import (
    MAP_CLASSES,
    ChamferMapMetric,
    evaluate_map_predictions,
    format_table,
    metrics_dict,
)
from .map_qa_metric import (
    MapQAMetric,
    answer_histogram,
    evaluate_qa_predictions,
    majority_answers,
    majority_baseline,
)

__all__ = [
    'ChamferAPResult', 'compute_chamfer_ap', 'ChamferMapMetric', 'evaluate_map_predictions',
    'format_table', 'metrics_dict', 'MAP_CLASSES', 'MapQAMetric', 'answer_histogram',
    'evaluate_qa_predictions', 'majority_answers', 'majority_baseline'
]
