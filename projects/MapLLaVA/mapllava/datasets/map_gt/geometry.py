"""Shapely helpers for the GT converter: frame change, part extraction, ring clipping.

Kept apart from the map access so they can be unit-tested on plain geometries.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from shapely import affinity
from shapely.geometry import LinearRing, LineString, Polygon, box
from shapely.geometry.base import BaseGeometry
from shapely.ops import linemerge, unary_union

#: Rings of a polygon union that enclose less than this (m²) are round-off, not map
#: geometry. Map polygons that share an edge only up to round-off (the synthetic maps' road
#: strips and junction cores; any map whose neighbours do not share node tokens) merge into
#: a polygon with a zero-width crack: a hole of ~1e-15 m² and up to metres of perimeter,
#: whose ring would count as one more road boundary. Whether the crack is there at all
#: depends on the last bit of the frame change, i.e. on the CPU's SIMD kernels.
MIN_RING_AREA = 1e-3


def to_local(geom: BaseGeometry, x: float, y: float, yaw: float) -> BaseGeometry:
    """Global map frame -> patch frame: translate by ``-(x, y)``, rotate by ``-yaw``.

    Same result as MapTR's ``rotate(-patch_angle, origin=(x, y))`` then translate, in one
    affine step. With ``yaw`` the heading of the LiDAR x axis this is the LiDAR frame (x, y).
    """
    c, s = math.cos(yaw), math.sin(yaw)
    return affinity.affine_transform(geom, [c, s, -s, c, -(c * x + s * y), s * x - c * y])


def line_parts(geom: BaseGeometry | None) -> list[LineString]:
    """Non-degenerate LineStrings of any geometry (points and polygons are dropped)."""
    if geom is None or geom.is_empty:
        return []
    if geom.geom_type in ('LineString', 'LinearRing'):
        return [LineString(geom.coords)] if geom.length > 0 else []
    if hasattr(geom, 'geoms'):
        return [part for g in geom.geoms for part in line_parts(g)]
    return []


def polygon_parts(geom: BaseGeometry | None) -> list[Polygon]:
    """Non-empty Polygons of any geometry (lines and points from touching edges are dropped)."""
    if geom is None or geom.is_empty:
        return []
    if geom.geom_type == 'Polygon':
        return [geom]
    if hasattr(geom, 'geoms'):
        return [part for g in geom.geoms for part in polygon_parts(g)]
    return []


def union_parts(geoms: Iterable[BaseGeometry]) -> list[Polygon]:
    """Polygons of the union of ``geoms`` without the round-off holes and slivers whose area
    is below :data:`MIN_RING_AREA`."""
    geoms = [g for g in geoms if not g.is_empty]
    parts = polygon_parts(unary_union(geoms)) if geoms else []
    return [Polygon(p.exterior, [r for r in p.interiors if Polygon(r).area >= MIN_RING_AREA])
            for p in parts if p.area >= MIN_RING_AREA]


def oriented(ring: LinearRing, ccw: bool) -> LinearRing:
    """``ring`` with the requested orientation."""
    return ring if ring.is_ccw == ccw else LinearRing(list(ring.coords)[::-1])


def local_box(roi_size: Sequence[float], margin: float) -> Polygon:
    """Axis-aligned ROI box in the patch frame, grown by ``margin`` (negative shrinks)."""
    hx, hy = roi_size[0] / 2 + margin, roi_size[1] / 2 + margin
    return box(-hx, -hy, hx, hy)


def polygon_rings_to_lines(polygons: Iterable[Polygon], clip: Polygon) -> list[LineString]:
    """MapTR's contour rule: rings of the polygons, exteriors clockwise then interiors
    counter-clockwise, each clipped to ``clip`` with the pieces merged by ``linemerge``.

    A ring that lies inside ``clip`` is kept whole (closed, same start vertex).
    """
    polygons = list(polygons)
    rings = [oriented(p.exterior, ccw=False) for p in polygons]
    rings += [oriented(r, ccw=True) for p in polygons for r in p.interiors]
    lines: list[LineString] = []
    for ring in rings:
        if clip.contains(ring):
            lines.append(LineString(ring.coords))
            continue
        piece = ring.intersection(clip)
        if piece.geom_type == 'MultiLineString':
            piece = linemerge(piece)
        lines.extend(line_parts(piece))
    return lines
