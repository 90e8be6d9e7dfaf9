"""Pipeline steps for multi-view vector-map samples (registered in mmdet3d's TRANSFORMS)."""
from .formatting import PackMapInputs
from .loading import LoadMapAnnotations, LoadMultiViewImages
from .map_targets import MapPermutationTargets, MapRangeFilter, permutation_orders
from .multiview import MultiViewPhotoMetricDistortion, MultiViewRandomAffine, MultiViewResize

__all__ = [
    'LoadMapAnnotations', 'LoadMultiViewImages', 'MapPermutationTargets', 'MapRangeFilter',
    'MultiViewPhotoMetricDistortion', 'MultiViewRandomAffine', 'MultiViewResize', 'PackMapInputs',
    'permutation_orders'
]
