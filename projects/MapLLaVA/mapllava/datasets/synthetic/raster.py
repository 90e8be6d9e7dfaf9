"""Top-down label rasters of the road network.

The camera and lidar renderers look ground colours and reflectivity up in one of these rasters,
so a marking appears in an image exactly where the map geometry puts it. The same polygon
filler writes the devkit's semantic-prior mask.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon, box

from .geometry import Path
from .road_network import HALF_WIDTH, RoadNetwork

# Surface labels.
TERRAIN, ROAD, SIDEWALK, KERB, WHITE, YELLOW = range(6)
RAISED = (TERRAIN, SIDEWALK, KERB)   # surfaces on top of the kerb, above the road
KERB_HEIGHT = 0.15
KERB_BAND = 0.3
MARKING_WIDTH = 0.15
DASH, GAP = 3.0, 3.0
STRIPE, STRIPE_GAP = 0.5, 0.5
_SHIFT = 4                            # fixed-point bits for sub-pixel polygon filling


@dataclass
class LabelRaster:
    """Surface labels over an axis-aligned window: ``labels[row, col]`` covers
    ``x = x0 + (col + .5) * res``, ``y = y0 + (row + .5) * res`` (rows grow with y).

    Outside its window a raster defers to ``fallback`` (a coarser, larger one), so far-away
    ground costs little memory; with no fallback it reads TERRAIN.
    """
    labels: np.ndarray
    x0: float
    y0: float
    res: float
    fallback: LabelRaster | None = None

    def lookup(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Labels at global points."""
        col = np.floor((x - self.x0) / self.res).astype(np.int64)
        row = np.floor((y - self.y0) / self.res).astype(np.int64)
        h, w = self.labels.shape
        ok = (col >= 0) & (col < w) & (row >= 0) & (row < h)
        if self.fallback is None:
            out = np.full(x.shape, TERRAIN, dtype=np.uint8)
        else:
            out = self.fallback.lookup(x, y)
        out[ok] = self.labels[row[ok], col[ok]]
        return out


def fill_polygon(img: np.ndarray, poly: Polygon | MultiPolygon, value: int, x0: float, y0: float,
                 res: float, flip_y: bool = False) -> None:
    """Fill ``poly`` (holes respected) into ``img`` whose pixel (0, 0) corner is at (x0, y0).

    ``flip_y`` puts larger y in smaller rows, the orientation of the devkit's map masks.
    """
    polys = poly.geoms if isinstance(poly, MultiPolygon) else [poly]
    scale = 1 << _SHIFT
    contours = []
    for p in polys:
        for ring in [p.exterior, *p.interiors]:
            xy = np.asarray(ring.coords)
            col = (xy[:, 0] - x0) / res
            row = (xy[:, 1] - y0) / res
            if flip_y:
                row = img.shape[0] - row
            contours.append(np.round(np.stack([col, row], 1) * scale - 0.5 * scale)
                            .astype(np.int32))
    if contours:
        cv2.fillPoly(img, contours, int(value), lineType=cv2.LINE_8, shift=_SHIFT)


def rasterize(net: RoadNetwork, window: tuple[float, float, float, float], res: float,
              fallback: LabelRaster | None = None,
              markings: list[tuple[Polygon, int]] | None = None) -> LabelRaster:
    """Label raster of the window ``(xmin, ymin, xmax, ymax)`` at ``res`` metres per pixel.

    ``markings`` may pass ``marking_polygons(net)`` computed once for many rasters.
    """
    xmin, ymin, xmax, ymax = window
    w, h = int(math.ceil((xmax - xmin) / res)), int(math.ceil((ymax - ymin) / res))
    img = np.full((h, w), TERRAIN, dtype=np.uint8)
    clip = box(xmin - 5, ymin - 5, xmax + 5, ymax + 5)
    fill = lambda geom, v: fill_polygon(img, geom, v, xmin, ymin, res)
    for walk in net.walkways:
        if walk.intersects(clip):
            fill(walk, SIDEWALK)
    fill(net.drivable.buffer(KERB_BAND).intersection(clip), KERB)
    fill(net.drivable.intersection(clip), ROAD)
    if markings is None:
        markings = marking_polygons(net, clip)
    for geom, value in markings:
        x0, y0, x1, y1 = geom.bounds
        if x1 >= xmin and x0 <= xmax and y1 >= ymin and y0 <= ymax:
            fill(geom, value)
    return LabelRaster(img, xmin, ymin, res, fallback)


def marking_polygons(net: RoadNetwork, clip: Polygon | None = None
                     ) -> list[tuple[Polygon, int]]:
    """Paint on the road: dashed white lane dividers, double yellow road dividers, zebra
    stripes and stop bars, as (polygon, label) pairs near ``clip`` (default: everywhere)."""
    clip = box(0, 0, *net.canvas_edge) if clip is None else clip
    out = []
    for div in net.dividers:
        if not _near(div.path, clip):
            continue
        if div.dashed:
            for s in np.arange(0.0, div.path.length - 0.5, DASH + GAP):
                out.append((_band(div.path, -MARKING_WIDTH / 2, MARKING_WIDTH / 2, s,
                                  min(s + DASH, div.path.length)), WHITE))
        else:
            for lo, hi in ((-0.2, -0.1), (0.1, 0.2)):
                out.append((_band(div.path, lo, hi), YELLOW))
    for cross in net.crossings:
        if cross.polygon.intersects(clip):
            out.extend((stripe, WHITE) for stripe in _zebra(cross.polygon, cross.stripe_dir))
    out.extend((stop.polygon, WHITE) for stop in net.stop_lines if stop.polygon.intersects(clip))
    return out


def _near(path: Path, clip: Polygon) -> bool:
    pts = path.sample(20.0)
    return box(*pts.min(0), *pts.max(0)).intersects(clip)


def _band(path: Path, lo: float, hi: float, s_from: float = 0.0,
          s_to: float | None = None) -> Polygon:
    a = path.offset(lo).sample(0.5, s_from, s_to)
    b = path.offset(hi).sample(0.5, s_from, s_to)
    return Polygon(np.concatenate([a, b[::-1]]))


def _zebra(poly: Polygon, direction: float) -> list[Polygon]:
    """Stripes parallel to ``direction`` filling a rectangular crossing."""
    c = poly.centroid
    local = affinity.rotate(poly, -direction, origin=c, use_radians=True)
    xmin, ymin, xmax, ymax = local.bounds
    stripes = []
    for y in np.arange(-HALF_WIDTH + STRIPE_GAP / 2, HALF_WIDTH, STRIPE + STRIPE_GAP):
        stripe = box(xmin, c.y + y, xmax, c.y + y + STRIPE)
        stripes.append(affinity.rotate(stripe, direction, origin=c, use_radians=True))
    return stripes
