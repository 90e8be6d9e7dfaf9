"""Questions about a sample's vector map, with typed answers (the LLM's language targets).

Everything is derived from the GT ``map_annos`` alone (LiDAR frame: x right, y forward), so
the targets are deterministic and can be recomputed for old info files. ``QA_VERSION`` is
written with them; bump it whenever a question, threshold or answer format changes, so a
metric never scores answers against targets built by other rules.

Each question type has one fixed question text (a small model can learn it) and a *kind*
that says how its answer is written, parsed and scored (``QA_KINDS``):

- ``count``: a non-negative integer, e.g. ``'3'``;
- ``yesno``: ``'yes'`` / ``'no'`` (value ``bool``);
- ``metres``: integer metres, e.g. ``'12 m'`` (value: the distance in metres, to 1 cm; the
  text rounds half up, so a perfect answer is at most 0.5 m off the value);
- ``category``: one word of ``CATEGORIES[type]``.

Questions that do not apply to a sample (no crossing ahead, no boundary, no line ahead to
judge the curve by) are left out of its list.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import shapely
from shapely.geometry import LineString, Point, Polygon, box
from shapely.geometry.base import BaseGeometry
from shapely.ops import nearest_points

QA_VERSION = 1
#: ROI (x extent, y extent) in metres the questions are about, centred on the LiDAR
QA_ROI = (30., 60.)
#: "within N m ahead" of ``crossing_ahead``: Euclidean distance from the LiDAR origin
CROSSING_AHEAD_M = 20.
#: "within N m" (any direction) of ``crossing_near``
CROSSING_NEAR_M = 20.
#: ``road_curve``: |mean heading change| (degrees) above which the road curves
CURVE_MIN_DEG = 10.
#: ``road_curve``: pieces of line ahead shorter than this (m) do not vote
CURVE_MIN_LEN = 10.
#: ``road_curve``: arc length (m) over which the start and end headings of a piece are taken
CURVE_END_LEN = 5.
#: ``road_curve``: only pieces starting within this angle (degrees) of straight ahead vote,
#: so the lines of cross streets do not dilute the ego road's curve
CURVE_MAX_START_DEG = 45.

QA_KINDS = {
    'count_divider': 'count',
    'count_boundary': 'count',
    'crossing_near': 'yesno',
    'crossing_ahead': 'yesno',
    'crossing_distance': 'metres',
    'road_curve': 'category',
    'nearest_boundary_side': 'category',
    'nearest_boundary_distance': 'metres',
}
CATEGORIES = {
    'road_curve': ('left', 'right', 'straight'),
    'nearest_boundary_side': ('left', 'right'),
}
QUESTIONS = {
    'count_divider': 'How many lane dividers are there?',
    'count_boundary': 'How many road boundaries are there?',
    'crossing_near': f'Is there a pedestrian crossing within {CROSSING_NEAR_M:.0f} m?',
    'crossing_ahead': f'Is there a pedestrian crossing within {CROSSING_AHEAD_M:.0f} m ahead?',
    'crossing_distance': 'How far ahead is the nearest pedestrian crossing?',
    'road_curve': 'Does the road ahead curve left, right or go straight?',
    'nearest_boundary_side': 'On which side is the nearest road boundary?',
    'nearest_boundary_distance': 'How far is the nearest road boundary?',
}
_CLASSES_USED = ('divider', 'ped_crossing', 'boundary')
_COUNT_RE = re.compile(r'\d+')
_METRES_RE = re.compile(r'(\d+(?:\.\d+)?)\s*(?:m|metres|meters)?')


def format_answer(qtype: str, value: int | bool | float | str) -> str:
    """The canonical answer text of a typed value."""
    kind = _kind(qtype)
    if kind == 'count':
        return str(int(value))
    if kind == 'yesno':
        return 'yes' if value else 'no'
    if kind == 'metres':
        return f'{math.floor(float(value) + 0.5)} m'
    if value not in CATEGORIES[qtype]:
        raise ValueError(f'{qtype}: answer must be one of {CATEGORIES[qtype]}, got {value!r}')
    return str(value)


def parse_answer(qtype: str, text: str) -> int | bool | float | str | None:
    """Typed value of an answer text (generated or canonical); None when it is not one.

    Case, surrounding white space and one trailing full stop are ignored; anything else
    around the answer makes it unparseable.
    """
    kind = _kind(qtype)
    if not isinstance(text, str):
        raise TypeError(f'{qtype}: answer text must be a str, got {type(text).__name__}')
    norm = text.strip().lower().removesuffix('.').strip()
    if kind == 'count':
        return int(norm) if _COUNT_RE.fullmatch(norm) else None
    if kind == 'yesno':
        return {'yes': True, 'no': False}.get(norm)
    if kind == 'metres':
        match = _METRES_RE.fullmatch(norm)
        return float(match.group(1)) if match else None
    return norm if norm in CATEGORIES[qtype] else None


def build_map_qa(map_annos: dict, classes: Sequence[str],
                 roi_size: Sequence[float] = QA_ROI) -> dict:
    """Language targets of one sample.

    Args:
        map_annos: ``labels`` (M,) and ``vectors`` (list of (Ni, 2)) in the LiDAR frame.
        classes: class names the labels index (the info file's ``metainfo['classes']``).
        roi_size: (x, y) extent of the region the questions are about; geometry outside it
            is clipped away.

    Returns:
        ``dict(qa_version, description, qa=[dict(type, question, answer, value)])``, the
        questions in ``QA_KINDS`` order.
    """
    lines = _geometries(map_annos, classes, roi_size)
    half_x, half_y = float(roi_size[0]) / 2, float(roi_size[1]) / 2
    ahead = box(-half_x, 0., half_x, half_y)
    origin = Point(0., 0.)
    values: dict[str, int | bool | float | str] = {
        'count_divider': len(lines['divider']),
        'count_boundary': len(lines['boundary']),
    }
    near = min((origin.distance(g) for g in lines['ped_crossing']), default=math.inf)
    values['crossing_near'] = _metres(near) <= CROSSING_NEAR_M
    crossing = [origin.distance(g.intersection(ahead)) for g in lines['ped_crossing']
                if g.intersects(ahead)]
    distance = _metres(min(crossing)) if crossing else None
    values['crossing_ahead'] = distance is not None and distance <= CROSSING_AHEAD_M
    if distance is not None:
        values['crossing_distance'] = distance
    curve = _road_curve(lines['divider'], ahead) or _road_curve(lines['boundary'], ahead)
    if curve is not None:
        values['road_curve'] = curve
    if lines['boundary']:
        dist, idx = min((origin.distance(g), i) for i, g in enumerate(lines['boundary']))
        nearest = nearest_points(origin, lines['boundary'][idx])[1]
        values['nearest_boundary_side'] = 'left' if nearest.x < 0 else 'right'
        values['nearest_boundary_distance'] = _metres(dist)
    qa = [dict(type=t, question=QUESTIONS[t], answer=format_answer(t, values[t]), value=values[t])
          for t in QA_KINDS if t in values]
    return dict(qa_version=QA_VERSION, description=_describe(values), qa=qa)


def _kind(qtype: str) -> str:
    if qtype not in QA_KINDS:
        raise ValueError(f'unknown question type {qtype!r}; one of {list(QA_KINDS)}')
    return QA_KINDS[qtype]


def _metres(value: float) -> float:
    return round(float(value), 2)


def _describe(values: dict) -> str:
    """Caption-style summary: counts, nearest crossing ahead, curve."""
    parts = [f'{values["count_divider"]} dividers', f'{values["count_boundary"]} boundaries']
    if 'crossing_distance' in values:
        parts.append(f'crossing {format_answer("crossing_distance", values["crossing_distance"])}'
                     ' ahead')
    else:
        parts.append('no crossing ahead')
    curve = values.get('road_curve')
    if curve is not None:
        parts.append('road goes straight' if curve == 'straight' else f'road curves {curve}')
    return ', '.join(parts) + '.'


def _geometries(map_annos: dict, classes: Sequence[str],
                roi_size: Sequence[float]) -> dict[str, list[BaseGeometry]]:
    """Class name -> the instances' shapely geometries clipped to the ROI (empty ones dropped)."""
    missing = [c for c in _CLASSES_USED if c not in classes]
    if missing:
        raise ValueError(f'classes {list(classes)} lack {missing}, which the questions need')
    for key in ('labels', 'vectors'):
        if key not in map_annos:
            raise ValueError(f'map_annos has no {key!r} (keys: {sorted(map_annos)})')
    labels = np.asarray(map_annos['labels']).reshape(-1)
    vectors = map_annos['vectors']
    if len(vectors) != len(labels):
        raise ValueError(f'map_annos: {len(vectors)} vectors but {len(labels)} labels')
    roi = box(-roi_size[0] / 2, -roi_size[1] / 2, roi_size[0] / 2, roi_size[1] / 2)
    out: dict[str, list[BaseGeometry]] = {c: [] for c in _CLASSES_USED}
    for i, (label, vec) in enumerate(zip(labels.tolist(), vectors)):
        if not 0 <= label < len(classes):
            raise ValueError(f'map_annos: label {label} of instance {i} is not an index of '
                             f'classes {list(classes)}')
        name = classes[label]
        if name not in out:
            continue
        pts = np.asarray(vec, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2 or not np.isfinite(pts).all():
            raise ValueError(f'map_annos: vector {i} must be a finite (N, 2) array, got shape '
                             f'{pts.shape}')
        if len(pts) < 2:
            continue
        geom: BaseGeometry = LineString(pts)
        if name == 'ped_crossing' and len(pts) >= 3:
            poly = Polygon(pts)
            poly = poly if poly.is_valid else poly.buffer(0)
            geom = poly if poly.area > 0 else geom
        geom = geom.intersection(roi)
        if not geom.is_empty and (geom.length > 0 or name == 'ped_crossing'):
            out[name].append(geom)
    return out


def _road_curve(lines: list[BaseGeometry], ahead: Polygon) -> str | None:
    """Left/right/straight from the length-weighted mean heading change of the lines ahead.

    Each piece runs away from the ego (lower y first); its heading change is the signed angle
    from its first ``CURVE_END_LEN`` metres to its last (positive = counter-clockwise = left).
    None when no piece of ``CURVE_MIN_LEN`` metres starts roughly straight ahead.
    """
    total, weight = 0., 0.
    for piece in (p for g in lines for p in shapely.get_parts(g.intersection(ahead))):
        length = piece.length
        if piece.geom_type != 'LineString' or length < CURVE_MIN_LEN:
            continue
        if piece.coords[0][1] > piece.coords[-1][1]:
            piece = piece.reverse()
        end = min(CURVE_END_LEN, length / 3)
        p0, p1, q0, q1 = (np.asarray(piece.interpolate(d).coords[0])
                          for d in (0., end, length - end, length))
        d0, d1 = p1 - p0, q1 - q0
        if math.degrees(abs(math.atan2(d0[0], d0[1]))) > CURVE_MAX_START_DEG:
            continue
        total += length * math.degrees(math.atan2(d0[0] * d1[1] - d0[1] * d1[0],
                                                  float(d0 @ d1)))
        weight += length
    if weight == 0:
        return None
    mean = total / weight
    return 'left' if mean > CURVE_MIN_DEG else 'right' if mean < -CURVE_MIN_DEG else 'straight'
