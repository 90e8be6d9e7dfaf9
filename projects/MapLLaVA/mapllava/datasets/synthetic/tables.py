"""The 13 nuScenes tables of a synthetic dataset.

Pure bookkeeping: given each scene's timeline, poses and rendered annotation counts, build the
records with consistent tokens and prev/next chains exactly as the devkit's ``NuScenes``
expects them (schema of nuScenes v1.0).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .geometry import make_token, yaw_quaternion
from .map_expansion import SEMANTIC_PRIOR_HASH, map_filename
from .sensor_rig import Sensor

TABLE_NAMES = ('attribute', 'calibrated_sensor', 'category', 'ego_pose', 'instance', 'log', 'map',
               'sample', 'sample_annotation', 'sample_data', 'scene', 'sensor', 'visibility')

CATEGORIES = {
    'animal': 'All animals, e.g. cats, rats, dogs, deer, birds.',
    'human.pedestrian.adult': 'Adult subcategory.',
    'human.pedestrian.child': 'Child subcategory.',
    'human.pedestrian.construction_worker': 'Construction worker.',
    'human.pedestrian.personal_mobility': 'A small electric or self-propelled vehicle.',
    'human.pedestrian.police_officer': 'Police officer.',
    'human.pedestrian.stroller': 'Strollers.',
    'human.pedestrian.wheelchair': 'Wheelchairs.',
    'movable_object.barrier': 'Temporary road barrier to redirect traffic.',
    'movable_object.debris': 'Movable object that is left on the driveable surface.',
    'movable_object.pushable_pullable': 'Objects that a pedestrian may push or pull.',
    'movable_object.trafficcone': 'All types of traffic cone.',
    'static_object.bicycle_rack': 'Area or device intended to park or secure bicycles.',
    'vehicle.bicycle': 'Human or electric powered 2-wheeled vehicle.',
    'vehicle.bus.bendy': 'Bendy bus subcategory.',
    'vehicle.bus.rigid': 'Rigid bus subcategory.',
    'vehicle.car': 'Vehicle designed primarily for personal use.',
    'vehicle.construction': 'Vehicles primarily designed for construction.',
    'vehicle.emergency.ambulance': 'All types of ambulances.',
    'vehicle.emergency.police': 'All types of police vehicles.',
    'vehicle.motorcycle': 'Gasoline or electric powered 2-wheeled vehicle.',
    'vehicle.trailer': 'Any vehicle trailer.',
    'vehicle.truck': 'Vehicles primarily designed to haul cargo.',
}
ATTRIBUTES = {
    'vehicle.moving': 'Vehicle is moving.',
    'vehicle.stopped': 'Vehicle, with a driver/rider in/on it, is currently stationary.',
    'vehicle.parked': 'Vehicle is stationary with no driver/rider in/on it.',
    'cycle.with_rider': 'There is someone on the bicycle or motorcycle.',
    'cycle.without_rider': 'There is nobody on the bicycle or motorcycle.',
    'pedestrian.sitting_lying_down': 'The human is sitting or lying down.',
    'pedestrian.standing': 'The human is standing.',
    'pedestrian.moving': 'The human is moving.',
}
VISIBILITY = {'1': 'v0-40', '2': 'v40-60', '3': 'v60-80', '4': 'v80-100'}


@dataclass
class SensorReading:
    """One sample_data: which sensor, when, where the ego was, which file holds it."""
    channel: str
    timestamp: int
    ego_pose: tuple[float, float, float]
    filename: str
    keyframe: int          # index of the sample it belongs to (the next keyframe for sweeps)
    is_key_frame: bool


@dataclass
class Annotation:
    """One box of one actor at one keyframe."""
    actor: int
    keyframe: int
    category: str
    attribute: str
    centre: tuple[float, float, float]
    size: tuple[float, float, float]
    yaw: float
    num_lidar_pts: int


@dataclass
class SceneRecord:
    """Everything the tables need to know about one scene."""
    name: str
    description: str
    location: str
    logfile: str
    vehicle: str
    date: str
    key_timestamps: list[int]
    readings: list[SensorReading]
    annotations: list[Annotation] = field(default_factory=list)


def build_tables(scenes: list[SceneRecord], rig: list[Sensor], seed: int) -> dict[str, list]:
    """All 13 tables (lists of records) for ``scenes`` seen with ``rig``."""
    tok = lambda *parts: make_token(seed, *parts)
    t: dict[str, list] = {name: [] for name in TABLE_NAMES}
    t['category'] = [dict(token=make_token('category', n), name=n, description=d)
                     for n, d in CATEGORIES.items()]
    t['attribute'] = [dict(token=make_token('attribute', n), name=n, description=d)
                      for n, d in ATTRIBUTES.items()]
    t['visibility'] = [dict(token=k, level=v, description=f'visibility of whole object is {v}')
                       for k, v in VISIBILITY.items()]
    t['sensor'] = [dict(token=make_token('sensor', s.channel), channel=s.channel,
                        modality=s.modality) for s in rig]
    logs_by_location: dict[str, list[str]] = {loc: [] for loc in SEMANTIC_PRIOR_HASH}
    for scene in scenes:
        _add_scene(t, scene, rig, tok, logs_by_location)
    t['map'] = [dict(token=SEMANTIC_PRIOR_HASH[loc], log_tokens=logs, category='semantic_prior',
                     filename=map_filename(loc)) for loc, logs in logs_by_location.items()]
    return t


def _add_scene(t, scene: SceneRecord, rig, tok, logs_by_location) -> None:
    log_token = tok('log', scene.logfile)
    logs_by_location[scene.location].append(log_token)
    t['log'].append(dict(token=log_token, logfile=scene.logfile, vehicle=scene.vehicle,
                         date_captured=scene.date, location=scene.location))
    scene_token = tok('scene', scene.name)
    samples = [tok('sample', scene.name, k) for k in range(len(scene.key_timestamps))]
    t['scene'].append(dict(token=scene_token, log_token=log_token, nbr_samples=len(samples),
                           first_sample_token=samples[0], last_sample_token=samples[-1],
                           name=scene.name, description=scene.description))
    for k, (token, ts) in enumerate(zip(samples, scene.key_timestamps)):
        t['sample'].append(dict(token=token, timestamp=ts, prev=_at(samples, k - 1),
                                next=_at(samples, k + 1), scene_token=scene_token))

    calib = {}
    for s in rig:
        calib[s.channel] = tok('calibrated_sensor', scene.name, s.channel)
        intrinsic = s.intrinsic.tolist() if s.intrinsic is not None else []
        t['calibrated_sensor'].append(dict(
            token=calib[s.channel], sensor_token=make_token('sensor', s.channel),
            translation=list(s.translation), rotation=list(s.rotation),
            camera_intrinsic=intrinsic))
    sizes = {s.channel: (s.width, s.height) for s in rig}
    for channel in sizes:
        chain = sorted((r for r in scene.readings if r.channel == channel),
                       key=lambda r: r.timestamp)
        tokens = [tok('sample_data', scene.name, channel, r.timestamp) for r in chain]
        for i, (r, token) in enumerate(zip(chain, tokens)):
            x, y, yaw = r.ego_pose
            t['ego_pose'].append(dict(token=token, timestamp=r.timestamp,
                                      rotation=yaw_quaternion(yaw), translation=[x, y, 0.0]))
            width, height = sizes[channel]
            t['sample_data'].append(dict(
                token=token, sample_token=samples[r.keyframe], ego_pose_token=token,
                calibrated_sensor_token=calib[channel], timestamp=r.timestamp,
                fileformat='jpg' if width else 'pcd',
                is_key_frame=r.is_key_frame, height=height, width=width, filename=r.filename,
                prev=_at(tokens, i - 1), next=_at(tokens, i + 1)))
    _add_annotations(t, scene, samples, tok)


def _add_annotations(t, scene: SceneRecord, samples: list[str], tok) -> None:
    by_actor: dict[int, list[Annotation]] = {}
    for a in sorted(scene.annotations, key=lambda a: (a.actor, a.keyframe)):
        by_actor.setdefault(a.actor, []).append(a)
    for actor, anns in by_actor.items():
        inst = tok('instance', scene.name, actor)
        tokens = [tok('sample_annotation', scene.name, actor, a.keyframe) for a in anns]
        t['instance'].append(dict(token=inst, category_token=make_token('category',
                                                                          anns[0].category),
                                  nbr_annotations=len(anns), first_annotation_token=tokens[0],
                                  last_annotation_token=tokens[-1]))
        for i, (a, token) in enumerate(zip(anns, tokens)):
            t['sample_annotation'].append(dict(
                token=token, sample_token=samples[a.keyframe], instance_token=inst,
                visibility_token=_visibility(a.num_lidar_pts),
                attribute_tokens=[make_token('attribute', a.attribute)] if a.attribute else [],
                translation=[float(v) for v in a.centre], size=[float(v) for v in a.size],
                rotation=yaw_quaternion(a.yaw), prev=_at(tokens, i - 1), next=_at(tokens, i + 1),
                num_lidar_pts=int(a.num_lidar_pts), num_radar_pts=0))


def _visibility(num_lidar_pts: int) -> str:
    """A rough visibility bin from how many lidar points reached the object."""
    return str(int(np.searchsorted([5, 20, 60], num_lidar_pts, side='right')) + 1)


def _at(tokens: list[str], i: int) -> str:
    return tokens[i] if 0 <= i < len(tokens) else ''
