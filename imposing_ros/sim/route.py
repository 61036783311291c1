"""Routes on the road graph and the vehicle's trajectory along them.

Route set: starting at a node, the vehicle repeatedly drives the shortest path (networkx
Dijkstra) to the nearest directed street segment it has not driven yet, until the distinct road
covered reaches the target. Two-way streets are thus driven in both directions where the graph
allows. This greedy cover is written here: networkx offers no directed rural-postman solver.

Trajectory: the route's polyline is resampled, its corners rounded (Gaussian smoothing), offset
to the right lane (right-hand traffic), then a speed profile is fitted: a curve limit from the
lateral acceleration, a stop before every turn, acceleration and braking limits (forward and
backward passes). Time is the integral of ds / v, plus a seeded dwell at each stop.
"""

from __future__ import annotations

from dataclasses import dataclass
import logging
import math

import networkx as nx
import numpy as np
from scipy.ndimage import gaussian_filter1d

from imposing_ros.sim.city import City
from imposing_ros.sim.config import RouteConfig, VehicleConfig

LOGGER = logging.getLogger('imposing_ros.sim')

STEP_M = 0.5  # resampling step of the path


@dataclass
class RouteSet:
    """Ordered directed graph edges driven (one continuous drive) and coverage figures."""

    edges: list[tuple[int, int]]
    distinct_m: float           # distinct road (undirected) covered
    distinct_directed_m: float  # distinct (road, direction) covered
    driven_m: float             # total along the route, repeats included


def plan_routes(city: City, config: RouteConfig) -> RouteSet:
    """Greedy cover of the largest strongly connected part of the graph (module docstring)."""
    graph = city.graph
    component = max(nx.strongly_connected_components(graph), key=len)
    sub = graph.subgraph(component)
    if config.start_xy is not None:
        target = np.asarray(config.start_xy, float)
    else:
        target = np.zeros(2)
    nodes = sorted(component)
    start = min(nodes, key=lambda n: float(np.linalg.norm(city.node_xy[n] - target)))
    covered_roads: set[int] = set()
    covered_directed: set[tuple[int, bool]] = set()
    route: list[tuple[int, int]] = []
    distinct = directed = driven = 0.0
    current = start

    def drive(a: int, b: int) -> None:
        nonlocal distinct, directed, driven
        data = sub[a][b]
        route.append((a, b))
        driven += data['length']
        key = (data['road'], data['forward'])
        if key not in covered_directed:
            covered_directed.add(key)
            directed += data['length']
        if data['road'] not in covered_roads:
            covered_roads.add(data['road'])
            distinct += data['length']

    while distinct < config.target_distinct_length_m:
        lengths, paths = nx.single_source_dijkstra(sub, current, weight='length')
        best, best_cost = None, math.inf
        for a in sorted(lengths):
            for b in sorted(sub.successors(a)):
                data = sub[a][b]
                if (data['road'], data['forward']) in covered_directed:
                    continue
                # Nearest undriven (road, direction): two-way streets get driven both ways.
                # Immediate U-turns are avoided.
                cost = lengths[a]
                if route and route[-1] == (b, a):
                    cost += 100.0
                if cost < best_cost:
                    best, best_cost = (a, b), cost
        if best is None:
            break
        path = paths[best[0]]
        for a, b in zip(path[:-1], path[1:]):
            drive(a, b)
        drive(*best)
        current = best[1]
    LOGGER.info('route set: %d segments, distinct road %.2f km (%.2f km counting directions), '
                'driven %.2f km', len(route), distinct / 1e3, directed / 1e3, driven / 1e3)
    return RouteSet(route, distinct, directed, driven)


def route_polyline(city: City, routes: RouteSet) -> tuple[np.ndarray, np.ndarray]:
    """Centreline of the route ``[N, 2]`` and the lane offset (m, to the right) per point."""
    points, offsets = [], []
    for a, b in routes.edges:
        data = city.graph[a][b]
        road = city.roads[data['road']]
        coords = road.coords if data['forward'] else road.coords[::-1]
        # Rightmost lane: centre of the lane next to the kerb.
        if road.oneway:
            offset = (road.lanes - 1) / 2 * (road.width / road.lanes)
        else:
            offset = road.width / 2 - (road.width / road.lanes) / 2
        start = 1 if points else 0
        points.extend(coords[start:])
        offsets.extend([offset] * (len(coords) - start))
    return np.asarray(points, float), np.asarray(offsets, float)


def _resample(points: np.ndarray, values: np.ndarray, step: float):
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    keep = np.concatenate([[True], seg > 1e-6])
    points, values = points[keep], values[keep]
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    grid = np.arange(0.0, s[-1], step)
    out = np.stack([np.interp(grid, s, points[:, 0]), np.interp(grid, s, points[:, 1])], axis=1)
    return out, np.interp(grid, s, values)


@dataclass
class Trajectory:
    """Base_link states sampled at the odometry rate (map frame, planar)."""

    t: np.ndarray      # [K] seconds from the start
    xy: np.ndarray     # [K, 2]
    yaw: np.ndarray    # [K] radians, unwrapped
    speed: np.ndarray  # [K] m/s, forward
    yaw_rate: np.ndarray  # [K] rad/s
    s: np.ndarray      # [K] distance driven, metres


def build_trajectory(centre: np.ndarray, offsets: np.ndarray, vehicle: VehicleConfig,
                     rate_hz: float, rng: np.random.Generator,
                     lane_offset_m: float = 0.0) -> Trajectory:
    """Smooth lane-following trajectory with stops at turns (module docstring).

    ``lane_offset_m``: drive this far right of the lane centre (a traversal of its own path).
    """
    if len(centre) < 2:
        raise ValueError('route is too short to drive')
    path, offset = _resample(centre, offsets + lane_offset_m, STEP_M)
    sigma = max(vehicle.corner_smoothing_m / STEP_M, 1e-3)
    smooth = gaussian_filter1d(path, sigma, axis=0, mode='nearest')
    heading = np.unwrap(np.arctan2(*np.gradient(smooth, axis=0)[:, ::-1].T))
    right = np.stack([np.sin(heading), -np.cos(heading)], axis=1)
    lane = smooth + right * gaussian_filter1d(offset, sigma, mode='nearest')[:, None]
    lane = gaussian_filter1d(lane, 2.0, axis=0, mode='nearest')
    lane, _ = _resample(lane, np.zeros(len(lane)), STEP_M)
    d = np.gradient(lane, axis=0)
    yaw = np.unwrap(np.arctan2(d[:, 1], d[:, 0]))
    yaw = gaussian_filter1d(yaw, 2.0, mode='nearest')
    n = len(lane)
    ds = STEP_M
    curvature = np.abs(np.gradient(yaw)) / ds

    # Speed limits: traversal-scaled maximum, curves, stops before turns.
    v_max = vehicle.max_speed_mps * (1 + vehicle.speed_variation * rng.uniform(-1, 1))
    limit = np.minimum(v_max, np.sqrt(vehicle.lateral_accel_mps2 / np.maximum(curvature, 1e-6)))
    window = int(round(10.0 / ds))
    change = np.abs(yaw[np.minimum(np.arange(n) + window, n - 1)]
                    - yaw[np.maximum(np.arange(n) - window, 0)])
    turn = change > math.radians(vehicle.turn_angle_deg)
    stops = []
    i = 0
    while i < n:
        if turn[i]:
            j = i
            while j < n and turn[j]:
                j += 1
            apex = i + int(np.argmax(curvature[i:j]))
            stop = max(apex - int(round(6.0 / ds)), 0)
            stops.append(stop)
            i = j
        else:
            i += 1
    limit[stops] = 0.0
    limit[0] = limit[-1] = 0.0
    v = limit.copy()
    for k in range(1, n):  # acceleration limit
        v[k] = min(v[k], math.sqrt(v[k - 1] ** 2 + 2 * vehicle.accel_mps2 * ds))
    for k in range(n - 2, -1, -1):  # braking limit
        v[k] = min(v[k], math.sqrt(v[k + 1] ** 2 + 2 * vehicle.decel_mps2 * ds))
    # Constant acceleration along each path step: dt = 2 ds / (v0 + v1) (a floor keeps a step
    # between two stops finite), then the seeded dwell at each stop.
    v_sum = np.maximum(v[:-1] + v[1:], 0.1)
    dt = 2 * ds / v_sum
    accel = (v[1:] ** 2 - v[:-1] ** 2) / (2 * ds)
    dwell = np.zeros(n)
    lo, hi = vehicle.stop_duration_s
    for k in stops:
        dwell[k] = rng.uniform(lo, hi)
    t_arrive = np.concatenate([[0.0], np.cumsum(dt + dwell[:-1])])
    t_leave = t_arrive + dwell
    s_path = np.arange(n) * ds

    # Sample at the odometry rate: exact constant-acceleration kinematics within each step;
    # during a dwell the vehicle stands still.
    count = int(math.floor(t_leave[-1] * rate_hz)) + 1
    t = np.arange(count) / rate_hz
    seg = np.clip(np.searchsorted(t_leave, t, side='right') - 1, 0, n - 2)
    tau = np.clip(t - t_leave[seg], 0.0, dt[seg])
    speed = np.clip(v[seg] + accel[seg] * tau, 0.0, None)
    s = np.minimum(s_path[seg] + v[seg] * tau + 0.5 * accel[seg] * tau ** 2, s_path[seg + 1])
    xy = np.stack([np.interp(s, s_path, lane[:, 0]), np.interp(s, s_path, lane[:, 1])], axis=1)
    yaw_t = np.interp(s, s_path, yaw)
    yaw_rate = np.interp(s, s_path, np.gradient(yaw) / ds) * speed
    return Trajectory(t, xy, yaw_t, speed, yaw_rate, s)


TURN_DEG = 10.0       # heading change that makes a turn (``turns_only`` traversals) ...
TURN_WINDOW_M = 6.0   # ... between this far before and after (the evaluation's +-2 images of 3 m)


def frame_indices(traj: Trajectory, spacing_m: float, max_frames: int = 0,
                  phase_m: float = 0.0, turns_only: bool = False) -> np.ndarray:
    """Indices of the samples where an image is taken: every ``spacing_m`` metres driven.

    The first image is taken after ``phase_m`` metres (images between another traversal's).
    ``turns_only`` keeps the places where the heading changes by more than ``TURN_DEG`` between
    ``TURN_WINDOW_M`` before and after: the corners, which
    ``imposing_ros.geometry.turning`` marks on a drive imaged every 3 m.
    """
    marks = np.arange(phase_m, traj.s[-1], spacing_m)
    if turns_only:
        # s does not decrease; at stops it repeats, which np.interp takes (any of equal yaws).
        before = np.interp(np.maximum(marks - TURN_WINDOW_M, 0.0), traj.s, traj.yaw)
        after = np.interp(np.minimum(marks + TURN_WINDOW_M, traj.s[-1]), traj.s, traj.yaw)
        marks = marks[np.abs(after - before) > np.radians(TURN_DEG)]
    idx = np.searchsorted(traj.s, marks, side='left')
    idx = np.unique(np.clip(idx, 0, len(traj.s) - 1))
    if max_frames:
        idx = idx[:max_frames]
    return idx


def markers_along(centre: np.ndarray, offsets: np.ndarray, spacing: float,
                  height: float) -> np.ndarray:
    """Map points ``[M, 3]`` every ``spacing`` m above the lane of the route (test markers)."""
    if spacing <= 0:
        return np.zeros((0, 3))
    path, offset = _resample(centre, offsets, STEP_M)
    d = np.gradient(path, axis=0)
    heading = np.arctan2(d[:, 1], d[:, 0])
    right = np.stack([np.sin(heading), -np.cos(heading)], axis=1)
    lane = path + right * offset[:, None]
    idx = np.arange(int(round(spacing / STEP_M)), len(lane), int(round(spacing / STEP_M)))
    return np.concatenate([lane[idx], np.full((len(idx), 1), height)], axis=1)
