"""Write a road network in the nuScenes map-expansion format (v1.3) and its semantic prior.

The record layouts follow what ``nuscenes.map_expansion.map_api.NuScenesMap`` reads, so the
unmodified devkit (and every MapTR-style GT extractor built on it) works on synthetic maps.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
from PIL import Image
from shapely.geometry import Polygon

from .geometry import make_uuid
from .raster import fill_polygon
from .road_network import LANE_WIDTH, RoadNetwork

MAP_VERSION = '1.3'
MASK_RESOLUTION = 0.1  # metres per pixel of the devkit's semantic-prior png (fixed by MapMask)

# File names of the semantic priors, as the devkit's BitMap('semantic_prior') expects them.
SEMANTIC_PRIOR_HASH = {
    'singapore-onenorth': '53992ee3023e5494b90c316c183be829',
    'singapore-hollandvillage': '37819e65e09e5547b8a3ceaefba56bb2',
    'singapore-queenstown': '93406b464a165eaba6d9de76ca09f5da',
    'boston-seaport': '36092f0b03a857c6a3403e25b4b7aab3',
}


class _Geometry:
    """Node, line and polygon layers with shared, de-duplicated nodes."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.node: list[dict] = []
        self.line: list[dict] = []
        self.polygon: list[dict] = []
        self._nodes: dict[tuple[float, float], str] = {}

    def token(self, kind: str, key: object) -> str:
        return make_uuid(self.prefix, kind, key)

    def nodes(self, pts: np.ndarray) -> list[str]:
        """Tokens of the (de-duplicated, millimetre-rounded) nodes at ``pts``."""
        out: list[str] = []
        for key in map(tuple, np.round(np.asarray(pts, dtype=np.float64), 3).tolist()):
            tok = self._nodes.get(key)
            if tok is None:
                tok = self._nodes[key] = self.token('node', len(self.node))
                self.node.append(dict(token=tok, x=key[0], y=key[1]))
            if not out or out[-1] != tok:
                out.append(tok)
        return out

    def add_line(self, pts: np.ndarray) -> str:
        tok = self.token('line', len(self.line))
        self.line.append(dict(token=tok, node_tokens=self.nodes(pts)))
        return tok

    def add_polygon(self, poly: Polygon) -> str:
        tok = self.token('polygon', len(self.polygon))
        ring = lambda r: self.nodes(np.asarray(r.coords)[:-1])
        self.polygon.append(dict(token=tok, exterior_node_tokens=ring(poly.exterior),
                                 holes=[dict(node_tokens=ring(h)) for h in poly.interiors]))
        return tok


def build_map_json(net: RoadNetwork, seed: int) -> dict:
    """The map-expansion dict for ``net`` (tokens are deterministic UUIDs)."""
    g = _Geometry(f'{seed}/{net.location}')
    tok = lambda kind, key: g.token(kind, key)
    out: dict = dict(version=MAP_VERSION, canvas_edge=list(net.canvas_edge))

    drivable_tok = tok('drivable_area', 0)
    out['drivable_area'] = [dict(token=drivable_tok, polygon_tokens=[g.add_polygon(net.drivable)])]
    out['road_segment'] = [dict(token=tok('road_segment', s.id), polygon_token=g.add_polygon(
        s.polygon), is_intersection=s.is_intersection, drivable_area_token=drivable_tok)
        for s in net.segments]
    out['road_block'] = [dict(token=tok('road_block', b.id), polygon_token=g.add_polygon(b.polygon),
                              from_edge_line_token=g.add_line(b.from_edge),
                              to_edge_line_token=g.add_line(b.to_edge),
                              road_segment_token=tok('road_segment', b.segment_id))
                         for b in net.blocks]

    out['lane'], out['lane_connector'] = [], []
    out['arcline_path_3'], out['connectivity'] = {}, {}
    for lane in net.lanes.values():
        lane_tok = tok('lane', lane.id)
        record = dict(token=lane_tok, polygon_token=g.add_polygon(lane.polygon))
        if lane.is_connector:
            out['lane_connector'].append(record)
        else:
            half = LANE_WIDTH / 2
            record.update(
                lane_type='CAR',
                from_edge_line_token=g.add_line(lane.path.across(0.0, half, -half)),
                to_edge_line_token=g.add_line(lane.path.across(lane.path.length, half, -half)),
                left_lane_divider_segments=_segments(g, lane.path.offset(half), lane.left_type),
                right_lane_divider_segments=_segments(g, lane.path.offset(-half), lane.right_type))
            out['lane'].append(record)
        out['arcline_path_3'][lane_tok] = lane.path.arclines()
        out['connectivity'][lane_tok] = dict(
            incoming=[tok('lane', i) for i in lane.incoming],
            outgoing=[tok('lane', o) for o in lane.outgoing])

    out['ped_crossing'] = [dict(token=tok('ped_crossing', c.id), polygon_token=g.add_polygon(
        c.polygon), road_segment_token=tok('road_segment', c.segment_id)) for c in net.crossings]
    out['walkway'] = [dict(token=tok('walkway', i), polygon_token=g.add_polygon(w))
                      for i, w in enumerate(net.walkways)]
    out['stop_line'] = [dict(token=tok('stop_line', s.id), polygon_token=g.add_polygon(s.polygon),
                             stop_line_type='PED_CROSSING',
                             ped_crossing_tokens=[tok('ped_crossing', s.crossing_id)],
                             traffic_light_tokens=[],
                             road_block_token=tok('road_block', s.block_id))
                        for s in net.stop_lines]
    out['carpark_area'] = []
    out['road_divider'], out['lane_divider'] = [], []
    for d in net.dividers:
        pts = d.path.sample(2.0)
        if d.dashed:
            out['lane_divider'].append(dict(
                token=tok('lane_divider', d.id), line_token=g.add_line(pts),
                lane_divider_segments=[dict(node_token=n, segment_type='DOUBLE_DASHED_WHITE')
                                       for n in g.nodes(pts)]))
        else:
            out['road_divider'].append(dict(token=tok('road_divider', d.id),
                                            line_token=g.add_line(pts),
                                            road_segment_token=tok('road_segment', d.segment_id)))
    out['traffic_light'] = [_traffic_light(g, t) for t in net.traffic_lights]
    out['node'], out['line'], out['polygon'] = g.node, g.line, g.polygon
    return out


def _segments(g: _Geometry, border, segment_type: str) -> list[dict]:
    return [dict(node_token=n, segment_type=segment_type) for n in g.nodes(border.sample(2.0))]


def _traffic_light(g: _Geometry, light) -> dict:
    (x0, y0), (x1, y1) = light.line
    yaw = math.atan2(y1 - y0, x1 - x0)
    return dict(token=g.token('traffic_light', light.id), line_token=g.add_line(light.line),
                traffic_light_type='VERTICAL',
                from_road_block_token=g.token('road_block', light.block_id),
                items=[dict(color=c, shape='CIRCLE', to_road_block_tokens=[],
                            rel_pos=dict(tx=0.0, ty=0.0, tz=0.3 * i, rx=0.0, ry=0.0, rz=0.0))
                       for i, c in enumerate(('GREEN', 'YELLOW', 'RED'))],
                pose=dict(tx=float(x0), ty=float(y0), tz=light.height, rx=0.0, ry=0.0, rz=yaw))


def semantic_prior(net: RoadNetwork) -> np.ndarray:
    """Drivable surface and sidewalks as the devkit's 0/255 map mask (0.1 m/px, north up)."""
    w, h = (int(math.ceil(v / MASK_RESOLUTION)) for v in net.canvas_edge)
    mask = np.zeros((h, w), dtype=np.uint8)
    r = MASK_RESOLUTION
    for geom in [net.drivable, *net.walkways]:
        fill_polygon(mask, geom, 255, -r / 2, r / 2, r, flip_y=True)
    return mask


def map_filename(location: str) -> str:
    """Path of the semantic prior relative to the dataroot (the ``map`` table's filename)."""
    return f'maps/{SEMANTIC_PRIOR_HASH[location]}.png'


def write_map(net: RoadNetwork, seed: int, dataroot: str) -> None:
    """Write ``maps/expansion/<location>.json`` and the semantic-prior png under dataroot."""
    exp_dir = os.path.join(dataroot, 'maps', 'expansion')
    os.makedirs(exp_dir, exist_ok=True)
    with open(os.path.join(exp_dir, f'{net.location}.json'), 'w') as f:
        f.write(json.dumps(build_map_json(net, seed), separators=(',', ':')))
    Image.fromarray(semantic_prior(net)).save(os.path.join(dataroot, map_filename(net.location)),
                                              optimize=False, compress_level=1)
