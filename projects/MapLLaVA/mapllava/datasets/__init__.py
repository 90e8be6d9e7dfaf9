"""Datasets and the vector-map GT converter."""
from .map_gt import MAP_CLASSES, MAP_CLASSES_WITH_CENTERLINE, VectorizedLocalMap
from .nuscenes_map_dataset import NuScenesMapDataset

__all__ = ['MAP_CLASSES', 'MAP_CLASSES_WITH_CENTERLINE', 'NuScenesMapDataset',
           'VectorizedLocalMap']
