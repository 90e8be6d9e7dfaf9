"""Synthetic nuScenes: a generator of small, deterministic datasets in the exact nuScenes layout.

nuScenes itself cannot be downloaded here, so tests, demos and training runs use worlds built
from a procedural road network: map-expansion JSON the devkit loads, six camera images rendered
from the map through the stored calibration, lidar sweeps, and the 13 tables.
"""
from .generator import MARKER, GeneratorConfig, OutputFolderError, generate
from .map_expansion import build_map_json, write_map
from .road_network import LOCATIONS, RoadNetwork, build_road_network
from .scenes import VERSIONS, scene_names
from .sensor_rig import CAMERAS, LIDAR, Sensor, build_rig

__all__ = ['MARKER', 'GeneratorConfig', 'OutputFolderError', 'generate', 'build_map_json',
           'write_map', 'LOCATIONS', 'RoadNetwork', 'build_road_network', 'VERSIONS',
           'scene_names', 'CAMERAS', 'LIDAR', 'Sensor', 'build_rig']
