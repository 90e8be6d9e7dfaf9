"""The GT converter on a synthetic map whose polygons meet only up to round-off: the boundary
class holds no zero-width crack rings, and the infos do not depend on which SIMD kernels
numpy picks on this CPU (a crack is there or not by the last bit of the frame change)."""
from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from shapely.geometry import Polygon
from shapely.ops import unary_union

from projects.MapLLaVA.mapllava.datasets.map_gt import VectorizedLocalMap, load_nusc_map
from projects.MapLLaVA.mapllava.datasets.map_gt.geometry import polygon_parts, to_local
from projects.MapLLaVA.mapllava.datasets.map_gt.vectorized_local_map import BOUNDARY_LAYERS
from projects.MapLLaVA.mapllava.datasets.synthetic.capture import network
from projects.MapLLaVA.mapllava.datasets.synthetic.map_expansion import write_map

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCATION = 'singapore-hollandvillage'  # the QA set's cracked map (seed 0)
STEP = 12.0  # metres between poses along every driving lane


def _lidar2global(x: float, y: float, heading: float) -> np.ndarray:
    yaw = heading - math.pi / 2  # LiDAR x points right of the car
    m = np.eye(4)
    m[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    m[:3, 3] = [x, y, 1.8]
    return m


@pytest.fixture(scope='module')
def synthetic_map(tmp_path_factory) -> tuple[str, list[np.ndarray]]:
    net = network(LOCATION, 0)
    root = str(tmp_path_factory.mktemp('crack_map'))
    write_map(net, 0, root)
    poses = []
    for lane in net.driving_lanes():
        s = np.arange(0.0, lane.path.length, STEP)
        poses += [_lidar2global(*p) for p in lane.path.poses(s)]
    return root, poses


def _extract_all(root: str, poses: list[np.ndarray]) -> list[dict]:
    vmap = VectorizedLocalMap(load_nusc_map(root, LOCATION))
    return [vmap.extract(p) for p in poses]


def _maptr_union_holes(vmap: VectorizedLocalMap, pose: np.ndarray) -> list[float]:
    """Areas of the holes of MapTR's plain union(union(road_segment), union(lane))."""
    x, y, yaw = float(pose[0, 3]), float(pose[1, 3]), math.atan2(pose[1, 0], pose[0, 0])
    patch = vmap.patch_polygon(x, y, yaw)
    unions = [unary_union([to_local(g, x, y, yaw) for _, g in vmap._clipped('poly', layer, patch)])
              for layer in BOUNDARY_LAYERS]
    return [Polygon(r).area for p in polygon_parts(unary_union(unions)) for r in p.interiors]


def test_round_off_cracks_are_no_boundaries(synthetic_map):
    root, poses = synthetic_map
    vmap = VectorizedLocalMap(load_nusc_map(root, LOCATION))
    holes = [a for p in poses for a in _maptr_union_holes(vmap, p)]
    # precondition: the map has cracks, and nothing else makes holes in its roads
    assert any(a < 1e-9 for a in holes), 'no round-off cracks: this test checks nothing'
    assert all(a < 1e-9 or a > 1.0 for a in holes)
    for pose in poses:
        annos = vmap.extract(pose)
        for v, lab, closed in zip(annos['vectors'], annos['labels'], annos['is_closed']):
            if lab == 2 and closed:  # only the real holes are left
                assert Polygon(v).area > 1.0, (pose[:2, 3], v)


def _simd_features() -> list[str]:
    try:
        from numpy._core import _multiarray_umath as umath  # numpy >= 2
    except ImportError:
        from numpy.core import _multiarray_umath as umath
    found = umath.__cpu_features__
    return [f for f in umath.__cpu_dispatch__ if found.get(f)]


def test_infos_do_not_depend_on_simd_kernels(synthetic_map, tmp_path):
    root, poses = synthetic_map
    features = _simd_features()
    if not features:
        pytest.skip('numpy dispatches no SIMD kernels on this CPU: nothing to switch off')
    with open(tmp_path / 'poses.pkl', 'wb') as f:
        pickle.dump(poses, f)
    code = ('import pickle, sys; from tests.test_map_gt_round_off import _extract_all; '
            'poses = pickle.load(open(sys.argv[2], "rb")); '
            'pickle.dump(_extract_all(sys.argv[1], poses), open(sys.argv[3], "wb"))')
    env = dict(os.environ, NPY_DISABLE_CPU_FEATURES=' '.join(features), OMP_NUM_THREADS='1')
    subprocess.run([sys.executable, '-c', code, root, str(tmp_path / 'poses.pkl'),
                    str(tmp_path / 'plain.pkl')], check=True, cwd=REPO, env=env)
    with open(tmp_path / 'plain.pkl', 'rb') as f:
        plain = pickle.load(f)
    here = _extract_all(root, poses)
    assert len(plain) == len(here)
    for a, b in zip(here, plain):  # same instances and vertices, up to float noise
        assert a['labels'].tolist() == b['labels'].tolist()
        assert [v.shape for v in a['vectors']] == [v.shape for v in b['vectors']]
        assert all(np.allclose(u, v, rtol=0, atol=1e-6) for u, v in zip(a['vectors'], b['vectors']))
