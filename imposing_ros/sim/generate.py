"""Simulate traversals of a scene into rosbag2 files: ``generate(config, out) -> [bag paths]``.

Per traversal: the same route set, a seeded driving style, the condition preset's appearance;
ground truth and odometry at the odometry rate, an image every ``camera.frame_spacing_m`` metres
at one of those very stamps. Each bag is written into a temporary folder under ``out`` and
renamed when complete, with ``scene.json`` (map origin and projection, intrinsics, extrinsics,
condition, markers) inside the bag folder beside the ``.mcap`` file. Same config and seeds:
identical bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
import json
import logging
import math
import os
from pathlib import Path
import shutil
import tempfile
import time
from typing import Callable

import numpy as np
import transforms3d

from imposing_ros.geometry import T_camera_optical
from imposing_ros.sim import bag as bagio
from imposing_ros.sim.config import scene_to_dict, SceneConfig

LOGGER = logging.getLogger('imposing_ros.sim')


@dataclass
class TraversalResult:
    """What one traversal produced."""

    name: str
    path: Path
    frames: int
    samples: int
    duration_s: float
    driven_m: float
    render_s: float


def T_base_camera(config: SceneConfig) -> np.ndarray:  # noqa: N802
    """base_link -> camera_link (camera body frame) from the camera's xyz and rpy."""
    matrix = np.eye(4)
    matrix[:3, :3] = transforms3d.euler.euler2mat(*config.camera.rpy, axes='sxyz')
    matrix[:3, 3] = config.camera.xyz
    return matrix


def planar_pose(x: float, y: float, yaw: float) -> np.ndarray:
    """4x4 pose on the ground plane."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0, x], [s, c, 0, y], [0, 0, 1, 0], [0, 0, 0, 1.0]])


def prepare(config: SceneConfig):
    """City, route set, route polyline and markers (shared by all traversals)."""
    from imposing_ros.sim.city import load_city
    from imposing_ros.sim.route import markers_along, plan_routes, route_polyline

    city = load_city(config.city, config.seed)
    routes = plan_routes(city, config.route)
    centre, offsets = route_polyline(city, routes)
    markers = markers_along(centre, offsets, config.route.marker_spacing_m,
                            config.route.marker_height_m)
    return city, routes, centre, offsets, markers


def generate(config: SceneConfig, out: str | Path, traversals: list[str] | None = None,
             workers: int | None = None, max_frames: int | None = None,
             progress: Callable[[int], None] | None = None) -> list[TraversalResult]:
    """Render the traversals of ``config`` into ``out`` (module docstring)."""
    from imposing_ros.sim.odometry import simulate_odometry
    from imposing_ros.sim.render import PostProcess, render_task, save_model, worker_init
    from imposing_ros.sim.route import build_trajectory, frame_indices
    from imposing_ros.sim.scene import build_model

    os.environ.setdefault('MUJOCO_GL', 'egl')
    out = Path(out)
    chosen = list(config.traversals)
    if traversals:
        names = [t.name for t in chosen]
        unknown = [n for n in traversals if n not in names]
        if unknown:
            raise ValueError(f'unknown traversal(s) {", ".join(unknown)}; the scene has '
                             f'{", ".join(names)}')
        chosen = [t for t in chosen if t.name in traversals]
    workers = config.render.workers if workers is None else workers
    max_frames = config.max_frames if max_frames is None else max_frames
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    city, routes, centre, offsets, markers = prepare(config)
    LOGGER.info('scene prepared in %.1f s', time.perf_counter() - t0)

    rate = config.odometry.rate_hz
    intr = config.intrinsics()
    cam = config.camera
    T_bc = T_base_camera(config)  # noqa: N806
    T_co = T_camera_optical()  # noqa: N806
    T_bo = T_bc @ T_co  # noqa: N806
    pool = None
    if workers > 1:
        import multiprocessing

        # One llvmpipe thread per worker when the workers fill the cores.
        lp = 1 if workers >= (os.cpu_count() or 1) else 0
        pool = multiprocessing.get_context('spawn').Pool(workers, worker_init, (lp,))
    results = []
    index = {t.name: i for i, t in enumerate(config.traversals)}
    try:
        for trav in chosen:
            condition = trav.condition()
            rng = np.random.default_rng([config.seed, 10, trav.seed])
            traj = build_trajectory(centre, offsets, config.vehicle, rate, rng,
                                    trav.lane_offset_m)
            odo = simulate_odometry(traj, config.odometry,
                                    np.random.default_rng([config.seed, 11, trav.seed]))
            spacing = cam.frame_spacing_m if trav.frame_spacing_m is None else trav.frame_spacing_m
            frames = frame_indices(traj, spacing, max_frames, trav.frame_phase_m,
                                   trav.turns_only)
            last = int(frames[-1]) + 1 if max_frames else len(traj.t)
            start_ns = (config.start_time_s + index[trav.name] * config.traversal_gap_s) * 10**9

            def stamp(k: int, start_ns=start_ns) -> int:
                return start_ns + round(k * 1e9 / rate)

            model, cull_info = build_model(city, config, condition, trav.seed, markers)
            tmp = Path(tempfile.mkdtemp(prefix=f'.{trav.name}.', dir=out))
            try:
                model_path = tmp / 'model.mjb'
                save_model(model, cull_info, model_path)
                post = PostProcess(condition.exposure, condition.gamma, condition.noise_std,
                                   cam.jpeg_quality, (config.seed, 12, trav.seed))
                poses = {}
                for k in frames:
                    T_mb = planar_pose(traj.xy[k, 0], traj.xy[k, 1], traj.yaw[k])  # noqa: N806
                    poses[int(k)] = T_mb @ T_bo
                tasks = []
                chunk = config.render.chunk_frames
                keys = [int(k) for k in frames]
                for i in range(0, len(keys), chunk):
                    tasks.append((str(model_path), cam.width, cam.height,
                                  config.render.view_distance_m, post,
                                  [(k, poses[k]) for k in keys[i:i + chunk]]))
                if pool is not None:
                    images = pool.imap(render_task, tasks)
                else:
                    images = map(render_task, tasks)
                bag_dir = tmp / trav.name
                writer = bagio.BagWriter(bag_dir)
                t_render = time.perf_counter()
                try:
                    writer.tf_static(stamp(0), [
                        (bagio.BASE_FRAME, bagio.CAMERA_FRAME, T_bc),
                        (bagio.CAMERA_FRAME, bagio.OPTICAL_FRAME, T_co)])
                    pending: dict[int, bytes] = {}
                    frame_set = set(keys)
                    twist_var = (config.odometry.speed_noise_std ** 2,
                                 config.odometry.yaw_rate_noise_std ** 2)
                    for k in range(last):
                        ns = stamp(k)
                        writer.truth(ns, planar_pose(traj.xy[k, 0], traj.xy[k, 1],
                                                     traj.yaw[k]))
                        writer.odometry(ns, planar_pose(odo.xy[k, 0], odo.xy[k, 1], odo.yaw[k]),
                                        odo.speed[k], odo.yaw_rate[k],
                                        (max(odo.var_xy[k], 1e-6), max(odo.var_yaw[k], 1e-8)),
                                        twist_var)
                        if k in frame_set:
                            while k not in pending:
                                pending.update(next(images))
                            writer.image(ns, pending.pop(k), intr, cam.width, cam.height)
                            if progress is not None:
                                progress(1)
                finally:
                    writer.close()
                render_s = time.perf_counter() - t_render
                meta = {
                    'traversal': trav.name, 'traversal_seed': trav.seed, 'scene': config.name,
                    'scene_seed': config.seed,
                    'map': {'frame': bagio.MAP_FRAME, 'origin_lat': city.origin_lat,
                            'origin_lon': city.origin_lon, 'projection': city.proj,
                            'axes': 'ENU: x east, y north, z up (REP-103)'},
                    'camera': {'width': cam.width, 'height': cam.height, 'fx': intr[0],
                               'fy': intr[1], 'cx': intr[2], 'cy': intr[3],
                               'distortion': [0.0] * 5, 'frame': bagio.OPTICAL_FRAME,
                               'T_base_camera_link': T_bc.tolist(),
                               'T_camera_link_optical': T_co.tolist()},
                    'condition': scene_to_dict(condition), 'preset': trav.preset,
                    'frames': len(keys), 'samples': last, 'rate_hz': rate,
                    'start_ns': stamp(0), 'duration_s': float(traj.t[last - 1]),
                    'driven_m': float(traj.s[last - 1]),
                    'route': {'distinct_m': routes.distinct_m,
                              'distinct_directed_m': routes.distinct_directed_m,
                              'driven_m': routes.driven_m, 'segments': len(routes.edges)},
                    'odometry': {'scale_error': odo.scale_error, 'yaw_rate_bias': odo.yaw_bias},
                    'markers': markers.tolist(),
                    'config': scene_to_dict(config),
                }
                (bag_dir / 'scene.json').write_text(json.dumps(meta, indent=1) + '\n')
                final = out / trav.name
                if final.exists():
                    shutil.rmtree(final)
                bag_dir.rename(final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            LOGGER.info('%s: %d frames, %.0f s driven over %.2f km, rendered at %.1f fps',
                        trav.name, len(keys), traj.t[last - 1], traj.s[last - 1] / 1e3,
                        len(keys) / max(render_s, 1e-9))
            results.append(TraversalResult(trav.name, final, len(keys), last,
                                           float(traj.t[last - 1]), float(traj.s[last - 1]),
                                           render_s))
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return results
