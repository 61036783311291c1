"""Procedural textures (numpy, seeded): facades, shop fronts, roads, pavement, ground.

Written by hand: MuJoCo's builtin textures are checkers and gradients only. The aim is streets a
camera can tell apart about as well as real ones: a limited set of facade styles shared by many
buildings (repetition is part of the problem, ImPosing paper Fig. 8), each with irregular window
states, colour variants per building (material tint), and shop fronts with coloured signs.

Textures are ``[H, W, 3]`` uint8. Texture coordinates used by the scene builder: ``u`` along a
wall or road (repeats), ``v`` upwards on walls (row 0 of the array is the top) and across roads.
"""

from __future__ import annotations

import numpy as np

FACADE_BAYS, FACADE_FLOORS = 4, 2    # one facade texture tile: 4 window bays x 2 storeys
BAY_WIDTH_M = 3.2                    # metres of wall per bay
SHOP_WIDTH_M = 8.0                   # metres of wall per shop-front tile
ROAD_TILE_M = 12.0                   # metres of road per texture tile (dash period)
PAVEMENT_TILE_M = 4.0
GROUND_TILE_M = 24.0


def _noise(rng: np.random.Generator, h: int, w: int, scale: int) -> np.ndarray:
    """Smooth value noise in [0, 1], tileable (wrap-around upsampling)."""
    coarse = rng.random((max(h // scale, 1), max(w // scale, 1)))
    ys = np.arange(h) / scale
    xs = np.arange(w) / scale
    y0 = np.floor(ys).astype(int) % coarse.shape[0]
    x0 = np.floor(xs).astype(int) % coarse.shape[1]
    y1, x1 = (y0 + 1) % coarse.shape[0], (x0 + 1) % coarse.shape[1]
    fy, fx = (ys % 1)[:, None], (xs % 1)[None, :]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x1] * fx
    bottom = coarse[y1][:, x0] * (1 - fx) + coarse[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def facade(rng: np.random.Generator, px_per_bay: int = 32, px_per_floor: int = 32) -> np.ndarray:
    """Upper-floor facade tile: FACADE_BAYS x FACADE_FLOORS window bays on a neutral wall.

    The wall is light (the material tint colours it); windows are dark glass with frames, their
    shading varies window by window (curtains, reflections), so neighbouring tiles of one wall
    look alike but not identical.
    """
    h, w = FACADE_FLOORS * px_per_floor, FACADE_BAYS * px_per_bay
    base = rng.uniform(0.7, 0.95)
    wall = base * (0.92 + 0.08 * _noise(rng, h, w, 4))[..., None] * np.ones(3)
    kind = rng.integers(4)  # 0 plaster, 1 brick, 2 panel, 3 stone courses
    if kind == 1:
        rows = (np.arange(h) % 4 == 0)[:, None]
        cols = ((np.arange(w)[None, :] + 4 * ((np.arange(h) // 4) % 2)[:, None]) % 8 == 0)
        wall = wall * np.array([0.85, 0.55, 0.45])
        wall[rows | cols] *= 0.75
    elif kind == 2:
        wall[:, ::px_per_bay] *= 0.7
        wall[::px_per_floor // 2] *= 0.8
    elif kind == 3:
        wall[::6] *= 0.85
    ww = rng.uniform(0.35, 0.7)          # window width, fraction of a bay
    wh = rng.uniform(0.4, 0.65)          # window height, fraction of a storey
    sill = rng.uniform(0.2, 0.35)        # window bottom above the floor, fraction
    frame = rng.choice([np.array([0.95, 0.95, 0.92]), np.array([0.3, 0.25, 0.2]),
                        np.array([0.55, 0.6, 0.6])])
    glass = np.array([0.18, 0.22, 0.28]) * rng.uniform(0.7, 1.2)
    pair = rng.random() < 0.3            # two narrow windows per bay
    cornice = rng.random() < 0.6
    image = wall.copy()
    for floor in range(FACADE_FLOORS):
        top = floor * px_per_floor
        if cornice:
            image[top:top + 2] *= 0.7
        y1 = top + int((1 - sill - wh) * px_per_floor)
        y2 = top + int((1 - sill) * px_per_floor)
        for bay in range(FACADE_BAYS):
            centres = [bay + 0.3, bay + 0.7] if pair else [bay + 0.5]
            width = ww / (2.4 if pair else 1.0)
            for c in centres:
                x1 = int((c - width / 2) * px_per_bay)
                x2 = int((c + width / 2) * px_per_bay)
                image[y1:y2, x1:x2] = frame
                state = rng.random()
                pane = glass * (0.7 + 0.6 * rng.random())
                if state < 0.25:  # curtains
                    pane = pane * 0.4 + np.array([0.8, 0.75, 0.6]) * rng.uniform(0.3, 0.7)
                elif state < 0.35:  # sky reflection
                    pane = pane * 0.5 + np.array([0.5, 0.6, 0.75]) * 0.5
                image[y1 + 2:y2 - 1, x1 + 2:x2 - 2] = pane
                image[(y1 + y2) // 2, x1 + 2:x2 - 2] = frame * 0.9  # transom
                image[y2:y2 + 2, x1 - 1:x2 + 1] = wall[y2:y2 + 2, x1 - 1:x2 + 1] * 0.8  # sill
    return _to_uint8(image)


def shopfront(rng: np.random.Generator, px_per_m: int = 8) -> np.ndarray:
    """Ground-floor tile: shop windows, doors and a coloured sign band, or a plain base."""
    h, w = int(4.2 * px_per_m) + 2, int(SHOP_WIDTH_M * px_per_m)
    tone = rng.uniform(0.45, 0.85)
    image = tone * (0.9 + 0.1 * _noise(rng, h, w, 3))[..., None] * np.ones(3)
    kind = rng.integers(3)
    if kind == 0:  # shops: big windows, a sign
        sign = rng.uniform(0.1, 1.0, 3)
        image[int(0.05 * h):int(0.2 * h)] = sign
        n = rng.integers(1, 3)
        for i in range(n):
            x1 = int(w * (i + 0.1) / n)
            x2 = int(w * (i + 0.9) / n)
            image[int(0.28 * h):int(0.95 * h), x1:x2] = np.array([0.12, 0.14, 0.17]) \
                * rng.uniform(0.8, 2.5)
            image[int(0.28 * h):int(0.95 * h), x1:x1 + 2] = 0.25
    elif kind == 1:  # base with small windows and a door
        for i in range(3):
            x1 = int(w * (0.1 + 0.3 * i))
            image[int(0.3 * h):int(0.6 * h), x1:x1 + int(0.12 * w)] = 0.2
        d = int(rng.uniform(0.2, 0.8) * w)
        image[int(0.35 * h):, d:d + int(0.13 * w)] = rng.uniform(0.1, 0.5, 3)
    else:  # rusticated stone base
        image[::4] *= 0.8
        image[:, ::12] *= 0.85
        image *= np.array([0.95, 0.9, 0.85])
    return _to_uint8(image)


def road(rng: np.random.Generator, centre: str, snow: float, px_per_m: int = 8) -> np.ndarray:
    """Asphalt tile, ``v`` across the carriageway (0..1), ``u`` along ROAD_TILE_M metres.

    ``centre``: 'yellow' dashed centre line (two-way), 'white' dashed lane line, or 'none'.
    Edge lines are solid white. Snow lightens the surface, and most in the wheel-free parts.
    """
    h, w = 64, int(ROAD_TILE_M * px_per_m)
    base = 0.23 + 0.07 * _noise(rng, h, w, 4) + 0.04 * rng.random((h, w))
    image = base[..., None] * np.array([1.0, 1.0, 1.03])
    edge = np.array([0.85, 0.85, 0.82])
    image[2:4] = edge
    image[h - 4:h - 2] = edge
    if centre != 'none':
        colour = np.array([0.85, 0.7, 0.2]) if centre == 'yellow' else edge
        dash = int(3.0 * px_per_m)
        image[h // 2 - 1:h // 2 + 1, :dash] = colour
    wear = 0.85 + 0.15 * _noise(rng, h, w, 8)[..., None]
    image = image * wear
    if snow > 0:
        rows = np.linspace(0, 1, h)[:, None]
        tracks = np.minimum(np.abs(rows - 0.25), np.abs(rows - 0.75)) * 4  # 0 in wheel tracks
        cover = np.clip(snow * (0.4 + 0.6 * tracks) * (0.7 + 0.3 * _noise(rng, h, w, 6)), 0, 1)
        image = image * (1 - cover[..., None]) + 0.9 * cover[..., None]
    return _to_uint8(image)


def pavement(rng: np.random.Generator, snow: float, px: int = 64) -> np.ndarray:
    """Paving slabs (PAVEMENT_TILE_M square tile)."""
    tone = 0.55 + 0.1 * _noise(rng, px, px, 8) + 0.05 * rng.random((px, px))
    image = tone[..., None] * np.array([1.0, 0.98, 0.95])
    image[::16] *= 0.7
    image[:, ::16] *= 0.7
    if snow > 0:
        cover = np.clip(snow * (0.8 + 0.2 * _noise(rng, px, px, 8)), 0, 1)[..., None]
        image = image * (1 - cover) + 0.92 * cover
    return _to_uint8(image)


GROUND_COLOURS = {
    'summer': ((0.28, 0.42, 0.18), (0.42, 0.38, 0.3)),
    'spring': ((0.35, 0.45, 0.22), (0.45, 0.4, 0.32)),
    'autumn': ((0.4, 0.38, 0.2), (0.38, 0.3, 0.22)),
    'winter': ((0.35, 0.33, 0.28), (0.4, 0.38, 0.35)),
}


def ground(rng: np.random.Generator, season: str, snow: float, px: int = 128) -> np.ndarray:
    """Grass, earth and gravel patches (GROUND_TILE_M square tile)."""
    grass, earth = (np.array(c) for c in GROUND_COLOURS[season])
    mix = _noise(rng, px, px, 16)[..., None]
    image = grass * mix + earth * (1 - mix)
    image = image * (0.85 + 0.3 * rng.random((px, px, 1)))
    if snow > 0:
        cover = np.clip(snow * 1.2 * (0.75 + 0.25 * _noise(rng, px, px, 8)), 0, 1)[..., None]
        image = image * (1 - cover) + 0.95 * cover
    return _to_uint8(image)
