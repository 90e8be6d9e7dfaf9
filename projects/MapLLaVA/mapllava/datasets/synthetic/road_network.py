"""Road network geometry of one synthetic map location.

A perturbed, rotated grid of intersections joined by two-lane-per-direction roads (some of
them S-curved), with lane dividers, double yellow road dividers, zebra crossings and stop lines
at every intersection mouth and sidewalks along the kerb. Everything is in metres in the global
map frame. The map-expansion writer, the rasteriser and the traffic simulation all read this
one description, which is what keeps the tables, the images and the lidar consistent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from shapely import affinity
from shapely.geometry import LineString, MultiPoint, MultiPolygon, Point, Polygon, box
from shapely.ops import snap, unary_union

from .geometry import Path, connect

LANE_WIDTH = 3.5
LANES_PER_DIRECTION = 2
HALF_WIDTH = LANE_WIDTH * LANES_PER_DIRECTION
FILLET = 5.0                      # kerb radius at intersection corners
MOUTH = HALF_WIDTH + FILLET       # distance from an intersection centre to where roads start
WALKWAY_WIDTH = 4.0
CROSSING = (1.0, 5.0)             # zebra extent, metres from the road end
STOP_LINE = (5.5, 5.9)            # stop bar extent, metres from the road end
MARKINGS_FROM = 6.5               # dividers are painted from here on (metres from the road end)
POLYLINE_STEP = 2.0               # node spacing of stored lines and polygon borders

# Lane divider segment types as used by the real map expansion.
DASHED_WHITE = 'DOUBLE_DASHED_WHITE'
SOLID_YELLOW = 'SINGLE_SOLID_YELLOW'
NO_LINE = 'NIL'


@dataclass(frozen=True)
class LocationSpec:
    """Per-location layout knobs (the real cities differ in size and driving side)."""
    grid: tuple[int, int]
    left_hand_traffic: bool


LOCATIONS: dict[str, LocationSpec] = {
    'singapore-onenorth': LocationSpec((3, 4), True),
    'singapore-hollandvillage': LocationSpec((4, 4), True),
    'singapore-queenstown': LocationSpec((4, 3), True),
    'boston-seaport': LocationSpec((4, 4), False),
}


@dataclass
class Lane:
    """A lane or a lane connector: a directed centreline with its polygon."""
    id: str
    path: Path
    polygon: Polygon
    segment_id: str
    block_id: str = ''
    is_connector: bool = False
    left_type: str = NO_LINE
    right_type: str = NO_LINE
    incoming: list[str] = field(default_factory=list)
    outgoing: list[str] = field(default_factory=list)


@dataclass
class Segment:
    """A road segment: a road between two intersections or an intersection."""
    id: str
    polygon: Polygon
    is_intersection: bool


@dataclass
class RoadBlock:
    """One driving direction of a road, bounded by lines across its start and its end."""
    id: str
    polygon: Polygon
    segment_id: str
    from_edge: np.ndarray
    to_edge: np.ndarray


@dataclass
class Crossing:
    """A zebra crossing; ``stripe_dir`` is the road direction the stripes run along."""
    id: str
    polygon: Polygon
    segment_id: str
    stripe_dir: float


@dataclass
class StopLine:
    id: str
    polygon: Polygon
    crossing_id: str
    block_id: str


@dataclass
class TrafficLight:
    id: str
    line: np.ndarray
    block_id: str
    height: float


@dataclass
class Divider:
    """A painted line (its centre) on a road segment; ``dashed`` marks lane dividers."""
    id: str
    path: Path
    segment_id: str
    dashed: bool


@dataclass
class RoadNetwork:
    """Everything the synthetic world knows about one map location."""
    location: str
    canvas_edge: tuple[float, float]
    left_hand_traffic: bool
    drivable: Polygon
    segments: list[Segment]
    blocks: list[RoadBlock]
    lanes: dict[str, Lane]
    dividers: list[Divider]
    crossings: list[Crossing]
    stop_lines: list[StopLine]
    traffic_lights: list[TrafficLight]
    walkways: list[Polygon]
    city_blocks: list[Polygon]
    grid_yaw: float

    def driving_lanes(self) -> list[Lane]:
        """Lanes proper (no connectors), where scenes may start."""
        return [lane for lane in self.lanes.values() if not lane.is_connector]


def build_road_network(location: str, seed: int) -> RoadNetwork:
    """Build the deterministic road network of ``location`` for ``seed``."""
    if location not in LOCATIONS:
        raise ValueError(f'unknown location {location!r}; expected one of {sorted(LOCATIONS)}')
    spec = LOCATIONS[location]
    rng = np.random.default_rng([seed, sorted(LOCATIONS).index(location), 7])
    side = 1.0 if spec.left_hand_traffic else -1.0  # which side of a road its forward lanes use

    nodes, edges, canvas = _grid(spec.grid, rng)
    roads = [_road_path(nodes[a], nodes[b], rng) for a, b in edges]

    road_polys = [_strip(path, HALF_WIDTH, -HALF_WIDTH) for path in roads]
    cores = [_core(nodes[n], _arms(n, edges, roads)) for n in range(len(nodes))]
    drivable = unary_union(road_polys + cores).buffer(FILLET).buffer(-FILLET)
    if isinstance(drivable, MultiPolygon):  # never expected for a connected grid
        drivable = max(drivable.geoms, key=lambda g: g.area)

    segments = [Segment(f'road{i}', poly, False) for i, poly in enumerate(road_polys)]
    for n, xy in enumerate(nodes):
        square = affinity.rotate(box(xy[0] - MOUTH, xy[1] - MOUTH, xy[0] + MOUTH, xy[1] + MOUTH),
                                 _grid_angle(roads), origin=tuple(xy), use_radians=True)
        inter = _largest(drivable.intersection(square))
        # Put every lane corner of the arriving roads on the intersection border, so the
        # devkit's get_next_roads() finds the intersection from a lane's or block's end line.
        mouths = [roads[i].across(0.0 if starts else roads[i].length, HALF_WIDTH, -HALF_WIDTH)
                  for i, starts, _ in _arms(n, edges, roads)]
        offsets = np.linspace(0.0, 1.0, 2 * LANES_PER_DIRECTION + 1)[:, None]
        pts = MultiPoint([tuple(a + t * (b - a)) for a, b in mouths for t in offsets])
        segments.append(Segment(f'node{n}', _largest(snap(inter, pts, 0.01)), True))

    lanes: dict[str, Lane] = {}
    blocks, dividers, crossings, stops, lights = [], [], [], [], []
    for i, path in enumerate(roads):
        _add_road(i, path, side, lanes, blocks, dividers, crossings, stops, lights, edges, nodes)
    _add_connectors(nodes, edges, roads, side, lanes)

    walkways, city_blocks = _walkways(drivable)
    return RoadNetwork(location, canvas, spec.left_hand_traffic, drivable, segments, blocks,
                       lanes, dividers, crossings, stops, lights, walkways, city_blocks,
                       _grid_angle(roads))


# ----------------------------------------------------------------------------- layout

def _grid(shape: tuple[int, int], rng: np.random.Generator):
    """Intersections on a rotated grid with uneven spacing, shifted to positive coordinates."""
    nx, ny = shape
    xs = np.concatenate([[0.0], np.cumsum(rng.uniform(130, 180, nx - 1))])
    ys = np.concatenate([[0.0], np.cumsum(rng.uniform(130, 180, ny - 1))])
    angle = rng.uniform(-0.5, 0.5)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    pts = np.array([[x, y] for y in ys for x in xs]) @ rot.T
    margin = 120.0
    pts = pts - pts.min(axis=0) + margin
    canvas = tuple(float(v) for v in np.ceil(pts.max(axis=0) + margin))
    idx = lambda i, j: j * nx + i
    edges = [(idx(i, j), idx(i + 1, j)) for j in range(ny) for i in range(nx - 1)]
    edges += [(idx(i, j), idx(i, j + 1)) for j in range(ny - 1) for i in range(nx)]
    return pts, edges, canvas


def _grid_angle(roads: list[Path]) -> float:
    return roads[0].start[2]


def _road_path(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> Path:
    """Reference centreline from mouth to mouth: straight, or an S-shaped bulge."""
    heading = math.atan2(b[1] - a[1], b[0] - a[0])
    span = float(np.linalg.norm(b - a)) - 2 * MOUTH
    start = (float(a[0] + MOUTH * math.cos(heading)), float(a[1] + MOUTH * math.sin(heading)),
             heading)
    if rng.random() < 0.6:
        return Path(start, ((span, 0.0),))
    theta = rng.uniform(math.radians(18), math.radians(32))
    radius = min(70.0, (span - 2 * (MARKINGS_FROM + 4)) / (4 * math.sin(theta)))
    straight = (span - 4 * radius * math.sin(theta)) / 2
    k = rng.choice([-1.0, 1.0]) / radius
    return Path(start, ((straight, 0.0), (radius * theta, k), (2 * radius * theta, -k),
                        (radius * theta, k), (straight, 0.0)))


def _arms(n: int, edges, roads: list[Path]) -> list[tuple[int, bool, float]]:
    """(road index, road starts here, outward heading) for every road at node ``n``."""
    arms = []
    for i, (a, b) in enumerate(edges):
        if a == n:
            arms.append((i, True, roads[i].start[2]))
        elif b == n:
            arms.append((i, False, roads[i].end()[2] + math.pi))
    return arms


def _core(xy: np.ndarray, arms) -> Polygon:
    """Intersection area before kerb rounding: a centre square plus one stub per arm."""
    parts = [Point(xy).buffer(HALF_WIDTH, cap_style='square')]
    for _, _, h in arms:
        d = np.array([math.cos(h), math.sin(h)])
        parts.append(LineString([xy, xy + MOUTH * d]).buffer(HALF_WIDTH, cap_style='flat'))
    parts = [affinity.rotate(parts[0], arms[0][2], origin=tuple(xy), use_radians=True)] + parts[1:]
    return unary_union(parts)


def _strip(path: Path, left: float, right: float, s_from: float = 0.0,
           s_to: float | None = None) -> Polygon:
    """Polygon between two lateral offsets of ``path`` (counter-clockwise); arc lengths
    ``s_from``/``s_to`` are measured along each offset curve, i.e. exact on straight parts."""
    right_pts = path.offset(right).sample(POLYLINE_STEP, s_from, s_to)
    left_pts = path.offset(left).sample(POLYLINE_STEP, s_from, s_to)
    return Polygon(np.concatenate([right_pts, left_pts[::-1]]))


def _largest(geom) -> Polygon:
    if isinstance(geom, Polygon):
        return geom
    return max((g for g in geom.geoms if isinstance(g, Polygon)), key=lambda g: g.area)


# ----------------------------------------------------------------------------- roads

def _add_road(i, path, side, lanes, blocks, dividers, crossings, stops, lights, edges, nodes):
    """Lanes, blocks, painted lines, crossings, stop lines and lights of road ``i``."""
    seg = f'road{i}'
    length = path.length
    directions = {'fwd': path, 'bwd': path.reversed()}
    for d, drive in directions.items():
        # In the driving direction the forward lanes sit on the `side` of the centre line,
        # i.e. lane j spans offsets side*j*w .. side*(j+1)*w of the reference path.
        sgn = side
        block_id = f'{seg}_{d}'
        blocks.append(RoadBlock(block_id, _strip(drive, max(0.0, sgn * HALF_WIDTH),
                                                 min(0.0, sgn * HALF_WIDTH)), seg,
                                drive.across(0.0, 0.0, sgn * HALF_WIDTH),
                                drive.across(drive.length, 0.0, sgn * HALF_WIDTH)))
        for j in range(LANES_PER_DIRECTION):
            centre = drive.offset(sgn * (j + 0.5) * LANE_WIDTH)
            inner_type = SOLID_YELLOW if j == 0 else DASHED_WHITE
            outer_type = DASHED_WHITE if j < LANES_PER_DIRECTION - 1 else NO_LINE
            # Seen from the driver, the centre of the road is on the left when lanes sit on the
            # right (side < 0) and vice versa.
            left_t, right_t = (inner_type, outer_type) if sgn < 0 else (outer_type, inner_type)
            lanes[f'{seg}_{d}_l{j}'] = Lane(
                f'{seg}_{d}_l{j}', centre, _strip(centre, LANE_WIDTH / 2, -LANE_WIDTH / 2), seg,
                block_id, left_type=left_t, right_type=right_t)
        # Dashed divider between neighbouring lanes of this direction.
        for j in range(1, LANES_PER_DIRECTION):
            line = drive.offset(sgn * j * LANE_WIDTH)
            line = line.sub(MARKINGS_FROM, line.length - MARKINGS_FROM)
            dividers.append(Divider(f'{seg}_{d}_div{j}', line, seg, True))
        # Crossing, stop line and traffic light at the end this direction drives into.
        end = drive.reversed()  # starts at the mouth this direction arrives at
        cross_id = f'{seg}_{d}_cross'
        crossings.append(Crossing(cross_id, _strip(end, HALF_WIDTH, -HALF_WIDTH, *CROSSING), seg,
                                  end.start[2]))
        # On `end` (driving away from the mouth) the arriving lanes are on the other side.
        far = -sgn * HALF_WIDTH
        bar = _strip(end, max(0.0, far), min(0.0, far), *STOP_LINE)
        stops.append(StopLine(f'{seg}_{d}_stop', bar, cross_id, block_id))
        pole = end.poses([STOP_LINE[1]])[0]
        normal = np.array([-math.sin(pole[2]), math.cos(pole[2])])
        base = pole[:2] + normal * (far + math.copysign(1.5, far))
        lights.append(TrafficLight(f'{seg}_{d}_light', np.stack([base, base + 0.5 * normal]),
                                   block_id, 5.0))
    dividers.append(Divider(f'{seg}_centre', path.sub(MARKINGS_FROM, length - MARKINGS_FROM), seg,
                            False))


# ----------------------------------------------------------------------------- intersections

def _add_connectors(nodes, edges, roads, side, lanes: dict[str, Lane]) -> None:
    """Lane connectors through every intersection, and the lane connectivity graph."""
    for n in range(len(nodes)):
        arms = _arms(n, edges, roads)
        arriving = [(i, 'bwd' if starts else 'fwd', h) for i, starts, h in arms]
        leaving = [(i, 'fwd' if starts else 'bwd', h) for i, starts, h in arms]
        for ri, rd, rh in arriving:
            for j in range(LANES_PER_DIRECTION):
                src = lanes[f'road{ri}_{rd}_l{j}']
                options = []
                for oi, od, oh in leaving:
                    if oi == ri:
                        continue
                    turn = math.remainder(oh - (rh + math.pi), 2 * math.pi)
                    near_side = abs(turn) > 0.1 and math.copysign(1.0, turn) == side
                    far_side = abs(turn) > 0.1 and not near_side
                    outer = j == LANES_PER_DIRECTION - 1
                    if abs(turn) <= 0.1 or (near_side and outer) or (far_side and j == 0):
                        options.append(f'road{oi}_{od}_l{j}')
                if not options:  # e.g. a corner where this lane may not turn: let it anyway
                    options = [f'road{oi}_{od}_l{j}' for oi, od, _ in leaving if oi != ri]
                for dst_id in options:
                    dst = lanes[dst_id]
                    path = connect(src.path.end(), dst.path.start)
                    cid = f'node{n}_{src.id}_to_{dst.id}'
                    poly = LineString(path.sample(0.5)).buffer(LANE_WIDTH / 2, cap_style='flat')
                    lanes[cid] = Lane(cid, path, _largest(poly), f'node{n}', is_connector=True,
                                      incoming=[src.id], outgoing=[dst.id])
                    src.outgoing.append(cid)
                    dst.incoming.append(cid)


def _walkways(drivable: Polygon) -> tuple[list[Polygon], list[Polygon]]:
    """Sidewalk rings along every kerb, and the city blocks they enclose."""
    walkways, city_blocks = [], []
    outer = Polygon(drivable.exterior)
    walkways.append(_largest(outer.buffer(WALKWAY_WIDTH, join_style='mitre').difference(outer)))
    for ring in drivable.interiors:
        hole = Polygon(ring)
        inner = hole.buffer(-WALKWAY_WIDTH, join_style='mitre')
        walkways.append(_largest(hole.difference(inner)))
        if not inner.is_empty:
            city_blocks.append(_largest(inner))
    return walkways, city_blocks
