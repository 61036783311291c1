"""Poses and rotations: every convention of the project is written down here, once.

Conventions (they hold everywhere a pose crosses a boundary in this package):

* A pose is a tensor ``[..., 7]`` = ``(tx, ty, tz, qx, qy, qz, qw)``: translation in metres and a
  unit quaternion in ROS / roma order (x, y, z, w). ``T_map_camera`` maps points from the camera
  frame to the map frame: ``p_map = R(q) @ p_camera + t``.
* Axes follow REP-103: the map is a local ENU frame (x east, y north, z up) and the camera frame
  the method localizes is the camera *body* frame (x forward, y left, z up), not the optical frame
  (z forward). ``T_camera_optical`` converts between the two.
* Angles are radians unless a name ends in ``_deg``.
* Perturbations (``sigma``/``noise`` of length 6) are ``(x, y, z, roll, pitch, yaw)``: translation
  in map axes (metres), rotation as ROS roll-pitch-yaw (fixed axes x, y, z, like tf2's setRPY)
  applied in the body frame: ``q' = q * q_rpy``.
* Covariances are 6x6 ROS layout, row-major ``(x, y, z, rot x, rot y, rot z)``, the rotation part
  being small-angle rotation vectors about the fixed (map) axes.

Rotation algebra comes from roma (batched torch) and transforms3d (scalar numpy); what neither
offers (weighted averaging, the sync-free averaging for GPU graphs, covariance of a weighted pose
set, map normalisation) is written here, and so is the search's perturbation, written out for
speed (:func:`perturb_poses`; tested against scipy).
"""

from __future__ import annotations

from dataclasses import dataclass
import math

import numpy as np
import roma
import torch
import transforms3d

POSE_DIM = 7

# Rotation from the optical frame (z forward, x right, y down) to the body frame (x forward,
# y left, z up) as a quaternion (x, y, z, w): columns of R are the optical axes in body axes.
_R_CAMERA_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def check_poses(poses: torch.Tensor, name: str = 'poses') -> None:
    """Raise ``ValueError`` unless ``poses`` is a finite float tensor ``[..., 7]``."""
    if not isinstance(poses, torch.Tensor):
        raise ValueError(f'{name} must be a torch.Tensor, got {type(poses).__name__}')
    if poses.ndim < 1 or poses.shape[-1] != POSE_DIM:
        raise ValueError(f'{name} must have shape [..., 7] (tx, ty, tz, qx, qy, qz, qw), '
                         f'got {tuple(poses.shape)}')
    if not poses.is_floating_point():
        raise ValueError(f'{name} must be a floating point tensor, got {poses.dtype}')
    if not bool(torch.isfinite(poses).all()):
        raise ValueError(f'{name} contains NaN or infinite values')
    norms = poses[..., 3:].norm(dim=-1)
    if bool((norms < 1e-6).any()):
        raise ValueError(f'{name} contains a zero quaternion')


def canonical_quat(quat: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``[..., 4]`` (x, y, z, w) with the sign chosen so that ``w >= 0``.

    q and -q are the same rotation; the pose encoder must see one of them only.
    """
    quat = roma.quat_normalize(quat)
    return torch.where(quat[..., 3:4] < 0, -quat, quat)


def canonical_poses(poses: torch.Tensor) -> torch.Tensor:
    """Poses ``[..., 7]`` with unit, sign-canonical quaternions."""
    return torch.cat([poses[..., :3], canonical_quat(poses[..., 3:])], dim=-1)


def rotation_distance(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """Geodesic distance (paper eq. 4) between unit quaternions ``[..., 4]``, in radians."""
    return roma.unitquat_geodesic_distance(q1, q2)


def rpy_to_quat(rpy: torch.Tensor) -> torch.Tensor:
    """Quaternions (x, y, z, w) from ROS roll, pitch, yaw ``[..., 3]`` in radians (fixed axes)."""
    return roma.euler_to_unitquat('xyz', rpy)


def perturb_poses(poses: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Move poses ``[..., 7]`` by ``noise * sigma`` (both ``[..., 6]``, broadcast).

    ``noise`` is unit-free (standard normal for the Gaussian proposer, uniform in [-1, 1] for
    training); ``sigma`` holds (x, y, z) in metres and (roll, pitch, yaw) in radians. Translation
    moves in map axes, rotation in the body frame (module docstring).
    """
    delta = noise * sigma
    translation = poses[..., :3] + delta[..., :3]
    # q * q_rpy written out component by component, the same arithmetic as
    # roma.quat_product(q, rpy_to_quat(rpy)) followed by canonical_quat (test_geometry.py checks
    # it against scipy): inductor compiles roma's composition of three axis rotations into loops
    # three wide, 2.2x slower (4096 poses, AVX-512 Xeon, 2 threads: 0.165 against 0.075 ms); the
    # search perturbs every candidate of every level. ROS setRPY: q_rpy = q_z(yaw) q_y(pitch)
    # q_x(roll).
    half = 0.5 * delta[..., 3:]
    cr, cp, cy = torch.cos(half).unbind(-1)
    sr, sp, sy = torch.sin(half).unbind(-1)
    dx = sr * cp * cy - cr * sp * sy
    dy = cr * sp * cy + sr * cp * sy
    dz = cr * cp * sy - sr * sp * cy
    dw = cr * cp * cy + sr * sp * sy
    x, y, z, w = poses[..., 3:].unbind(-1)
    qx = w * dx + x * dw + y * dz - z * dy
    qy = w * dy - x * dz + y * dw + z * dx
    qz = w * dz + x * dy - y * dx + z * dw
    qw = w * dw - x * dx - y * dy - z * dz
    # Unit length, and the sign with w >= 0 (canonical_quat).
    scale = torch.where(qw < 0, -1.0, 1.0) * torch.rsqrt(qx * qx + qy * qy + qz * qz + qw * qw)
    quat = torch.stack([qx, qy, qz, qw], dim=-1) * scale[..., None]
    return torch.cat([translation, quat], dim=-1)


def weighted_quat_average(quats: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted rotation average of Markley et al. (2007), batched.

    The average maximises ``sum_i w_i (q . q_i)^2``: the eigenvector of ``M = sum_i w_i q_i q_i^T``
    with the largest eigenvalue. Insensitive to the sign of each ``q_i``.

    Args:
        quats: ``[..., M, 4]`` unit quaternions (x, y, z, w).
        weights: ``[..., M]`` non-negative weights.

    Returns:
        ``[..., 4]`` canonical unit quaternions.
    """
    m = torch.einsum('...m,...mi,...mj->...ij', weights, quats, quats)
    _, vectors = torch.linalg.eigh(m)
    return canonical_quat(vectors[..., -1])


def weighted_quat_average_power(quats: torch.Tensor, weights: torch.Tensor,
                                iterations: int = 12) -> torch.Tensor:
    """Markley's average by power iteration: no eigensolver, no host synchronisation.

    Same result as :func:`weighted_quat_average` when the top eigenvalue is separated (it is for
    the clustered candidates the search averages); suited to CUDA graphs and TensorRT. The
    iteration starts from the most heavily weighted quaternion, which lies close to the answer.
    """
    m = torch.einsum('...m,...mi,...mj->...ij', weights, quats, quats)
    best = weights.argmax(dim=-1, keepdim=True).unsqueeze(-1).expand(*quats.shape[:-2], 1, 4)
    v = torch.gather(quats, -2, best).squeeze(-2)
    for _ in range(iterations):
        v = torch.einsum('...ij,...j->...i', m, v)
        v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return canonical_quat(v)


def weighted_pose_covariance(poses: torch.Tensor, weights: torch.Tensor,
                             mean: torch.Tensor) -> torch.Tensor:
    """Weighted 6x6 covariance (ROS layout) of poses ``[..., M, 7]`` around ``mean [..., 7]``.

    Rotation residuals are rotation vectors of ``q_i * q_mean^-1`` (small angles about the map
    axes). ``weights [..., M]`` need not be normalised.
    """
    w = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    dt = poses[..., :3] - mean[..., None, :3]
    dq = roma.quat_product(poses[..., 3:], roma.quat_conjugation(mean[..., None, 3:]))
    dr = roma.unitquat_to_rotvec(canonical_quat(dq))
    residual = torch.cat([dt, dr], dim=-1)
    return torch.einsum('...m,...mi,...mj->...ij', w, residual, residual)


@dataclass(frozen=True)
class MapNormalization:
    """Per-map normalisation of positions into [-0.5, 0.5] (paper, supplementary E).

    One isotropic scale (the largest extent over x, y, z) keeps distances comparable along every
    axis, so ``lambda_t`` of the target score is one number: a normalised distance ``d`` is
    ``d * scale`` metres. Stored in every checkpoint.
    """

    center: tuple[float, float, float]
    scale: float

    @classmethod
    def from_positions(cls, positions: torch.Tensor | np.ndarray) -> MapNormalization:
        """Fit to reference positions ``[M, 3]`` in metres."""
        positions = torch.as_tensor(positions, dtype=torch.float64)
        if positions.ndim != 2 or positions.shape[1] != 3 or positions.shape[0] == 0:
            raise ValueError(f'positions must have shape [M>0, 3], got {tuple(positions.shape)}')
        if not bool(torch.isfinite(positions).all()):
            raise ValueError('positions contain NaN or infinite values')
        lo, hi = positions.min(dim=0).values, positions.max(dim=0).values
        scale = float((hi - lo).max())
        return cls(center=tuple(float(c) for c in (lo + hi) / 2), scale=max(scale, 1.0))

    def _center(self, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.center, dtype=like.dtype, device=like.device)

    def normalize(self, poses: torch.Tensor) -> torch.Tensor:
        """Poses in metres ``[..., 7]`` -> poses with normalised positions."""
        t = (poses[..., :3] - self._center(poses)) / self.scale
        return torch.cat([t, poses[..., 3:]], dim=-1)

    def denormalize(self, poses: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`."""
        t = poses[..., :3] * self.scale + self._center(poses)
        return torch.cat([t, poses[..., 3:]], dim=-1)

    def to_dict(self) -> dict:
        """Plain form stored in checkpoints."""
        return {'center': list(self.center), 'scale': self.scale}

    @classmethod
    def from_dict(cls, data: dict) -> MapNormalization:
        """Rebuild from :meth:`to_dict`."""
        return cls(center=tuple(float(c) for c in data['center']), scale=float(data['scale']))


# --- scalar conversions for message adapters (numpy, transforms3d uses w, x, y, z) ------------

def quat_xyzw_to_matrix(q_xyzw) -> np.ndarray:
    """3x3 rotation matrix from a quaternion in ROS order (x, y, z, w)."""
    x, y, z, w = (float(v) for v in q_xyzw)
    return transforms3d.quaternions.quat2mat((w, x, y, z))


def matrix_to_quat_xyzw(rotation: np.ndarray) -> np.ndarray:
    """Quaternion in ROS order (x, y, z, w), ``w >= 0``, from a 3x3 rotation matrix."""
    w, x, y, z = transforms3d.quaternions.mat2quat(np.asarray(rotation, dtype=float))
    q = np.array([x, y, z, w])
    return -q if q[3] < 0 else q


def pose_to_matrix(pose) -> np.ndarray:
    """4x4 homogeneous transform from a pose ``(tx, ty, tz, qx, qy, qz, qw)``."""
    pose = np.asarray(pose, dtype=float)
    matrix = np.eye(4)
    matrix[:3, :3] = quat_xyzw_to_matrix(pose[3:])
    matrix[:3, 3] = pose[:3]
    return matrix


def matrix_to_pose(matrix: np.ndarray) -> np.ndarray:
    """Pose ``(tx, ty, tz, qx, qy, qz, qw)`` from a 4x4 homogeneous transform."""
    matrix = np.asarray(matrix, dtype=float)
    return np.concatenate([matrix[:3, 3], matrix_to_quat_xyzw(matrix[:3, :3])])


def yaw_of_quat(q_xyzw) -> float:
    """Yaw (rotation about z, radians) of a quaternion (x, y, z, w), ROS RPY convention."""
    x, y, z, w = (float(v) for v in q_xyzw)
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def turning(poses, stamps_ns, threshold_deg: float = 10.0, window: int = 2,
            max_gap_s: float = 10.0) -> np.ndarray:
    """Which of the poses ``[M, 7]`` of drives (in time order) are taken in a turn: bool ``[M]``.

    A frame turns when the camera rotates by more than ``threshold_deg`` between the frames
    ``window`` before and after it. Frames further apart in time than ``max_gap_s`` belong to
    different drives (datasets joining several traversals); windows stop at a drive's ends.
    The default marks, on the simulated city (an image every 3 m), the frames of street corners.
    """
    poses = np.asarray(poses, dtype=float).reshape(-1, 7)
    stamps = np.asarray(stamps_ns, dtype=np.int64).reshape(-1)
    if len(stamps) != len(poses):
        raise ValueError(f'{len(poses)} poses but {len(stamps)} stamps')
    if len(poses) == 0:
        return np.zeros(0, dtype=bool)
    breaks = np.flatnonzero(np.abs(np.diff(stamps)) > max_gap_s * 1e9) + 1
    drive = np.zeros(len(poses), dtype=int)
    drive[breaks] = 1
    drive = np.cumsum(drive)
    starts = np.concatenate([[0], breaks])[drive]
    ends = np.concatenate([breaks, [len(poses)]])[drive] - 1
    index = np.arange(len(poses))
    before = np.maximum(index - window, starts)
    after = np.minimum(index + window, ends)
    quats = torch.from_numpy(poses[:, 3:] / np.linalg.norm(poses[:, 3:], axis=1, keepdims=True))
    angle = rotation_distance(quats[before], quats[after]).numpy()
    return np.degrees(angle) > threshold_deg


def T_camera_optical() -> np.ndarray:  # noqa: N802 (transform naming convention)
    """4x4 transform from the optical frame (z forward) to the camera body frame (x forward)."""
    matrix = np.eye(4)
    matrix[:3, :3] = _R_CAMERA_OPTICAL
    return matrix


def optical_to_body_poses(poses) -> np.ndarray:
    """Poses ``[M, 7]`` of an optical camera frame (z forward) -> the camera body frame.

    For datasets that give camera poses the way OpenCV and COLMAP do; the method localizes
    the body frame (x forward, y left, z up).
    """
    poses = np.asarray(poses, dtype=float).reshape(-1, 7)
    body_from_optical = np.linalg.inv(T_camera_optical())
    return np.stack([matrix_to_pose(pose_to_matrix(p) @ body_from_optical) for p in poses])


def up_share(poses) -> float:
    """Share of poses ``[M, 7]`` whose camera body z axis points up (z component > 0.5).

    Near 1 for a vehicle camera in a gravity-aligned, z-up map; near 0 for optical-frame poses
    (their "z" points forward, their "y" down) or a y-down world.
    """
    poses = np.asarray(poses, dtype=float).reshape(-1, 7)
    if len(poses) == 0:
        return 1.0
    up = [quat_xyzw_to_matrix(p[3:])[2, 2] for p in poses]
    return float(np.mean(np.asarray(up) > 0.5))


# --- fixed transforms: extrinsics and covariances through them ---

def skew(v: np.ndarray) -> np.ndarray:
    """3x3 matrix ``[v]x`` with ``[v]x @ u = v x u``."""
    x, y, z = (float(c) for c in v)
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def compose_covariance(covariance: np.ndarray, t_a: np.ndarray, t_b: np.ndarray) -> np.ndarray:
    """Covariance (6x6 ROS layout, left perturbation in map axes) of ``B = A * X``, X fixed.

    ``t_a`` and ``t_b`` are the positions of A and B in the map. ROS and the localizer write a
    pose covariance as a perturbation on the left, in map axes: ``t' = t + dt``,
    ``R' = Exp(dr) R``. With ``a = t_B - t_A``, ``t_B' ~ t_B + dt - [a]x dr`` and
    ``R_B' = Exp(dr) R_B``, so ``cov_B = J cov_A J^T`` with ``J = [[I, -[a]x], [0, I]]``: the
    rotation uncertainty leaks into the position through the lever arm. The same formula carries
    a base_link prior to the camera (``X = T_base_camera``).
    """
    jacobian = np.eye(6)
    jacobian[:3, 3:] = -skew(np.asarray(t_b, float) - np.asarray(t_a, float))
    out = jacobian @ np.asarray(covariance, float) @ jacobian.T
    return 0.5 * (out + out.T)


def rpy_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Rotation matrix of ROS roll, pitch, yaw (fixed axes x, y, z; tf2's setRPY)."""
    return transforms3d.euler.euler2mat(roll, pitch, yaw, 'sxyz')


def extrinsic_matrix(xyz, rpy, optical: bool) -> np.ndarray:
    """``T_base_camera`` (camera *body* frame) from xyz (m) + rpy (rad) of ``camera_frame``.

    ``optical``: ``camera_frame`` is an optical frame (z forward); the body frame is then
    ``T_base_frame @ inv(T_camera_optical)``.
    """
    matrix = np.eye(4)
    matrix[:3, :3] = rpy_matrix(*rpy)
    matrix[:3, 3] = xyz
    if optical:
        matrix = matrix @ np.linalg.inv(T_camera_optical())
    return matrix
