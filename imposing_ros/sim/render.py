"""Rendering frames to JPEG, in this process or in worker processes (one EGL context each).

A worker loads the compiled model of a traversal from its ``.mjb`` file (written once by the
parent), keeps it while tasks of that traversal arrive, and returns JPEG bytes. Post-processing
(camera exposure, tone curve, sensor noise) is seeded per frame, so the output does not depend on
how frames are split between workers.
"""

from __future__ import annotations

from dataclasses import dataclass
import io
import os
from pathlib import Path
import pickle

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class PostProcess:
    """Camera response applied after rendering."""

    exposure: float
    gamma: float
    noise_std: float
    jpeg_quality: int
    seed: tuple[int, ...]


def post_process(image: np.ndarray, post: PostProcess, index: int) -> bytes:
    """``[H, W, 3]`` uint8 render -> JPEG bytes (exposure, tone curve, noise, compression)."""
    x = image.astype(np.float32) / 255.0
    x = np.clip(x * post.exposure, 0.0, 1.0) ** (1.0 / post.gamma)
    x = x * 255.0
    if post.noise_std > 0:
        rng = np.random.default_rng([*post.seed, index])
        x = x + rng.normal(0.0, post.noise_std, x.shape).astype(np.float32)
    out = np.clip(x + 0.5, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(out).save(buffer, format='JPEG', quality=post.jpeg_quality)
    return buffer.getvalue()


class FrameRenderer:
    """Renders camera poses of one compiled model (MuJoCo offscreen renderer)."""

    def __init__(self, model, cull_info, width: int, height: int, view_distance: float):
        import mujoco

        self.mujoco = mujoco
        self.model = model
        self.data = mujoco.MjData(model)
        self.cull_info = cull_info
        self.view_distance = view_distance
        self.renderer = mujoco.Renderer(model, height, width, max_geom=20000)
        self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_FOG] = True

    def render(self, T_map_optical: np.ndarray) -> np.ndarray:  # noqa: N803
        """RGB ``[H, W, 3]`` uint8 seen from the optical frame pose ``[4, 4]``."""
        from imposing_ros.sim.scene import cull, optical_to_mocap_quat

        m = self.mujoco
        self.data.mocap_pos[0] = T_map_optical[:3, 3]
        self.data.mocap_quat[0] = optical_to_mocap_quat(T_map_optical[:3, :3])
        cull(self.model, self.cull_info, T_map_optical[:3, 3], T_map_optical[:3, 2],
             self.view_distance)
        m.mj_kinematics(self.model, self.data)
        m.mj_camlight(self.model, self.data)
        self.renderer.update_scene(self.data, camera='camera')
        return self.renderer.render()

    def close(self) -> None:
        """Free the GL context."""
        self.renderer.close()


def save_model(model, cull_info, path: Path) -> None:
    """Write the compiled model and its culling info for the workers."""
    import mujoco

    mujoco.mj_saveModel(model, str(path), None)
    path.with_suffix('.cull').write_bytes(pickle.dumps(cull_info))


_WORKER: dict = {}


def worker_init(lp_threads: int) -> None:
    """Worker start: one llvmpipe thread per worker keeps the cores free for the other workers."""
    os.environ.setdefault('MUJOCO_GL', 'egl')
    if lp_threads > 0:
        os.environ['LP_NUM_THREADS'] = str(lp_threads)


def render_task(task: tuple) -> list[tuple[int, bytes]]:
    """Worker body: ``(model_path, width, height, view, post, [(index, T)...])`` -> JPEGs."""
    import mujoco

    model_path, width, height, view, post, frames = task
    if _WORKER.get('path') != model_path:
        if 'renderer' in _WORKER:
            _WORKER['renderer'].close()
        model = mujoco.MjModel.from_binary_path(model_path)
        cull_info = pickle.loads(Path(model_path).with_suffix('.cull').read_bytes())
        _WORKER['renderer'] = FrameRenderer(model, cull_info, width, height, view)
        _WORKER['path'] = model_path
    renderer = _WORKER['renderer']
    return [(i, post_process(renderer.render(T), post, i)) for i, T in frames]
