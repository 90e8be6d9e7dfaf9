"""Planar paths made of straight and circular pieces.

Every road, lane, connector and trajectory of the synthetic world is such a path, because the
nuScenes map expansion stores lane centrelines as arc-line paths (arcs and straights): with
the same primitives the stored arclines, the painted markings and the ego motion agree exactly.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

# Radius written for straight arcline pieces; the devkit ignores it for zero-length arcs.
_STRAIGHT_RADIUS = 1000.0


@dataclass(frozen=True)
class Path:
    """A start pose ``(x, y, yaw)`` followed by pieces ``(length, curvature)``.

    Positive curvature turns left. Offsetting (``offset``) and reversing (``reversed``) keep the
    piecewise-circular form, so lane centrelines derived from a road stay exact arclines.
    """

    start: tuple[float, float, float]
    pieces: tuple[tuple[float, float], ...]

    @property
    def length(self) -> float:
        return float(sum(length for length, _ in self.pieces))

    def _piece_starts(self) -> list[tuple[float, float, float, float]]:
        """(s0, x, y, yaw) at the start of every piece."""
        x, y, yaw = self.start
        out, s = [], 0.0
        for length, k in self.pieces:
            out.append((s, x, y, yaw))
            x, y, yaw = _advance(x, y, yaw, k, length)
            s += length
        out.append((s, x, y, yaw))
        return out

    def end(self) -> tuple[float, float, float]:
        _, x, y, yaw = self._piece_starts()[-1]
        return x, y, yaw

    def poses(self, s: np.ndarray) -> np.ndarray:
        """Poses ``(N, 3)`` at arc lengths ``s`` (clipped to the path)."""
        s = np.clip(np.atleast_1d(np.asarray(s, dtype=np.float64)), 0.0, self.length)
        starts = self._piece_starts()
        s0 = np.array([p[0] for p in starts[:-1]])
        idx = np.clip(np.searchsorted(s0, s, side='right') - 1, 0, len(self.pieces) - 1)
        out = np.empty((len(s), 3))
        for i in np.unique(idx):
            m = idx == i
            _, x, y, yaw = starts[i]
            out[m] = np.stack(_advance(x, y, yaw, self.pieces[i][1], s[m] - s0[i]), axis=1)
        return out

    def sample(self, step: float, s_from: float = 0.0, s_to: float | None = None) -> np.ndarray:
        """Points ``(N, 2)`` at most ``step`` apart, always including both ends and the
        piece joints (so straight pieces stay exact)."""
        s_to = self.length if s_to is None else s_to
        joints = [p[0] for p in self._piece_starts()]
        ss = [s_from, s_to] + [j for j in joints if s_from < j < s_to]
        n = max(int(math.ceil((s_to - s_from) / step)), 1)
        ss += list(np.linspace(s_from, s_to, n + 1))
        ss = np.unique(np.round(ss, 9))
        return self.poses(ss)[:, :2]

    def offset(self, d: float) -> Path:
        """Parallel path ``d`` metres to the left (negative: right)."""
        x, y, yaw = self.start
        start = (x - d * math.sin(yaw), y + d * math.cos(yaw), yaw)
        pieces = tuple((length * (1 - k * d), k / (1 - k * d)) for length, k in self.pieces)
        return Path(start, pieces)

    def reversed(self) -> Path:
        """The same curve driven the other way."""
        x, y, yaw = self.end()
        return Path((x, y, _wrap(yaw + math.pi)), tuple((ln, -k) for ln, k in self.pieces[::-1]))

    def sub(self, s_from: float, s_to: float) -> Path:
        """The part of the path between two arc lengths."""
        x, y, yaw = self.poses([s_from])[0]
        pieces, s = [], 0.0
        for length, k in self.pieces:
            a, b = max(s, s_from), min(s + length, s_to)
            if b - a > 1e-9:
                pieces.append((b - a, k))
            s += length
        return Path((float(x), float(y), float(yaw)), tuple(pieces))

    def across(self, s: float, left: float, right: float) -> np.ndarray:
        """Segment ``(2, 2)`` perpendicular to the path at ``s``, from offset left to right."""
        x, y, yaw = self.poses([s])[0]
        n = np.array([-math.sin(yaw), math.cos(yaw)])
        return np.stack([np.array([x, y]) + left * n, np.array([x, y]) + right * n])

    def arclines(self) -> list[dict]:
        """The path as devkit ``arcline_path_3`` records (one per piece)."""
        out = []
        starts = self._piece_starts()
        for (length, k), (_, x, y, yaw), (_, x1, y1, yaw1) in zip(self.pieces, starts, starts[1:]):
            if abs(k) < 1e-9:
                shape, seg, radius = 'LSR', [0.0, length, 0.0], _STRAIGHT_RADIUS
            else:
                shape, seg, radius = ('LSL' if k > 0 else 'RSR'), [length, 0.0, 0.0], 1.0 / abs(k)
            out.append(dict(start_pose=[x, y, yaw], end_pose=[x1, y1, yaw1], shape=shape,
                            radius=radius, segment_length=seg))
        return out


def _advance(x, y, yaw, k, s):
    """Pose after driving ``s`` metres with curvature ``k`` (works on arrays of ``s``)."""
    if abs(k) < 1e-12:
        return x + s * np.cos(yaw), y + s * np.sin(yaw), yaw + 0 * np.asarray(s)
    th = yaw + k * s
    return (x + (np.sin(th) - math.sin(yaw)) / k, y - (np.cos(th) - math.cos(yaw)) / k,
            _wrap(th))


def _wrap(a):
    """Angle(s) wrapped to [-pi, pi)."""
    return (a + math.pi) % (2 * math.pi) - math.pi


def connect(a: tuple[float, float, float], b: tuple[float, float, float]) -> Path:
    """Straight or single-turn path from pose ``a`` to pose ``b``.

    Used for lane connectors: either collinear poses, or perpendicular headings joined by
    straight-arc-straight with the largest radius that fits the corner.
    """
    ax, ay, ayaw = a
    bx, by, byaw = b
    turn = float(_wrap(byaw - ayaw))
    if abs(turn) < 1e-6:
        return Path(a, ((math.hypot(bx - ax, by - ay), 0.0),))
    # Corner where the two heading lines cross.
    da = np.array([math.cos(ayaw), math.sin(ayaw)])
    db = np.array([math.cos(byaw), math.sin(byaw)])
    t = np.linalg.solve(np.stack([da, db], axis=1), np.array([bx - ax, by - ay]))
    dist_a, dist_b = float(t[0]), float(t[1])
    tan_half = math.tan(abs(turn) / 2)
    radius = min(dist_a, dist_b) / tan_half
    tangent = radius * tan_half
    k = math.copysign(1.0 / radius, turn)
    pieces = [(dist_a - tangent, 0.0), (radius * abs(turn), k), (dist_b - tangent, 0.0)]
    return Path(a, tuple(p for p in pieces if p[0] > 1e-9))


def make_token(*parts: object) -> str:
    """Deterministic 32-hex token (nuScenes table style) from any identifying parts."""
    return hashlib.md5('/'.join(map(str, parts)).encode()).hexdigest()


def make_uuid(*parts: object) -> str:
    """Deterministic UUID-formatted string (map-expansion style) from any identifying parts."""
    h = make_token(*parts)
    return f'{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}'



def yaw_quaternion(yaw: float) -> list[float]:
    """``[w, x, y, z]`` of a rotation about +z, the nuScenes quaternion order."""
    return [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]
