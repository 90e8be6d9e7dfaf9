"""What moves and stands in a synthetic scene: the ego car, other traffic, pedestrians, cones
and buildings.

Vehicles drive along lane centrelines of the map (random walks over the lane graph), so ego
poses are realistic and consistent with the map; the other objects give the images and the
lidar something besides road surface, and provide a few sample annotations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from shapely.geometry import LineString, Point, Polygon, box
from shapely.prepared import prep

from .geometry import Path
from .raster import KERB_HEIGHT
from .road_network import RoadNetwork

# category: (width, length, height), share among moving vehicles
VEHICLES = {'vehicle.car': ((1.9, 4.6, 1.6), 0.75), 'vehicle.truck': ((2.5, 7.5, 3.0), 0.15),
            'vehicle.bus.rigid': ((2.9, 11.5, 3.3), 0.10)}
PEDESTRIAN = ('human.pedestrian.adult', (0.65, 0.7, 1.75))
CONE = ('movable_object.trafficcone', (0.4, 0.4, 0.75))
EGO_SIZE = (1.73, 4.08, 1.56)
CAR_COLOURS = np.array([[235, 235, 232], [30, 30, 34], [160, 162, 166], [150, 25, 25],
                        [30, 60, 140], [95, 98, 102], [200, 180, 140]], dtype=np.float64)


@dataclass
class Route:
    """Consecutive lanes and connectors driven one after the other."""
    paths: list[Path]
    lane_ids: list[str]

    @property
    def length(self) -> float:
        return float(sum(p.length for p in self.paths))

    def poses(self, s: np.ndarray) -> np.ndarray:
        """Poses ``(N, 3)`` at distances ``s`` along the route."""
        s = np.atleast_1d(np.asarray(s, dtype=np.float64))
        cum = np.concatenate([[0.0], np.cumsum([p.length for p in self.paths])])
        idx = np.clip(np.searchsorted(cum, s, side='right') - 1, 0, len(self.paths) - 1)
        out = np.empty((len(s), 3))
        for i in np.unique(idx):
            out[idx == i] = self.paths[i].poses(s[idx == i] - cum[i])
        return out


def random_route(net: RoadNetwork, lane_id: str, length: float,
                 rng: np.random.Generator) -> Route:
    """Random walk over the lane graph from ``lane_id`` until ``length`` metres are covered."""
    ids, total = [lane_id], net.lanes[lane_id].path.length
    while total < length:
        ids.append(str(rng.choice(net.lanes[ids[-1]].outgoing)))
        total += net.lanes[ids[-1]].path.length
    return Route([net.lanes[i].path for i in ids], ids)


@dataclass
class Actor:
    """A box in the world; ``category`` None means scenery that is not annotated."""
    category: str | None
    size: tuple[float, float, float]          # nuScenes order: width, length, height
    colour: np.ndarray
    attribute: str = ''
    route: Route | None = None
    s0: float = 0.0
    speed: float = 0.0
    pose: tuple[float, float, float] = (0.0, 0.0, 0.0)
    base_z: float = 0.0

    def poses(self, t: np.ndarray) -> np.ndarray:
        """(x, y, yaw) at times ``t`` (seconds from the scene start)."""
        t = np.atleast_1d(np.asarray(t, dtype=np.float64))
        if self.route is None:
            return np.tile(np.asarray(self.pose, dtype=np.float64), (len(t), 1))
        return self.route.poses(self.s0 + self.speed * t)

    def box(self, t: float) -> tuple[np.ndarray, float]:
        """Box centre ``(3,)`` and yaw at time ``t``."""
        x, y, yaw = self.poses([t])[0]
        return np.array([x, y, self.base_z + self.size[2] / 2]), float(yaw)


@dataclass
class ScenePlan:
    ego: Actor
    actors: list[Actor]


#: where on its first lane the ego may start, as a fraction from the lane's start (the
#: default datasets'; ``plan_scene``)
DEFAULT_START_SPAN = 0.5


def check_start_span(start_span: float) -> None:
    """``start_span`` must be a fraction of a lane in (0, 1]."""
    if not 0.0 < start_span <= 1.0:
        raise ValueError(f'start_span must be in (0, 1], got {start_span}')


def plan_scene(net: RoadNetwork, duration: float, rng: np.random.Generator,
               start_span: float = DEFAULT_START_SPAN) -> ScenePlan:
    """Ego route and speed, plus traffic, pedestrians and cones around it.

    The ego starts within the first ``start_span`` of a random lane: 0.5 (the default
    datasets) leaves the intersection a short scene starts near mostly behind it, 1.0 lets as
    many scenes approach an intersection as leave one.
    """
    check_start_span(start_span)
    lanes = net.driving_lanes()
    start = lanes[int(rng.integers(len(lanes)))]
    speed = float(rng.uniform(5.0, 11.0))
    s0 = float(rng.uniform(0.0, start_span * start.path.length))
    route = random_route(net, start.id, s0 + speed * duration + 80.0, rng)
    ego = Actor('vehicle.car', EGO_SIZE, CAR_COLOURS[0], 'vehicle.moving', route, s0, speed)

    actors = []
    # Cars ahead in the ego's own lane drive at its speed, so they never collide with it.
    for gap in sorted(rng.uniform(18.0, 60.0, size=int(rng.integers(0, 3)))):
        actors.append(_vehicle(rng, route, s0 + gap, speed))
    ego_xy = ego.poses(np.linspace(0.0, duration, 8))[:, :2]
    path_line = LineString(ego_xy) if len(np.unique(ego_xy, axis=0)) > 1 else Point(ego_xy[0])
    near = [lane for lane in lanes if lane.id not in route.lane_ids
            and lane.polygon.distance(path_line) < 60.0]
    for k in rng.permutation(len(near))[:int(rng.integers(3, 8))]:
        lane = near[k]
        s = float(rng.uniform(0.0, lane.path.length))
        v = float(rng.uniform(4.0, 12.0))
        actors.append(_vehicle(rng, random_route(net, lane.id, s + v * duration + 1.0, rng), s, v))
    actors += _on_sidewalk(net, path_line, rng, PEDESTRIAN, int(rng.integers(2, 7)), 'standing')
    actors += _on_sidewalk(net, path_line, rng, CONE, int(rng.integers(0, 3)), '')
    return ScenePlan(ego, actors)


def _vehicle(rng: np.random.Generator, route: Route, s0: float, speed: float) -> Actor:
    names = list(VEHICLES)
    category = names[int(rng.choice(len(names), p=[VEHICLES[n][1] for n in names]))]
    colour = CAR_COLOURS[int(rng.integers(len(CAR_COLOURS)))]
    return Actor(category, VEHICLES[category][0], colour, 'vehicle.moving', route, s0, speed)


def _on_sidewalk(net: RoadNetwork, near, rng: np.random.Generator, kind, count: int,
                 attribute: str) -> list[Actor]:
    """Static objects at random sidewalk spots within 40 m of the ego path."""
    category, size = kind
    area = near.buffer(40.0)
    spots = [w.intersection(area) for w in net.walkways]
    spots = [s for s in spots if not s.is_empty and s.area > 1.0]
    out = []
    for _ in range(count * 20):
        if len(out) == count or not spots:
            break
        geom = spots[int(rng.integers(len(spots)))]
        x0, y0, x1, y1 = geom.bounds
        p = Point(rng.uniform(x0, x1), rng.uniform(y0, y1))
        if geom.contains(p) and net.drivable.distance(p) > 0.8:
            colour = rng.uniform(40, 200, size=3) if category == PEDESTRIAN[0] else \
                np.array([240.0, 110.0, 20.0])
            attribute_name = f'pedestrian.{attribute}' if attribute else ''
            out.append(Actor(category, size, colour, attribute_name,
                             pose=(p.x, p.y, float(rng.uniform(-math.pi, math.pi))),
                             base_z=KERB_HEIGHT))
    return out


def place_buildings(net: RoadNetwork, rng: np.random.Generator) -> list[Actor]:
    """Non-overlapping box buildings inside the city blocks and around the network."""
    regions = [b.buffer(-2.0) for b in net.city_blocks]
    outer = Polygon(net.drivable.exterior).buffer(6.0)
    regions.append(outer.buffer(45.0).difference(outer).intersection(box(0, 0, *net.canvas_edge)))
    yaw = net.grid_yaw
    out = []
    for region in regions:
        if region.is_empty:
            continue
        placed, ok = [], prep(region)
        x0, y0, x1, y1 = region.bounds
        for _ in range(int(region.area / 60.0)):
            w, ln = rng.uniform(10.0, 35.0, size=2)
            cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
            foot = _rect(cx, cy, ln, w, yaw)
            if ok.contains(foot) and all(not foot.intersects(p) for p in placed):
                placed.append(foot.buffer(3.0))
                grey = rng.uniform(110, 215)
                colour = np.clip(grey + rng.normal(0, 12, size=3), 0, 255)
                out.append(Actor(None, (w, ln, float(rng.uniform(6.0, 30.0))), colour,
                                 pose=(cx, cy, yaw), base_z=KERB_HEIGHT))
    return out


def _rect(cx: float, cy: float, length: float, width: float, yaw: float) -> Polygon:
    c, s = math.cos(yaw), math.sin(yaw)
    corners = [(dx * length / 2, dy * width / 2) for dx, dy in ((1, 1), (-1, 1), (-1, -1), (1, -1))]
    return Polygon([(cx + c * x - s * y, cy + s * x + c * y) for x, y in corners])
