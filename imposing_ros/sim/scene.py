"""MuJoCo model of a city under one condition (MjSpec, compiled once per traversal).

Geometry is batched: every (material, grid cell) pair becomes one mesh geom, so a frame costs a
few hundred draw calls whatever the number of buildings, and cells far away or behind the camera
are hidden per frame (:func:`cull`: a geom whose rgba alpha is 0 is skipped by MuJoCo). The camera
sits on a mocap body placed at the optical frame of each frame; MuJoCo cameras look along -z with
y up, i.e. the ROS optical frame turned by pi about x.
"""

from __future__ import annotations

from dataclasses import dataclass
import math

import mujoco
import numpy as np
import shapely

from imposing_ros.sim import textures
from imposing_ros.sim.city import City
from imposing_ros.sim.config import Condition, SceneConfig

# Façade tints (linear RGB, multiplied with the neutral textures): Helsinki plaster colours.
FACADE_TINTS = np.array([
    [0.95, 0.85, 0.6], [0.98, 0.95, 0.85], [0.95, 0.9, 0.55], [0.95, 0.7, 0.6],
    [0.75, 0.75, 0.75], [1.0, 1.0, 1.0], [0.75, 0.85, 0.7], [0.7, 0.8, 0.9],
    [0.9, 0.6, 0.4], [0.6, 0.55, 0.5],
])
CAR_COLOURS = np.array([
    [0.9, 0.9, 0.9], [0.1, 0.1, 0.1], [0.5, 0.5, 0.52], [0.7, 0.72, 0.75], [0.6, 0.1, 0.1],
    [0.1, 0.2, 0.5], [0.2, 0.35, 0.25], [0.8, 0.7, 0.5],
])
CROWNS = {
    'summer': [[0.2, 0.38, 0.12], [0.25, 0.45, 0.15]],
    'spring': [[0.4, 0.6, 0.2], [0.5, 0.65, 0.3]],
    'autumn': [[0.75, 0.45, 0.1], [0.8, 0.65, 0.15], [0.4, 0.4, 0.12]],
    'winter': [[0.35, 0.3, 0.25]],
}
MARKER_RGBA = (1.0, 0.0, 1.0, 1.0)
OPTICAL_TO_MUJOCO = np.diag([1.0, -1.0, -1.0])  # R_optical_mjcam


class _Batches:
    """Mesh data accumulated per (material, cell)."""

    def __init__(self, cell_size: float):
        self.cell_size = cell_size
        self.data: dict[tuple[str, tuple[int, int]], list] = {}

    def add(self, material: str, verts: np.ndarray, faces: np.ndarray,
            uv: np.ndarray | None = None, anchor: np.ndarray | None = None) -> None:
        anchor = verts[:, :2].mean(axis=0) if anchor is None else anchor
        cell = (int(math.floor(anchor[0] / self.cell_size)),
                int(math.floor(anchor[1] / self.cell_size)))
        entry = self.data.setdefault((material, cell), [[], [], [], 0])
        entry[0].append(verts)
        entry[1].append(faces + entry[3])
        if uv is not None:
            entry[2].append(uv)
        entry[3] += len(verts)


def _box(centre, size, yaw: float) -> tuple[np.ndarray, np.ndarray]:
    """Vertices [8, 3] and faces [12, 3] (outward, counter-clockwise) of a yawed box."""
    sx, sy, sz = (s / 2 for s in size)
    corners = np.array([[x, y, z] for z in (-sz, sz) for y in (-sy, sy) for x in (-sx, sx)])
    c, s = math.cos(yaw), math.sin(yaw)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    verts = corners @ rot.T + np.asarray(centre)
    faces = np.array([[0, 2, 1], [1, 2, 3], [4, 5, 6], [5, 7, 6], [0, 1, 4], [1, 5, 4],
                      [2, 6, 3], [3, 6, 7], [0, 4, 2], [2, 4, 6], [1, 3, 5], [3, 7, 5]])
    return verts, faces


def _blob(centre, radius: float, height: float) -> tuple[np.ndarray, np.ndarray]:
    """Low-poly ellipsoid (octahedron subdivided once) for tree crowns."""
    v = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
    f = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5],
                  [0, 3, 5]])
    verts, faces = list(v), []
    cache = {}

    def mid(a, b):
        key = (min(a, b), max(a, b))
        if key not in cache:
            m = (verts[a] + verts[b]) / 2
            verts.append(m / np.linalg.norm(m))
            cache[key] = len(verts) - 1
        return cache[key]

    for a, b, c in f:
        ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
        faces += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
    verts = np.array(verts) * np.array([radius, radius, height / 2]) + np.asarray(centre)
    return verts, np.array(faces)


def _strip(coords: np.ndarray, width: float, z: float, tile_u: float,
           tile_v: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat strip of ``width`` along a polyline: vertices, faces (up), texcoords."""
    d = np.gradient(coords, axis=0)
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
    left = np.stack([-d[:, 1], d[:, 0]], axis=1)
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(coords, axis=0), axis=1))])
    a = coords + left * width / 2
    b = coords - left * width / 2
    n = len(coords)
    verts = np.zeros((2 * n, 3))
    verts[0::2, :2], verts[1::2, :2] = b, a
    verts[:, 2] = z
    uv = np.zeros((2 * n, 2))
    uv[:, 0] = np.repeat(s / tile_u, 2)
    uv[0::2, 1] = 1.0 if tile_v is None else width / tile_v
    uv[1::2, 1] = 0.0
    i = np.arange(n - 1) * 2
    faces = np.concatenate([np.stack([i, i + 2, i + 1], 1), np.stack([i + 1, i + 2, i + 3], 1)])
    return verts, faces, uv


def _walls(ring: np.ndarray, z0: float, z1: float, tile_u: float, tile_v: float):
    """Quads of a counter-clockwise ring's walls between heights z0 and z1 (outward faces)."""
    p0, p1 = ring[:-1], ring[1:]
    length = np.linalg.norm(p1 - p0, axis=1)
    keep = length > 0.05
    p0, p1, length = p0[keep], p1[keep], length[keep]
    s0 = np.concatenate([[0.0], np.cumsum(length)[:-1]])
    m = len(p0)
    verts = np.zeros((m, 4, 3))
    verts[:, 0, :2], verts[:, 1, :2], verts[:, 2, :2], verts[:, 3, :2] = p0, p1, p1, p0
    verts[:, :2, 2], verts[:, 2:, 2] = z0, z1
    uv = np.zeros((m, 4, 2))
    u0, u1 = s0 / tile_u, (s0 + length) / tile_u
    uv[:, 0, 0], uv[:, 1, 0], uv[:, 2, 0], uv[:, 3, 0] = u0, u1, u1, u0
    # Row 0 of a texture is its top: v grows downwards in the image, upwards here means v = 0.
    v_top = 0.0
    v_bottom = (z1 - z0) / tile_v
    uv[:, 0, 1], uv[:, 1, 1], uv[:, 2, 1], uv[:, 3, 1] = v_bottom, v_bottom, v_top, v_top
    base = np.arange(m)[:, None] * 4
    faces = np.concatenate([base + [0, 1, 2], base + [0, 2, 3]])
    return verts.reshape(-1, 3), faces, uv.reshape(-1, 2)


@dataclass
class CullInfo:
    """Batched geoms and their cells' bounding boxes ``[G, 4]`` (xmin, ymin, xmax, ymax)."""

    geom_ids: np.ndarray
    boxes: np.ndarray
    rgba: np.ndarray


def sun_direction(condition: Condition, latitude_deg: float) -> tuple[np.ndarray, float]:
    """Unit vector towards the sun in ENU and its elevation (radians).

    Textbook approximation (declination from the day of the year, hour angle from local solar
    time); good to a degree or two, which is all the lighting needs. Written by hand to avoid a
    solar-position dependency.
    """
    decl = math.radians(23.44) * math.sin(2 * math.pi * (284 + condition.day_of_year) / 365)
    hour_angle = math.radians(15.0 * (condition.hour - 12.0))
    lat = math.radians(latitude_deg)
    sin_el = (math.sin(lat) * math.sin(decl)
              + math.cos(lat) * math.cos(decl) * math.cos(hour_angle))
    elevation = math.asin(max(-1.0, min(1.0, sin_el)))
    azimuth = math.atan2(-math.sin(hour_angle),
                         math.tan(decl) * math.cos(lat) - math.sin(lat) * math.cos(hour_angle))
    el = max(elevation, math.radians(4.0))  # keep the light above the horizon
    vec = np.array([math.sin(azimuth) * math.cos(el), math.cos(azimuth) * math.cos(el),
                    math.sin(el)])
    return vec, elevation


def build_model(city: City, config: SceneConfig, condition: Condition, traversal_seed: int,
                markers: np.ndarray) -> tuple[mujoco.MjModel, CullInfo]:
    """Compile the city under ``condition`` (parked cars drawn from ``traversal_seed``)."""
    cc = config.city
    rng_city = np.random.default_rng([config.seed, 2])  # textures: the same in every traversal
    spec = mujoco.MjSpec()
    spec.modelname = config.name
    spec.compiler.degree = False
    view = config.render.view_distance_m
    spec.stat.extent = view
    spec.stat.center = [0.0, 0.0, 0.0]
    vis = spec.visual
    vis.quality.shadowsize = config.render.shadow_size
    vis.quality.offsamples = config.render.samples
    vis.map.znear = 0.2 / view
    vis.map.zfar = 1.0
    vis.map.shadowclip = 0.4
    fog_end = view * (1 - condition.fog) + 40.0 * condition.fog
    vis.map.fogend = fog_end / view
    vis.map.fogstart = (0.5 if condition.fog == 0 else 0.1) * fog_end / view
    vis.rgba.fog = [*condition.fog_color, 1.0]
    vis.rgba.haze = [*condition.fog_color, 1.0]
    sky_ambient = np.asarray(condition.sky_zenith) * 0.5 + np.asarray(condition.sky_horizon) * 0.5
    ambient = sky_ambient * (0.35 + 0.35 * condition.overcast) * (
        0.6 + 0.4 * condition.sun_intensity)
    vis.headlight.ambient = ambient.tolist()
    vis.headlight.diffuse = (0.08 * np.ones(3)).tolist()
    vis.headlight.specular = [0.0, 0.0, 0.0]
    vis.headlight.active = 1

    def texture(name: str, image: np.ndarray) -> None:
        tex = spec.add_texture(name=name, type=mujoco.mjtTexture.mjTEXTURE_2D,
                               width=image.shape[1], height=image.shape[0], nchannel=3)
        tex.data = np.ascontiguousarray(image).tobytes()

    def material(name: str, rgba, tex: str | None = None, emission: float = 0.0,
                 texrepeat=(1.0, 1.0)) -> None:
        mat = spec.add_material(name=name, rgba=list(rgba), specular=0.05, shininess=0.1,
                                emission=emission, texrepeat=list(texrepeat))
        if tex is not None:
            mat.textures[mujoco.mjtTextureRole.mjTEXROLE_RGB] = tex

    # Sky: gradient skybox, washed out by fog.
    fog_mix = min(1.0, condition.fog * 1.3)
    zenith = np.asarray(condition.sky_zenith) * (1 - fog_mix) + np.asarray(
        condition.fog_color) * fog_mix
    horizon = np.asarray(condition.sky_horizon) * (1 - fog_mix) + np.asarray(
        condition.fog_color) * fog_mix
    spec.add_texture(name='sky', type=mujoco.mjtTexture.mjTEXTURE_SKYBOX,
                     builtin=mujoco.mjtBuiltin.mjBUILTIN_GRADIENT, rgb1=zenith.tolist(),
                     rgb2=horizon.tolist(), width=64, height=64)

    # Facade and shop-front textures, tinted per building.
    for i in range(cc.facade_styles):
        texture(f'facade{i}', textures.facade(rng_city))
    for i in range(cc.ground_floor_styles):
        texture(f'shop{i}', textures.shopfront(rng_city))
    tint_rng = np.random.default_rng([config.seed, 3])
    for i in range(cc.facade_styles):
        for k in range(cc.tints_per_style):
            tint = FACADE_TINTS[(i * 3 + k * 7) % len(FACADE_TINTS)] * tint_rng.uniform(0.9, 1.0)
            material(f'facade{i}_{k}', [*np.clip(tint, 0, 1), 1.0], f'facade{i}')
    for i in range(cc.ground_floor_styles):
        for k in range(cc.tints_per_style):
            tint = np.clip(FACADE_TINTS[(i + k * 3) % len(FACADE_TINTS)] * 1.05, 0, 1)
            material(f'shop{i}_{k}', [*tint, 1.0], f'shop{i}')
    # Condition-dependent surfaces (snow).
    surf_rng = np.random.default_rng([config.seed, 4])
    for centre in ('yellow', 'white', 'none'):
        texture(f'road_{centre}', textures.road(surf_rng, centre, condition.snow))
        material(f'road_{centre}', [1, 1, 1, 1], f'road_{centre}')
    texture('pavement', textures.pavement(surf_rng, condition.snow))
    material('pavement', [1, 1, 1, 1], 'pavement')
    texture('ground', textures.ground(surf_rng, condition.season, condition.snow))
    roof = np.array([0.35, 0.33, 0.32]) * (1 - condition.snow) + 0.92 * condition.snow
    material('roof', [*roof, 1.0])
    material('trunk', [0.28, 0.22, 0.17, 1.0])
    crowns = np.asarray(CROWNS[condition.season], float)
    if condition.season == 'winter':
        crowns = crowns * (1 - 0.5 * condition.snow) + 0.85 * 0.5 * condition.snow
    for k, colour in enumerate(crowns):
        material(f'crown{k}', [*colour, 1.0])
    material('pole', [0.35, 0.37, 0.38, 1.0])
    material('lamp', [0.95, 0.95, 0.85, 1.0])
    material('glass', [0.08, 0.09, 0.1, 1.0])
    for k, colour in enumerate(CAR_COLOURS):
        material(f'car{k}', [*colour, 1.0])

    batches = _Batches(cc.cell_size_m)
    # Buildings: ground floor (shop fronts), upper floors (facades), flat roof.
    for b in city.buildings:
        ring = np.asarray(b.polygon.exterior.coords)[:, :2]
        anchor = np.asarray(b.polygon.centroid.coords[0])
        gf = min(cc.ground_floor_height_m, b.height)
        v, f, uv = _walls(ring, 0.0, gf, textures.SHOP_WIDTH_M, cc.ground_floor_height_m)
        batches.add(f'shop{b.ground_style}_{b.tint}', v, f, uv, anchor)
        if b.height > gf + 0.5:
            v, f, uv = _walls(ring, gf, b.height, textures.FACADE_BAYS * textures.BAY_WIDTH_M,
                              textures.FACADE_FLOORS * cc.level_height_m)
            batches.add(f'facade{b.style}_{b.tint}', v, f, uv, anchor)
        tris = shapely.constrained_delaunay_triangles(b.polygon)
        tri = np.array([np.asarray(t.exterior.coords)[:3, :2] for t in tris.geoms])
        if len(tri):
            e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
            area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
            tri[area < 0] = tri[area < 0][:, ::-1]  # counter-clockwise: facing up
            verts = np.concatenate([tri.reshape(-1, 2), np.full((tri.size // 2, 1), b.height)],
                                   axis=1)
            batches.add('roof', verts, np.arange(len(verts)).reshape(-1, 3), None, anchor)
    # Roads (asphalt with markings) over pavement strips.
    for i, road in enumerate(city.roads):
        centre = 'yellow' if not road.oneway else ('white' if road.lanes > 1 else 'none')
        v, f, uv = _strip(road.coords, road.width, 0.03 + 0.002 * (i % 4), textures.ROAD_TILE_M,
                          None)
        batches.add(f'road_{centre}', v, f, uv)
        v, f, uv = _strip(road.coords, road.width + 2 * cc.sidewalk_width_m, 0.012,
                          textures.PAVEMENT_TILE_M, textures.PAVEMENT_TILE_M)
        batches.add('pavement', v, f, uv)
    # Street lights.
    for x, y, yaw in city.poles:
        v, f = _box((x, y, 3.5), (0.16, 0.16, 7.0), yaw)
        batches.add('pole', v, f)
        c, s = math.cos(yaw), math.sin(yaw)
        v, f = _box((x + 0.8 * c, y + 0.8 * s, 6.9), (1.6, 0.12, 0.12), yaw)
        batches.add('pole', v, f)
        v, f = _box((x + 1.5 * c, y + 1.5 * s, 6.8), (0.5, 0.25, 0.12), yaw)
        batches.add('lamp', v, f)
    # Trees (crowns by season; winter crowns are bare, thin branch masses).
    tree_rng = np.random.default_rng([config.seed, 5])
    crown_scale = 0.55 if condition.season == 'winter' else 1.0
    for x, y, height, radius in city.trees:
        trunk = height * 0.45
        v, f = _box((x, y, trunk / 2), (0.3, 0.3, trunk), tree_rng.uniform(0, math.pi))
        batches.add('trunk', v, f)
        k = int(tree_rng.integers(len(crowns)))
        v, f = _blob((x, y, trunk + (height - trunk) / 2), radius * crown_scale,
                     (height - trunk) * (0.7 + 0.3 * crown_scale))
        batches.add(f'crown{k}', v, f)
    # Parked cars: a base layout from the scene seed, a fraction re-drawn per traversal.
    n = len(city.parking)
    base_rng = np.random.default_rng([config.seed, 6])
    occupied = base_rng.random(n) < cc.parked_occupancy
    colour = base_rng.integers(len(CAR_COLOURS), size=n)
    shift = base_rng.uniform(-0.6, 0.6, n)
    trav_rng = np.random.default_rng([config.seed, 7, traversal_seed])
    moved = trav_rng.random(n) < condition.parked_moved
    occupied = np.where(moved, trav_rng.random(n) < cc.parked_occupancy, occupied)
    colour = np.where(moved, trav_rng.integers(len(CAR_COLOURS), size=n), colour)
    shift = np.where(moved, trav_rng.uniform(-0.6, 0.6, n), shift)
    for (x, y, yaw), occ, col, sh in zip(city.parking, occupied, colour, shift):
        if not occ:
            continue
        c, s = math.cos(yaw), math.sin(yaw)
        x, y = x + sh * c, y + sh * s
        v, f = _box((x, y, 0.65), (4.4, 1.8, 0.75), yaw)
        batches.add(f'car{col}', v, f)
        v, f = _box((x - 0.3 * c, y - 0.3 * s, 1.27), (2.4, 1.6, 0.5), yaw)
        batches.add('glass', v, f)

    # Compile batches into mesh geoms.
    world = spec.worldbody
    boxes, batch_names = [], []
    for n_batch, ((mat, _), (verts, faces, uvs, _)) in enumerate(sorted(batches.data.items())):
        verts = np.concatenate(verts)
        if len(verts) < 4:  # MuJoCo needs 4 vertices: a lone roof triangle, never in view
            continue
        mesh = spec.add_mesh(name=f'm{n_batch}')
        mesh.uservert = verts.ravel().tolist()
        mesh.userface = np.concatenate(faces).ravel().tolist()
        if uvs:
            mesh.usertexcoord = np.concatenate(uvs).ravel().tolist()
        mesh.inertia = mujoco.mjtMeshInertia.mjMESH_INERTIA_SHELL
        world.add_geom(type=mujoco.mjtGeom.mjGEOM_MESH, meshname=mesh.name, material=mat,
                       contype=0, conaffinity=0, group=1, name=f'batch{n_batch}')
        lo, hi = verts[:, :2].min(axis=0), verts[:, :2].max(axis=0)
        boxes.append([*lo, *hi])
        batch_names.append(f'batch{n_batch}')
    # Ground: a large textured plane.
    x0, y0, x1, y1 = city.bounds
    half = max(x1 - x0, y1 - y0) / 2 + view
    centre = ((x0 + x1) / 2, (y0 + y1) / 2, 0.0)
    material('ground', [1, 1, 1, 1], 'ground',
             texrepeat=(2 * half / textures.GROUND_TILE_M,) * 2)
    world.add_geom(type=mujoco.mjtGeom.mjGEOM_PLANE, size=[half, half, 1.0], pos=list(centre),
                   material='ground', contype=0, conaffinity=0, name='ground')
    # Test markers: emissive, so their colour does not depend on the light.
    material('marker', MARKER_RGBA, emission=1.0)
    for i, p in enumerate(markers):
        world.add_geom(type=mujoco.mjtGeom.mjGEOM_SPHERE, size=[config.route.marker_radius_m,
                       0, 0], pos=p.tolist(), material='marker', contype=0, conaffinity=0,
                       name=f'marker{i}')
    rig = world.add_body(name='rig', mocap=True)
    fx, fy, cx, cy = config.intrinsics()
    w, h = config.camera.width, config.camera.height
    pixel = 1e-5  # sensor pixel pitch (any value: MuJoCo only uses the ratios)
    rig.add_camera(name='camera', resolution=[w, h], sensor_size=[w * pixel, h * pixel],
                   focal_pixel=[fx, fy], principal_pixel=[w / 2 - cx, h / 2 - cy])
    sun, _ = sun_direction(condition, city.origin_lat)
    strength = condition.sun_intensity * (1 - 0.85 * condition.overcast)
    rig.add_light(name='sun', type=mujoco.mjtLightType.mjLIGHT_DIRECTIONAL,
                  mode=mujoco.mjtCamLight.mjCAMLIGHT_TRACK, pos=(sun * 150.0).tolist(),
                  dir=(-sun).tolist(), diffuse=(np.asarray(condition.sun_color) * 0.8
                                               * strength).tolist(),
                  ambient=[0, 0, 0], specular=[0.05, 0.05, 0.05],
                  castshadow=bool(config.render.shadows and strength > 0.3))
    model = spec.compile()
    ids = np.array([model.geom(name).id for name in batch_names], dtype=int)
    info = CullInfo(ids, np.asarray(boxes, float).reshape(-1, 4), model.geom_rgba[ids].copy())
    return model, info


def cull(model: mujoco.MjModel, info: CullInfo, position: np.ndarray, forward: np.ndarray,
         distance: float) -> None:
    """Hide batches beyond ``distance`` or wholly behind the camera (alpha 0), show the rest."""
    lo, hi = info.boxes[:, :2], info.boxes[:, 2:]
    nearest = np.clip(position[:2], lo, hi)
    far = np.linalg.norm(nearest - position[:2], axis=1) > distance
    corners = np.stack([lo, hi, np.stack([lo[:, 0], hi[:, 1]], 1),
                        np.stack([hi[:, 0], lo[:, 1]], 1)], axis=1)
    ahead = ((corners - position[:2]) @ forward[:2]).max(axis=1)
    behind = ahead < -10.0
    alpha = np.where(far | behind, 0.0, info.rgba[:, 3])
    model.geom_rgba[info.geom_ids, 3] = alpha


def optical_to_mocap_quat(rotation_map_optical: np.ndarray) -> np.ndarray:
    """MuJoCo (w, x, y, z) quaternion of the camera body for ``R_map_optical``."""
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, (rotation_map_optical @ OPTICAL_TO_MUJOCO).ravel())
    return quat
