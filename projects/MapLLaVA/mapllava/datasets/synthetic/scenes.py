"""Which scenes a synthetic dataset holds and when each sensor fires in them.

Scene names come from the devkit's official splits, so ``create_splits_scenes()`` selects the
generated scenes (mini_train / mini_val for v1.0-mini, train / val for v1.0-trainval); logs,
vehicles, dates and file names follow the real nuScenes conventions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
from nuscenes.utils.splits import create_splits_scenes

from .road_network import LOCATIONS, RoadNetwork
from .sensor_rig import LIDAR, Sensor
from .tables import SceneRecord, SensorReading
from .traffic import DEFAULT_START_SPAN, ScenePlan, plan_scene

VERSIONS = {'v1.0-mini': ('mini_train', 'mini_val'), 'v1.0-trainval': ('train', 'val'),
            'v1.0-test': ('test',)}
DEFAULT_SCENES = {'v1.0-mini': 10, 'v1.0-trainval': 40, 'v1.0-test': 10}
KEYFRAME_INTERVAL = 0.5     # s, 2 Hz annotated samples
SWEEP_INTERVAL = 0.05       # s, the 20 Hz lidar
MAX_SWEEPS = 9              # lidar sweeps between two keyframes at 20 Hz

# Where the real v1.0-mini scenes were driven.
_MINI_LOCATIONS = {
    'scene-0061': 'singapore-onenorth', 'scene-0103': 'boston-seaport',
    'scene-0553': 'boston-seaport', 'scene-0655': 'boston-seaport',
    'scene-0757': 'boston-seaport', 'scene-0796': 'singapore-queenstown',
    'scene-0916': 'singapore-queenstown', 'scene-1077': 'singapore-hollandvillage',
    'scene-1094': 'singapore-hollandvillage', 'scene-1100': 'singapore-hollandvillage',
}


def scene_names(version: str, count: int | None = None,
                val_scenes: int | None = None) -> list[str]:
    """Names of the first ``count`` scenes of ``version``'s splits, train first.

    ``val_scenes`` of them are val (default ~20 %). Scene ``i`` is planned from seed ``i``,
    so more val scenes with the same train count add val scenes and change none of the others.
    """
    if version not in VERSIONS:
        raise ValueError(f'unknown version {version!r}; expected one of {sorted(VERSIONS)}')
    splits = [create_splits_scenes()[s] for s in VERSIONS[version]]
    count = DEFAULT_SCENES[version] if count is None else count
    available = sum(len(s) for s in splits)
    if not 1 <= count <= available:
        raise ValueError(f'{version} has 1..{available} scenes, asked for {count}')
    if len(splits) == 1:
        if val_scenes:
            raise ValueError(f'{version} has no val split, got val_scenes={val_scenes}')
        return list(splits[0][:count])
    train, val = splits
    if val_scenes is not None:
        if not 0 <= val_scenes <= min(len(val), count):
            raise ValueError(f'{version}: val_scenes must be in 0..{min(len(val), count)} '
                             f'for {count} scenes, got {val_scenes}')
        if count - val_scenes > len(train):
            raise ValueError(f'{version} has {len(train)} train scenes, but {count} scenes with '
                             f'{val_scenes} val need {count - val_scenes}')
        return list(train[:count - val_scenes]) + list(val[:val_scenes])
    n_val = min(len(val), max(1 if count > 1 else 0, round(count * 0.2)))
    n_train = min(len(train), count - n_val)
    n_val = count - n_train
    return list(train[:n_train]) + list(val[:n_val])


def scene_location(name: str, index: int) -> str:
    """The real location for mini scenes, otherwise the four maps in turn."""
    return _MINI_LOCATIONS.get(name, sorted(LOCATIONS)[index % len(LOCATIONS)])


@dataclass
class SceneSpec:
    """A planned scene: its table record (without annotations yet) and its motion plan."""
    index: int
    record: SceneRecord
    plan: ScenePlan
    start_us: int

    def time_of(self, timestamp: int) -> float:
        """Seconds since the scene start of a sensor timestamp."""
        return (timestamp - self.start_us) * 1e-6


def plan_scenes(names: list[str], nets: dict[str, RoadNetwork], rig: list[Sensor],
                samples: int, sweeps: int, seed: int,
                start_span: float = DEFAULT_START_SPAN) -> list[SceneSpec]:
    """Timeline, ego route and traffic of every scene (``start_span``: ``plan_scene``)."""
    specs = []
    for i, name in enumerate(names):
        location = scene_location(name, i)
        rng = np.random.default_rng([seed, i, 1])
        duration = (samples - 1) * KEYFRAME_INTERVAL + 0.1
        plan = plan_scene(nets[location], duration, rng, start_span)
        singapore = location.startswith('singapore')
        tz = timezone(timedelta(hours=8 if singapore else -4))
        local = datetime(2018, 7, 16, 9, tzinfo=tz) + timedelta(
            days=int(rng.integers(0, 90)), seconds=int(rng.integers(0, 8 * 3600)))
        vehicle = 'n015' if singapore else 'n008'
        logfile = f'{vehicle}-{local:%Y-%m-%d-%H-%M-%S}{local:%z}'
        start_us = int(local.timestamp() * 1e6) + int(rng.integers(20, 600)) * 1_000_000
        keys = [start_us + int(round((k * KEYFRAME_INTERVAL + rng.uniform(-2e-3, 2e-3)) * 1e6))
                if k else start_us for k in range(samples)]
        readings = _readings(plan, keys, rig, sweeps, logfile, start_us)
        n_vehicles = sum(a.category.startswith('vehicle') for a in plan.actors)
        description = (f'Synthetic drive in {location}, {plan.ego.speed:.0f} m/s, '
                       f'{n_vehicles} other vehicles')
        record = SceneRecord(name, description, location, logfile, vehicle,
                             f'{local:%Y-%m-%d}', keys, readings)
        specs.append(SceneSpec(i, record, plan, start_us))
    return specs


def _readings(plan: ScenePlan, keys: list[int], rig: list[Sensor], sweeps: int, logfile: str,
              start_us: int) -> list[SensorReading]:
    """Keyframe data of every sensor plus lidar sweeps before each keyframe."""
    out = []

    def add(channel: str, ts: int, k: int, key: bool) -> None:
        pose = tuple(float(v) for v in plan.ego.poses([(ts - start_us) * 1e-6])[0])
        ext = 'pcd.bin' if channel == LIDAR else 'jpg'
        folder = 'samples' if key else 'sweeps'
        out.append(SensorReading(channel, ts, pose, f'{folder}/{channel}/{logfile}__{channel}__'
                                 f'{ts}.{ext}', k, key))

    for k, key_ts in enumerate(keys):
        for s in rig:
            add(s.channel, key_ts + int(round(s.delay * 1e6)), k, True)
        if k:
            for j in range(min(sweeps, math.floor((key_ts - keys[k - 1]) * 1e-6 /
                                                  SWEEP_INTERVAL) - 1), 0, -1):
                add(LIDAR, key_ts - int(round(j * SWEEP_INTERVAL * 1e6)), k, False)
    return out
