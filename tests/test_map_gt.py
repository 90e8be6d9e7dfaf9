"""Vector-map GT converter on hand-made map-expansion files (no nuScenes data needed).

Each map is written in the LiDAR frame of a chosen pose and moved to the global frame, so the
expected GT is the hand-written geometry clipped to the ROI x in [-15, 15], y in [-30, 30].
"""
from __future__ import annotations

import itertools
import json
import math
import os
import pickle

import numpy as np
import pytest
from shapely.geometry import LinearRing, Polygon, box
from shapely.ops import unary_union

from projects.MapLLaVA.mapllava.datasets.map_gt import (
    MapFormatError,
    VectorizedLocalMap,
    load_nusc_map,
)
from projects.MapLLaVA.mapllava.datasets.map_gt.geometry import MIN_RING_AREA, union_parts
from projects.MapLLaVA.mapllava.datasets.map_gt.info_builder import dump_atomic, load_nuscenes

LOCATION = 'boston-seaport'
TABLES = ('polygon', 'line', 'node', 'drivable_area', 'road_segment', 'road_block', 'lane',
          'ped_crossing', 'walkway', 'stop_line', 'carpark_area', 'road_divider',
          'lane_divider', 'traffic_light', 'lane_connector')


class MapBuilder:
    """Writes the minimal map-expansion JSON the devkit's ``NuScenesMap`` loads.

    Coordinates are given in the LiDAR frame of ``pose`` = (x, y, yaw) and stored globally.
    """

    def __init__(self, pose: tuple[float, float, float]) -> None:
        self.pose = pose
        self.t = {name: [] for name in TABLES}
        self.arclines: dict[str, list] = {}
        self.connectivity: dict[str, dict] = {}
        self._ids = itertools.count()

    def _tok(self, kind: str) -> str:
        return f'{kind}-{next(self._ids):05d}'

    def to_global(self, pts) -> np.ndarray:
        x, y, yaw = self.pose
        c, s = math.cos(yaw), math.sin(yaw)
        p = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        return np.stack([x + c * p[:, 0] - s * p[:, 1], y + s * p[:, 0] + c * p[:, 1]], 1)

    def _nodes(self, pts) -> list[str]:
        toks = []
        for gx, gy in self.to_global(pts):
            toks.append(self._tok('node'))
            self.t['node'].append(dict(token=toks[-1], x=float(gx), y=float(gy)))
        return toks

    def _polygon(self, exterior, holes=()) -> str:
        tok = self._tok('polygon')
        self.t['polygon'].append(dict(
            token=tok, exterior_node_tokens=self._nodes(exterior),
            holes=[dict(node_tokens=self._nodes(h)) for h in holes]))
        return tok

    def _line(self, pts) -> str:
        tok = self._tok('line')
        self.t['line'].append(dict(token=tok, node_tokens=self._nodes(pts)))
        return tok

    def road_divider(self, pts) -> None:
        self.t['road_divider'].append(dict(token=self._tok('rd'), line_token=self._line(pts),
                                           road_segment_token=None))

    def lane_divider(self, pts) -> None:
        self.t['lane_divider'].append(dict(token=self._tok('ld'), line_token=self._line(pts),
                                           lane_divider_segments=[]))

    def ped_crossing(self, exterior) -> None:
        self.t['ped_crossing'].append(dict(token=self._tok('ped'),
                                           polygon_token=self._polygon(exterior),
                                           road_segment_token=None))

    def road_segment(self, exterior, holes=()) -> None:
        self.t['road_segment'].append(dict(
            token=self._tok('road'), polygon_token=self._polygon(exterior, holes),
            is_intersection=False, drivable_area_token=''))

    def lane(self, exterior, centre=None, layer='lane', incoming=(), outgoing=()) -> str:
        tok = self._tok(layer)
        rec = dict(token=tok, polygon_token=self._polygon(exterior))
        if layer == 'lane':
            rec.update(lane_type='CAR', from_edge_line_token=None, to_edge_line_token=None,
                       left_lane_divider_segments=[], right_lane_divider_segments=[])
        self.t[layer].append(rec)
        if centre is not None:  # a straight arcline from centre[0] to centre[1]
            (g0, g1) = self.to_global(centre)
            heading = math.atan2(g1[1] - g0[1], g1[0] - g0[0])
            self.arclines[tok] = [dict(start_pose=[g0[0], g0[1], heading],
                                       end_pose=[g1[0], g1[1], heading], shape='LSR',
                                       radius=999.0, segment_length=[0.0, float(
                                           np.linalg.norm(g1 - g0)), 0.0])]
        self.connectivity[tok] = dict(incoming=list(incoming), outgoing=list(outgoing))
        return tok

    def write(self, root, drop_table: str | None = None) -> str:
        obj = dict(version='1.3', canvas_edge=[3000.0, 3000.0], arcline_path_3=self.arclines,
                   connectivity=self.connectivity, **self.t)
        if drop_table:
            del obj[drop_table]
        os.makedirs(os.path.join(root, 'maps', 'expansion'), exist_ok=True)
        with open(os.path.join(root, 'maps', 'expansion', f'{LOCATION}.json'), 'w') as f:
            json.dump(obj, f)
        return str(root)


def lidar2global(pose) -> np.ndarray:
    x, y, yaw = pose
    m = np.eye(4)
    m[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    m[:3, 3] = [x, y, 1.8]
    return m


def extract(builder: MapBuilder, root, **kw) -> dict:
    vmap = VectorizedLocalMap(load_nusc_map(builder.write(root), LOCATION), **kw)
    return vmap.extract(lidar2global(builder.pose))


def by_label(annos: dict, label: int) -> list[np.ndarray]:
    return [v for v, lab in zip(annos['vectors'], annos['labels']) if lab == label]


def assert_lines(actual: list[np.ndarray], expected: list[list], atol=1e-4) -> None:
    """Same polylines (order of instances free, vertex order exact)."""
    assert len(actual) == len(expected), (actual, expected)
    left = [np.asarray(e, np.float64) for e in expected]
    for a in actual:
        hit = [i for i, e in enumerate(left)
               if e.shape == a.shape and np.allclose(a, e, atol=atol)]
        assert hit, f'unexpected {a.tolist()}; expected one of {[e.tolist() for e in left]}'
        left.pop(hit[0])


def signed_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


# Pose of the LiDAR of a car driving east in the rightmost lane (LiDAR x = right of the car,
# so the LiDAR yaw is the car heading minus 90 deg).
STRAIGHT_POSE = (612.3, 1450.7, -math.pi / 2)


def straight_road(builder: MapBuilder) -> MapBuilder:
    """Four lanes along LiDAR y; x in [-14, 2], road divider at x=-6, lane dividers at -2, -10."""
    builder.road_segment([(-14, -100), (2, -100), (2, 100), (-14, 100)])
    for x0 in (-14, -10, -6, -2):
        builder.lane([(x0, -100), (x0 + 4, -100), (x0 + 4, 100), (x0, 100)])
    builder.road_divider([(-6, -100), (-6, 0), (-6, 100)])
    builder.lane_divider([(-2, 100), (-2, -100)])  # drawn backwards: direction must be kept
    builder.lane_divider([(-10, -100), (-10, 100)])
    builder.ped_crossing([(-14, 10), (2, 10), (2, 14), (-14, 14)])
    return builder


def test_straight_road(tmp_path):
    annos = extract(straight_road(MapBuilder(STRAIGHT_POSE)), tmp_path)
    # order: road dividers, lane dividers, crossings, boundaries
    assert annos['labels'].tolist() == [0, 0, 0, 1, 2, 2]
    assert_lines(by_label(annos, 0), [[(-6, -30), (-6, 0), (-6, 30)],
                                      [(-2, 30), (-2, -30)], [(-10, -30), (-10, 30)]])
    assert np.allclose(annos['vectors'][0], [(-6, -30), (-6, 0), (-6, 30)], atol=1e-4)
    (ped,) = by_label(annos, 1)
    assert np.array_equal(ped[0], ped[-1]) and len(ped) == 5
    assert signed_area(ped) < 0  # exteriors clockwise
    assert {tuple(p) for p in np.round(ped, 4)} == {(-14, 10), (2, 10), (2, 14), (-14, 14)}
    # road rectangle clipped to the ROI shrunk by 0.2 m: its two long sides, clockwise
    assert_lines(by_label(annos, 2), [[(-14, -29.8), (-14, 29.8)], [(2, 29.8), (2, -29.8)]])
    assert annos['is_closed'].tolist() == [False, False, False, True, False, False]


def test_annos_format_and_roi(tmp_path):
    annos = extract(straight_road(MapBuilder(STRAIGHT_POSE)), tmp_path)
    m = len(annos['labels'])
    assert annos['labels'].dtype == np.int64
    assert all(v.dtype == np.float32 and v.ndim == 2 and v.shape[1] == 2
               for v in annos['vectors'])
    assert annos['vectors_resampled'].shape == (m, 20, 2)
    assert annos['vectors_resampled'].dtype == np.float32
    assert annos['bboxes'].shape == (m, 4) and annos['bboxes'].dtype == np.float32
    assert annos['is_closed'].dtype == bool
    for v, rs, bb in zip(annos['vectors'], annos['vectors_resampled'], annos['bboxes']):
        assert np.all(np.abs(v[:, 0]) <= 15) and np.all(np.abs(v[:, 1]) <= 30)
        assert np.allclose(rs[0], v[0]) and np.allclose(rs[-1], v[-1])
        assert np.allclose(bb, [*v.min(0), *v.max(0)])


def test_line_leaving_and_reentering_is_split(tmp_path):
    b = MapBuilder((100.0, 200.0, 0.4))
    b.lane_divider([(10, -25), (25, -15), (10, -5)])  # out through x = 15 and back
    annos = extract(b, tmp_path)
    assert_lines(annos['vectors'], [[(10, -25), (15, -25 + 10 * 5 / 15)],
                                    [(15, -5 - 10 * 5 / 15), (10, -5)]])


def test_overlapping_crossings_are_merged(tmp_path):
    b = MapBuilder((10.0, 20.0, 1.0))
    b.ped_crossing([(-5, 0), (5, 0), (5, 4), (-5, 4)])
    b.ped_crossing([(3, 0), (9, 0), (9, 4), (3, 4)])
    b.ped_crossing([(-14, 28), (-10, 28), (-10, 33), (-14, 33)])  # cut by the ROI edge
    annos = extract(b, tmp_path)
    rings = by_label(annos, 1)
    assert len(rings) == 2 and annos['is_closed'].all()
    shapes = [Polygon(r) for r in rings]  # union keeps collinear vertices

    def same(p: Polygon, q: Polygon) -> bool:  # up to float noise of the map transform
        return p.symmetric_difference(q).area < 1e-9 and p.area == pytest.approx(q.area)

    assert any(same(p, box(-5, 0, 9, 4)) for p in shapes)
    assert any(same(p, box(-14, 28, -10, 30)) for p in shapes)
    assert all(signed_area(r) < 0 for r in rings)


def intersection(builder: MapBuilder) -> MapBuilder:
    """A plus-shaped crossing of two 16 m roads with a traffic island in the forward arm."""
    builder.road_segment([(-8, -80), (8, -80), (8, 80), (-8, 80)],
                         holes=[[(-2, 14), (2, 14), (2, 22), (-2, 22)]])
    builder.road_segment([(-80, -8), (80, -8), (80, 8), (-80, 8)])
    builder.lane([(0, -80), (8, -80), (8, -8), (0, -8)])  # inside the road: union unchanged
    return builder


def test_intersection_boundaries(tmp_path):
    annos = extract(intersection(MapBuilder((-331.0, 87.5, math.radians(30)))), tmp_path)
    assert set(annos['labels'].tolist()) == {2}
    closed = annos['is_closed']
    # the four corners of the plus, clipped to the ROI shrunk by 0.2 m, clockwise
    assert_lines([v for v, c in zip(annos['vectors'], closed) if not c], [
        [(8, 29.8), (8, 8), (14.8, 8)],
        [(14.8, -8), (8, -8), (8, -29.8)],
        [(-8, -29.8), (-8, -8), (-14.8, -8)],
        [(-14.8, 8), (-8, 8), (-8, 29.8)]])
    # the island: interior ring, counter-clockwise, closed (start vertex free)
    (island,) = [v for v, c in zip(annos['vectors'], closed) if c]
    assert signed_area(island) > 0
    assert {tuple(p) for p in np.round(island, 4)} == {(-2, 14), (2, 14), (2, 22), (-2, 22)}


def test_island_filled_up_to_round_off_is_no_boundary(tmp_path):
    """A lane that fills a road's island but for a 0.1 um crack: MapTR's plain union keeps the
    crack as a hole whose ring would be one more (invisible) boundary; the converter drops
    rings enclosing less than MIN_RING_AREA and keeps the real island of the plus."""
    crack = 1e-7
    b = intersection(MapBuilder((-331.0, 87.5, math.radians(30))))
    b.lane([(-2 + crack, 14), (2, 14), (2, 22), (-2 + crack, 22)])
    filled = extract(b, tmp_path)
    assert all(lab == 2 for lab in filled['labels'].tolist())
    assert not filled['is_closed'].any()  # the island is filled: no closed ring is left
    assert len(filled['labels']) == 4  # the plus's four corners
    # precondition: without the area rule the crack is a hole of the union
    road = unary_union([Polygon([(-8, -80), (8, -80), (8, 80), (-8, 80)],
                                [[(-2, 14), (2, 14), (2, 22), (-2, 22)]]),
                        Polygon([(-2 + crack, 14), (2, 14), (2, 22), (-2 + crack, 22)])])
    assert len(road.interiors) == 1 and road.interiors[0].length > 16


def test_union_parts_drops_round_off_rings_only():
    frame = Polygon([(0, 0), (4, 0), (4, 4), (0, 4)], [[(1, 1), (3, 1), (3, 3), (1, 3)]])
    plug = box(1 + 1e-12, 1, 3, 3)  # fills the hole but for a 1e-12 m sliver
    assert len(unary_union([frame, plug]).interiors) == 1  # MapTR's union: a crack ring
    (whole,) = union_parts([frame, plug])
    assert not whole.interiors and whole.area == pytest.approx(16)
    (kept,) = union_parts([frame])  # a real hole stays
    assert len(kept.interiors) == 1
    assert union_parts([box(0, 0, 1, 1e-9)]) == []  # a zero-width sliver is no road
    assert union_parts([]) == [] and union_parts([Polygon()]) == []
    assert box(0, 0, 0.03, 0.03).area < MIN_RING_AREA < box(0, 0, 0.04, 0.04).area


def assert_lines_subset(actual, expected):
    """Every expected line appears among the actual ones."""
    for e in expected:
        assert any(a.shape == np.shape(e) and np.allclose(a, e, atol=1e-4) for a in actual), e


def test_empty_roi_keeps_empty_annos(tmp_path):
    b = straight_road(MapBuilder(STRAIGHT_POSE))
    b.pose = (STRAIGHT_POSE[0] + 500, STRAIGHT_POSE[1] + 500, 0.0)  # far from the road
    vmap = VectorizedLocalMap(load_nusc_map(b.write(tmp_path), LOCATION))
    annos = vmap.extract(lidar2global((STRAIGHT_POSE[0] + 500, STRAIGHT_POSE[1] + 500, 0.0)))
    assert len(annos['labels']) == 0 and annos['vectors'] == []
    assert annos['vectors_resampled'].shape == (0, 20, 2)
    assert annos['bboxes'].shape == (0, 4) and annos['is_closed'].shape == (0,)


def test_deterministic(tmp_path):
    root = straight_road(intersection(MapBuilder(STRAIGHT_POSE))).write(tmp_path)
    a = VectorizedLocalMap(load_nusc_map(root, LOCATION)).extract(lidar2global(STRAIGHT_POSE))
    b = VectorizedLocalMap(load_nusc_map(root, LOCATION)).extract(lidar2global(STRAIGHT_POSE))
    assert a['labels'].tolist() == b['labels'].tolist()
    assert all(np.array_equal(u, v) for u, v in zip(a['vectors'], b['vectors']))
    assert np.array_equal(a['vectors_resampled'], b['vectors_resampled'])


def test_invalid_polygon_and_empty_line_skipped(tmp_path):
    b = straight_road(MapBuilder(STRAIGHT_POSE))
    b.ped_crossing([(0, 0), (4, 4), (4, 0), (0, 4)])  # bow-tie: invalid
    b.t['road_divider'].append(dict(token='rd-empty', line_token=b._line([]),
                                    road_segment_token=None))
    reference = extract(straight_road(MapBuilder(STRAIGHT_POSE)), tmp_path / 'ref')
    annos = extract(b, tmp_path / 'bad')
    assert annos['labels'].tolist() == reference['labels'].tolist()


def test_other_roi_and_centerline(tmp_path):
    b = straight_road(MapBuilder(STRAIGHT_POSE))
    a = b.lane([(0, -100), (4, -100), (4, -40), (0, -40)], centre=[(2, -100), (2, -40)],
               layer='lane')
    c = b.lane([(0, -40), (4, -40), (4, 100), (0, 100)], centre=[(2, -40), (2, 100)],
               layer='lane_connector', incoming=[a])
    b.connectivity[a]['outgoing'] = [c]
    annos = extract(b, tmp_path, roi_size=(50, 100), with_centerline=True)
    assert annos['labels'].tolist()[-1] == 3
    (centre,) = by_label(annos, 3)
    assert np.allclose(centre[[0, -1]], [(2, -50), (2, 50)], atol=1e-3)
    assert all(np.all(np.abs(v) <= [25, 50]) for v in annos['vectors'])
    assert_lines_subset(by_label(annos, 0), [[(-6, -50), (-6, 0), (-6, 50)]])


def test_map_errors(tmp_path):
    with pytest.raises(ValueError, match='unknown map location'):
        load_nusc_map(str(tmp_path), 'atlantis')
    with pytest.raises(FileNotFoundError, match=str(tmp_path / 'maps' / 'expansion')):
        load_nusc_map(str(tmp_path), LOCATION)
    root = straight_road(MapBuilder(STRAIGHT_POSE)).write(tmp_path, drop_table='lane_connector')
    with pytest.raises(MapFormatError, match='lane_connector'):
        load_nusc_map(root, LOCATION)
    b = straight_road(MapBuilder(STRAIGHT_POSE))
    b.t['line'][0]['node_tokens'].append('no-such-node')
    with pytest.raises(MapFormatError, match='road_divider'):
        VectorizedLocalMap(load_nusc_map(b.write(tmp_path), LOCATION))


def test_nuscenes_root_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='data root'):
        load_nuscenes(str(tmp_path / 'missing'), 'v1.0-mini')
    with pytest.raises(FileNotFoundError, match=str(tmp_path / 'v1.0-mini')):
        load_nuscenes(str(tmp_path), 'v1.0-mini')


def test_dump_atomic(tmp_path):
    path = str(tmp_path / 'sub' / 'x.pkl')
    dump_atomic(dict(a=1), path)
    assert os.listdir(tmp_path / 'sub') == ['x.pkl']
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        dump_atomic(dict(a=lambda: 0), path)  # unpicklable: old file intact, no tmp left
    assert os.listdir(tmp_path / 'sub') == ['x.pkl']
    with open(path, 'rb') as f:
        assert pickle.load(f) == dict(a=1)


def test_signed_area_helper():
    assert signed_area(np.asarray(LinearRing([(0, 0), (1, 0), (1, 1)]).coords)) > 0
