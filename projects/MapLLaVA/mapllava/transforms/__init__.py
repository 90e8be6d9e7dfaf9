"""Pipeline steps for multi-view vector-map samples (registered in mmdet3d's TRANSFORMS)."""
from .formatting import PackMapInputs
from .loading import CorruptFileError, LoadMapAnnotations, LoadMultiViewImages
from .map_questions import LoadMapQuestions
from .map_targets import MapPermutationTargets, MapRangeFilter, permutation_orders
from .multiview import MultiViewPhotoMetricDistortion, MultiViewRandomAffine, MultiViewResize

__all__ = [
    'CorruptFileError', 'LoadMapAnnotations', 'LoadMapQuestions', 'LoadMultiViewImages',
    'MapPermutationTargets', 'MapRangeFilter', 'MultiViewPhotoMetricDistortion',
    'MultiViewRandomAffine', 'MultiViewResize', 'PackMapInputs', 'permutation_orders'
]
