"""The nuScenes-like sensor rig: six cameras around the roof and LIDAR_TOP.

Mounting positions, headings and focal lengths approximate the real nuScenes car, so that
models, ROIs and augmentations tuned for nuScenes see familiar geometry. With ``image_scale``
the cameras are smaller, and the stored intrinsics shrink with them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pyquaternion import Quaternion

CAMERAS = ('CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_FRONT_LEFT', 'CAM_BACK', 'CAM_BACK_LEFT',
           'CAM_BACK_RIGHT')
LIDAR = 'LIDAR_TOP'
FULL_SIZE = (1600, 900)

# channel: (x, y, z) on the ego, heading (deg, left positive), downward pitch (deg), focal (px),
# principal point (px), trigger delay after the lidar keyframe (s).
_CAMERA_MOUNTS = {
    'CAM_FRONT': ((1.70, 0.01, 1.51), 0.0, 0.6, 1266.0, (816.0, 491.0), 0.012),
    'CAM_FRONT_RIGHT': ((1.55, -0.49, 1.50), -55.0, 0.5, 1261.0, (808.0, 495.0), 0.020),
    'CAM_FRONT_LEFT': ((1.52, 0.49, 1.51), 55.0, 0.4, 1272.0, (827.0, 480.0), 0.004),
    'CAM_BACK': ((0.03, 0.00, 1.58), 180.0, 0.5, 809.0, (829.0, 482.0), 0.045),
    'CAM_BACK_LEFT': ((1.04, 0.48, 1.59), 110.0, 0.7, 1257.0, (792.0, 493.0), 0.054),
    'CAM_BACK_RIGHT': ((1.01, -0.48, 1.56), -110.0, 0.6, 1260.0, (807.0, 501.0), 0.037),
}
_LIDAR_MOUNT = (0.94, 0.0, 1.84)


@dataclass(frozen=True)
class Sensor:
    """One sensor of the rig; ``rotation`` is the sensor-to-ego quaternion ``[w, x, y, z]``."""
    channel: str
    modality: str
    translation: tuple[float, float, float]
    rotation: tuple[float, float, float, float]
    intrinsic: np.ndarray | None = None
    width: int = 0
    height: int = 0
    delay: float = 0.0

    def sensor2ego(self) -> np.ndarray:
        """4x4 transform from the sensor frame to the ego frame."""
        m = np.eye(4)
        m[:3, :3] = Quaternion(self.rotation).rotation_matrix
        m[:3, 3] = self.translation
        return m


def _camera_rotation(heading: float, pitch: float) -> Quaternion:
    """Camera (x right, y down, z forward) to ego (x forward, y left, z up)."""
    h, p = math.radians(heading), math.radians(pitch)
    forward = np.array([math.cos(h) * math.cos(p), math.sin(h) * math.cos(p), -math.sin(p)])
    right = np.array([math.sin(h), -math.cos(h), 0.0])
    down = np.cross(forward, right)
    return Quaternion(matrix=np.stack([right, down, forward], axis=1))


def build_rig(image_scale: float = 1.0) -> list[Sensor]:
    """The six cameras (nuScenes order) then LIDAR_TOP, cameras rendered at ``image_scale``."""
    if not 0.05 <= image_scale <= 1.0:
        raise ValueError(f'image_scale must be in [0.05, 1], got {image_scale}')
    width = int(round(FULL_SIZE[0] * image_scale))
    height = int(round(FULL_SIZE[1] * image_scale))
    sx, sy = width / FULL_SIZE[0], height / FULL_SIZE[1]
    rig = []
    for channel in CAMERAS:
        xyz, heading, pitch, focal, (cx, cy), delay = _CAMERA_MOUNTS[channel]
        k = np.array([[focal * sx, 0.0, cx * sx], [0.0, focal * sy, cy * sy], [0.0, 0.0, 1.0]])
        rig.append(Sensor(channel, 'camera', xyz, tuple(_camera_rotation(heading, pitch).elements),
                          k, width, height, delay))
    # nuScenes LIDAR_TOP: x right, y forward, z up, i.e. -90 deg about the ego z axis.
    lidar_q = Quaternion(axis=[0.0, 0.0, 1.0], angle=-math.pi / 2)
    rig.append(Sensor(LIDAR, 'lidar', _LIDAR_MOUNT, tuple(lidar_q.elements)))
    return rig
