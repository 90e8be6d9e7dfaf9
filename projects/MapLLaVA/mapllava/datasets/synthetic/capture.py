"""Render and write the sensor files of one sample (the unit of work of the generator).

A worker keeps the world of its current scene (rasters, buildings, style) and renders every
sample_data of a keyframe: six images, the keyframe lidar sweep and the sweeps before it. The
per-object lidar hit counts it returns become the annotations' ``num_lidar_pts``.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import cv2
import numpy as np
from pyquaternion import Quaternion

from .raster import LabelRaster, marking_polygons, rasterize
from .raycast import Boxes
from .renderer import Style, World, render_camera, render_lidar, scene_style
from .road_network import LOCATIONS, RoadNetwork, build_road_network
from .scenes import SceneSpec
from .sensor_rig import LIDAR, Sensor
from .traffic import Actor, place_buildings

FINE_RES, FINE_MARGIN = 0.05, 80.0        # m/px and m around the ego path
COARSE_RES, COARSE_MARGIN = 0.25, 320.0
LIDAR_AZIMUTH_STEPS = 540
JPEG_QUALITY = 92
_KIND = {'vehicle': 0, 'human': 1, 'movable_object': 2}


@dataclass
class SceneWorld:
    """The static part of a scene's world, built once per worker and scene."""
    raster: LabelRaster
    actors: list[Actor]      # plan actors first (their indices are annotation ids), then scenery
    kinds: np.ndarray
    colours: np.ndarray
    sizes: np.ndarray
    style: Style

    def at(self, t: float) -> World:
        centres, yaws = zip(*(a.box(t) for a in self.actors))
        return World(self.raster, Boxes(np.array(centres), self.sizes, np.array(yaws)),
                     self.colours, self.kinds, self.style)


@functools.lru_cache(maxsize=4)
def network(location: str, seed: int) -> RoadNetwork:
    """Road network of a location (cached: every scene there shares it)."""
    return build_road_network(location, seed)


@functools.lru_cache(maxsize=4)
def buildings(location: str, seed: int) -> tuple[Actor, ...]:
    """Buildings of a location (cached, shared by its scenes)."""
    rng = np.random.default_rng([seed, sorted(LOCATIONS).index(location), 3])
    return tuple(place_buildings(network(location, seed), rng))


@functools.lru_cache(maxsize=4)
def markings(location: str, seed: int) -> tuple:
    """Painted marking polygons of a location (cached, shared by its rasters)."""
    return tuple(marking_polygons(network(location, seed)))


def scene_world(spec: SceneSpec, seed: int, fine_res: float = FINE_RES) -> SceneWorld:
    """Rasters around the ego path, actors and lighting of a scene (``fine_res``: metres per
    pixel of the ground raster near the ego; large images want a finer one)."""
    net = network(spec.record.location, seed)
    xy = np.array([r.ego_pose[:2] for r in spec.record.readings])
    lo, hi = xy.min(0), xy.max(0)
    paint = list(markings(spec.record.location, seed))
    coarse = rasterize(net, (*(lo - COARSE_MARGIN), *(hi + COARSE_MARGIN)), COARSE_RES,
                       markings=paint)
    fine = rasterize(net, (*(lo - FINE_MARGIN), *(hi + FINE_MARGIN)), fine_res, coarse, paint)
    actors = list(spec.plan.actors) + list(buildings(spec.record.location, seed))
    kinds = np.array([3 if a.category is None else _KIND[a.category.split('.')[0]]
                      for a in actors])
    style = scene_style(np.random.default_rng([seed, spec.index, 2]))
    return SceneWorld(fine, actors, kinds, np.array([a.colour for a in actors]),
                      np.array([a.size for a in actors], dtype=np.float64), style)


def ego2global(pose: tuple[float, float, float]) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Quaternion(axis=[0.0, 0.0, 1.0], angle=pose[2]).rotation_matrix
    m[:3, 3] = [pose[0], pose[1], 0.0]
    return m


def capture_sample(spec: SceneSpec, world: SceneWorld, keyframe: int, rig: list[Sensor],
                   root: str, seed: int) -> dict[int, int]:
    """Write every file of sample ``keyframe``; return lidar points per plan actor."""
    sensors = {s.channel: s for s in rig}
    counts: dict[int, int] = {}
    for r in spec.record.readings:
        if r.keyframe != keyframe:
            continue
        s = sensors[r.channel]
        rng = np.random.default_rng([seed, spec.index, r.timestamp % (1 << 32),
                                     list(sensors).index(r.channel)])
        w = world.at(spec.time_of(r.timestamp))
        pose = ego2global(r.ego_pose) @ s.sensor2ego()
        path = os.path.join(root, r.filename)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if r.channel == LIDAR:
            points, box_ids = render_lidar(w, pose, rng, LIDAR_AZIMUTH_STEPS)
            points.tofile(path)
            if r.is_key_frame:
                ids, n = np.unique(box_ids[(box_ids >= 0) & (box_ids < len(spec.plan.actors))],
                                   return_counts=True)
                counts = dict(zip(ids.tolist(), n.tolist()))
        else:
            img = render_camera(w, pose, s.intrinsic, s.width, s.height, rng)
            # Full-resolution chroma keeps thin yellow lines yellow in small images.
            ok, buf = cv2.imencode('.jpg', cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY,
                                    cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                    cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
            assert ok, f'JPEG encoding failed for {path}'
            with open(path, 'wb') as f:
                f.write(buf.tobytes())
    return counts
