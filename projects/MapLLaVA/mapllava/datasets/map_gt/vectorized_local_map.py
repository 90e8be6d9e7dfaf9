"""Vector-map GT of one sample from a devkit ``NuScenesMap`` (MapTR's definition).

Per sample the ROI patch (``roi_size`` = (x extent, y extent) in the LiDAR frame) is centred at
the LiDAR origin and rotated by the LiDAR yaw; map geometry is clipped to it in the global
frame and moved into the LiDAR frame. Classes:

* ``divider``: every ``road_divider`` then every ``lane_divider`` line clipped to the patch,
  in drawn direction, one instance per connected piece;
* ``ped_crossing``: rings of the union of the (clipped) crossings, clipped to the ROI grown by
  0.2 m so they stay closed;
* ``boundary``: rings of union(union(road_segment), union(lane)) clipped to the ROI shrunk
  by 0.2 m (so the patch edges drop out), pieces merged;
* ``centerline`` (optional): lane / lane-connector centre paths, see :mod:`.centerline`.

The whole map is indexed once (geometries + STRtree), so a sample costs a tree query and a
few clips instead of MapTR's scan over every record.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from nuscenes.eval.common.utils import quaternion_yaw
from nuscenes.map_expansion.map_api import NuScenesMap, NuScenesMapExplorer
from nuscenes.map_expansion.map_api import locations as MAP_LOCATIONS
from pyquaternion import Quaternion
from shapely import STRtree
from shapely.errors import GEOSException
from shapely.geometry import LineString, Polygon
from shapely.geometry.base import BaseGeometry

from ...utils.polyline import resample_polyline
from .centerline import centerline_paths
from .geometry import line_parts, local_box, polygon_rings_to_lines, to_local, union_parts

MAP_CLASSES = ('divider', 'ped_crossing', 'boundary')
MAP_CLASSES_WITH_CENTERLINE = MAP_CLASSES + ('centerline',)
DIVIDER_LAYERS = ('road_divider', 'lane_divider')
BOUNDARY_LAYERS = ('road_segment', 'lane')
CENTERLINE_LAYERS = ('lane', 'lane_connector')
#: margins MapTR clips the rings with: crossings grow (stay closed), boundaries shrink.
PED_MARGIN = 0.2
BOUNDARY_MARGIN = -0.2


class MapFormatError(ValueError):
    """A map-expansion file or nuScenes table lacks a field the converter needs."""


def load_nusc_map(dataroot: str, location: str) -> NuScenesMap:
    """Load a devkit map with errors that name the location / file at fault."""
    if location not in MAP_LOCATIONS:
        raise ValueError(f'unknown map location {location!r}; nuScenes maps: {MAP_LOCATIONS}')
    path = os.path.join(dataroot, 'maps', 'expansion', f'{location}.json')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'map-expansion file not found: {path} (unpack the nuScenes '
                                f'map expansion v1.3 into {os.path.join(dataroot, "maps")})')
    try:
        return NuScenesMap(dataroot=dataroot, map_name=location)
    except (KeyError, TypeError, IndexError) as e:
        raise MapFormatError(f'malformed map-expansion file {path}: {type(e).__name__} {e}') from e


def lidar_pose_2d(lidar2global: np.ndarray) -> tuple[float, float, float]:
    """x, y and yaw (heading of the LiDAR x axis, devkit ``quaternion_yaw``) of a 4x4 pose."""
    rot = Quaternion(matrix=np.asarray(lidar2global, dtype=np.float64)[:3, :3])
    return float(lidar2global[0, 3]), float(lidar2global[1, 3]), float(quaternion_yaw(rot))


class _LayerIndex:
    """Geometries of one map layer in record order with an STRtree over them."""

    def __init__(self, geoms: list[BaseGeometry], tokens: list[str]) -> None:
        self.geoms = geoms
        self.tokens = tokens
        self.tree = STRtree(geoms)

    def query(self, patch: Polygon) -> list[int]:
        """Record indices (ascending, i.e. MapTR's iteration order) touching ``patch``."""
        return sorted(int(i) for i in self.tree.query(patch, predicate='intersects'))


class VectorizedLocalMap:
    """Extract the vector GT of a sample from one map (one instance per location).

    Args:
        nusc_map: the devkit map of the location.
        roi_size: (x, y) extent of the ROI in the LiDAR frame, metres; MapTR's default
            ``(30, 60)`` is x in [-15, 15] (right), y in [-30, 30] (forward).
        with_centerline: also extract the ``centerline`` class (label 3).
        num_resample: points of the arc-length resampling stored next to the vertices.
    """

    def __init__(self, nusc_map: NuScenesMap, roi_size: Sequence[float] = (30., 60.),
                 with_centerline: bool = False, num_resample: int = 20) -> None:
        self.nusc_map = nusc_map
        self.roi_size = (float(roi_size[0]), float(roi_size[1]))
        self.with_centerline = with_centerline
        self.num_resample = num_resample
        self.classes = MAP_CLASSES_WITH_CENTERLINE if with_centerline else MAP_CLASSES
        self._lines = {name: self._index_lines(name) for name in DIVIDER_LAYERS}
        poly_layers = ('ped_crossing',) + BOUNDARY_LAYERS
        if with_centerline:
            poly_layers += ('lane_connector',)
        self._polys = {name: self._index_polygons(name) for name in poly_layers}
        self._centre_paths: dict[str, LineString] = {}

    # ------------------------------------------------------------------ map indexing
    def _records(self, layer: str) -> list[dict]:
        return getattr(self.nusc_map, layer)

    def _index_lines(self, layer: str) -> _LayerIndex:
        geoms, tokens = [], []
        for i, rec in enumerate(self._records(layer)):
            try:
                line = self.nusc_map.extract_line(rec['line_token'])
            except KeyError as e:
                raise MapFormatError(f'{self.nusc_map.json_fname}: {layer}[{i}] refers to a '
                                     f'missing line/node ({e})') from e
            except (ValueError, GEOSException):  # fewer than 2 nodes: an empty line
                line = LineString()
            geoms.append(line)
            tokens.append(rec['token'])
        return _LayerIndex(geoms, tokens)

    def _index_polygons(self, layer: str) -> _LayerIndex:
        geoms, tokens = [], []
        for i, rec in enumerate(self._records(layer)):
            if rec.get('polygon_token') is None:  # some lane connectors have no polygon
                poly = Polygon()
            else:
                try:
                    poly = self.nusc_map.extract_polygon(rec['polygon_token'])
                except KeyError as e:
                    raise MapFormatError(f'{self.nusc_map.json_fname}: {layer}[{i}] refers to '
                                         f'a missing polygon/node ({e})') from e
                except (ValueError, GEOSException):  # < 3 nodes
                    poly = Polygon()
            # MapTR skips invalid polygons; an empty one never intersects the patch either.
            geoms.append(poly if poly.is_valid else Polygon())
            tokens.append(rec['token'])
        return _LayerIndex(geoms, tokens)

    # ------------------------------------------------------------------ extraction
    def patch_polygon(self, x: float, y: float, yaw: float) -> Polygon:
        """The ROI as a global-frame polygon (devkit ``get_patch_coord``, MapTR's patch_box)."""
        patch_box = (x, y, self.roi_size[1], self.roi_size[0])
        return NuScenesMapExplorer.get_patch_coord(patch_box, math.degrees(yaw))

    def _clipped(self, kind: str, layer: str, patch: Polygon) -> list[tuple[str, BaseGeometry]]:
        index = (self._lines if kind == 'line' else self._polys)[layer]
        out = []
        for i in index.query(patch):
            geom = index.geoms[i].intersection(patch)
            if not geom.is_empty:
                out.append((index.tokens[i], geom))
        return out

    def instances(self, x: float, y: float, yaw: float) -> list[tuple[int, LineString]]:
        """(label, LiDAR-frame LineString) for every GT element, in MapTR's class order."""
        patch = self.patch_polygon(x, y, yaw)

        def local(g: BaseGeometry) -> BaseGeometry:
            return to_local(g, x, y, yaw)

        out: list[tuple[int, LineString]] = []
        for layer in DIVIDER_LAYERS:
            for _, geom in self._clipped('line', layer, patch):
                out += [(0, part) for part in line_parts(local(geom))]

        peds = union_parts(local(g) for _, g in self._clipped('poly', 'ped_crossing', patch))
        out += [(1, ln) for ln in
                polygon_rings_to_lines(peds, local_box(self.roi_size, PED_MARGIN))]

        # MapTR's union(union(road_segment), union(lane)) is this one union of both layers
        road = union_parts(local(g) for layer in BOUNDARY_LAYERS
                           for _, g in self._clipped('poly', layer, patch))
        out += [(2, ln) for ln in
                polygon_rings_to_lines(road, local_box(self.roi_size, BOUNDARY_MARGIN))]

        if self.with_centerline:
            out += [(3, ln) for ln in self._centerlines(patch, local)]
        return out

    def _centre_path(self, token: str) -> LineString:
        """Arcline centre path of a lane, discretized every 0.5 m (cached per map)."""
        if token not in self._centre_paths:
            poses = self.nusc_map.discretize_lanes([token], 0.5)[token]
            self._centre_paths[token] = (LineString(np.round(np.asarray(poses)[:, :2], 3))
                                         if len(poses) >= 2 else LineString())
        return self._centre_paths[token]

    def _centerlines(self, patch: Polygon, local) -> list[LineString]:
        lanes = {}
        for layer in CENTERLINE_LAYERS:
            for token, _ in self._clipped('poly', layer, patch):
                path = self._centre_path(token)
                if path.is_empty:
                    continue
                clipped = path.intersection(patch)
                if clipped.is_empty:
                    continue
                conn = self.nusc_map.connectivity.get(token, {})
                lanes[token] = dict(centerline=local(clipped),
                                    incoming=conn.get('incoming', []),
                                    outgoing=conn.get('outgoing', []))
        return centerline_paths(lanes)

    def extract(self, lidar2global: np.ndarray) -> dict:
        """``map_annos`` of docs/data_format.md for a sample with this LiDAR pose."""
        return self.annos_from_instances(self.instances(*lidar_pose_2d(lidar2global)))

    def annos_from_instances(self, instances: list[tuple[int, LineString]]) -> dict:
        """Pack (label, line) pairs as float32 arrays, clamped to the ROI against round-off."""
        hx, hy = self.roi_size[0] / 2, self.roi_size[1] / 2
        vectors = []
        for _, line in instances:
            pts = np.asarray(line.coords, dtype=np.float64)[:, :2]
            pts[:, 0] = np.clip(pts[:, 0], -hx, hx)
            pts[:, 1] = np.clip(pts[:, 1], -hy, hy)
            vectors.append(pts.astype(np.float32))
        return make_map_annos([lab for lab, _ in instances], vectors, self.num_resample)


def make_map_annos(labels: Sequence[int], vectors: Sequence[np.ndarray],
                   num_resample: int = 20) -> dict:
    """Build the ``map_annos`` dict (labels, vertices, resampling, bboxes, closed flags)."""
    vectors = [np.asarray(v, dtype=np.float32) for v in vectors]
    if vectors:
        resampled = np.stack([resample_polyline(v, num_resample) for v in vectors])
        bboxes = np.stack([np.concatenate([v.min(0), v.max(0)]) for v in vectors])
    else:
        resampled = np.zeros((0, num_resample, 2), np.float32)
        bboxes = np.zeros((0, 4), np.float32)
    return dict(
        labels=np.asarray(labels, dtype=np.int64).reshape(-1),
        vectors=vectors,
        vectors_resampled=resampled.astype(np.float32),
        bboxes=bboxes.astype(np.float32),
        is_closed=np.array([len(v) > 2 and bool(np.all(v[0] == v[-1])) for v in vectors],
                           dtype=bool))
