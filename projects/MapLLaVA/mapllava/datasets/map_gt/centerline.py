"""Merge lane / lane-connector centre paths into connected centerlines (MapTRv2's rule).

Every clipped centre path adds its (mm-rounded) vertices as a directed chain to a graph; a
lane's end is linked to the start of each successor present in the patch. Each simple path
from a source (no incoming edge) to a sink (no outgoing edge) is one centerline instance,
simplified with a 0.2 m tolerance.
"""
from __future__ import annotations

import networkx as nx
import numpy as np
from shapely.geometry import LineString

from .geometry import line_parts

Point2 = tuple[float, float]


def _chains(geom) -> list[list[Point2]]:
    return [[(float(x), float(y)) for x, y in np.round(np.asarray(p.coords)[:, :2], 3)]
            for p in line_parts(geom)]


def centerline_paths(lanes: dict[str, dict], simplify_tol: float = 0.2) -> list[LineString]:
    """Connected centerlines from ``{token: dict(centerline, incoming, outgoing)}``.

    ``centerline`` is a (Multi)LineString in the LiDAR frame; ``incoming`` / ``outgoing``
    are the devkit connectivity tokens. Lanes are taken in dict order (deterministic).
    """
    chains = {tok: c for tok, lane in lanes.items() if (c := _chains(lane['centerline']))}
    graph = nx.DiGraph()
    for tok, parts in chains.items():
        for chain in parts:
            graph.add_nodes_from(chain)
            graph.add_edges_from((a, b) for a, b in zip(chain[:-1], chain[1:]) if a != b)
        start, end = parts[0][0], parts[-1][-1]
        for pred in lanes[tok]['incoming']:
            if pred in chains and chains[pred][-1][-1] != start:
                graph.add_edge(chains[pred][-1][-1], start)
        for succ in lanes[tok]['outgoing']:
            if succ in chains and chains[succ][0][0] != end:
                graph.add_edge(end, chains[succ][0][0])
    sinks = [n for n, d in graph.out_degree() if d == 0]
    sources = [n for n, d in graph.in_degree() if d == 0]
    out = []
    for src in sources:
        for path in nx.all_simple_paths(graph, src, sinks):
            if len(path) >= 2:
                out.append(LineString(path).simplify(simplify_tol, preserve_topology=True))
    return out
