"""Vector-map GT ("GT cache") converter: nuScenes map expansion -> info files."""
from .info_builder import (
    CAMERAS,
    add_language_targets,
    create_nuscenes_map_infos,
    dump_atomic,
    load_nuscenes,
    sample_entry,
)
from .vectorized_local_map import (
    MAP_CLASSES,
    MAP_CLASSES_WITH_CENTERLINE,
    MapFormatError,
    VectorizedLocalMap,
    lidar_pose_2d,
    load_nusc_map,
    make_map_annos,
)

__all__ = [
    'CAMERAS', 'MAP_CLASSES', 'MAP_CLASSES_WITH_CENTERLINE', 'MapFormatError',
    'VectorizedLocalMap', 'add_language_targets', 'create_nuscenes_map_infos', 'dump_atomic',
    'lidar_pose_2d', 'load_nusc_map', 'load_nuscenes', 'make_map_annos', 'sample_entry'
]
