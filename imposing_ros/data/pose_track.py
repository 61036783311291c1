"""Pose time series and transform chains, interpolated at any stamp (numpy, no ROS).

Positions are interpolated linearly, rotations by slerp; a stamp is only answered between two
samples close enough in time (``max_gap_ns``), never extrapolated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imposing_ros.geometry import matrix_to_pose, pose_to_matrix


def frame_name(name: str) -> str:
    """A TF frame id without its leading slash (ROS 1 style ids occur in bags)."""
    return name.lstrip('/')


def slerp(q0: np.ndarray, q1: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """Batched spherical interpolation of unit quaternions ``[K, 4]`` at ``frac [K]`` in [0, 1].

    Takes the short way (flips ``q1`` when ``q0 . q1 < 0``); nearly equal pairs are lerped.
    """
    q0, q1 = np.asarray(q0, dtype=np.float64), np.asarray(q1, dtype=np.float64)
    frac = np.asarray(frac, dtype=np.float64)[:, None]
    dot = np.sum(q0 * q1, axis=1, keepdims=True)
    q1 = np.where(dot < 0, -q1, q1)
    dot = np.clip(np.abs(dot), 0.0, 1.0)
    theta = np.arccos(dot)
    small = theta < 1e-6
    sin = np.where(small, 1.0, np.sin(theta))
    w0 = np.where(small, 1.0 - frac, np.sin((1.0 - frac) * theta) / sin)
    w1 = np.where(small, frac, np.sin(frac * theta) / sin)
    q = w0 * q0 + w1 * q1
    return q / np.linalg.norm(q, axis=1, keepdims=True)


@dataclass
class PoseTrack:
    """A time series of poses ``[M, 7]`` at increasing stamps ``[M]`` (ns)."""

    stamps: np.ndarray
    poses: np.ndarray

    @classmethod
    def build(cls, stamps, poses, where: str) -> PoseTrack:
        """Sort, validate and normalise samples; ValueError naming ``where`` on bad ones."""
        if len(stamps) == 0:
            raise ValueError(f'{where}: no pose messages')
        stamps = np.asarray(stamps, dtype=np.int64)
        poses = np.asarray(poses, dtype=np.float64).reshape(-1, 7)
        if not np.isfinite(poses).all():
            raise ValueError(f'{where}: NaN or infinite pose values')
        norms = np.linalg.norm(poses[:, 3:], axis=1, keepdims=True)
        if (norms < 1e-6).any():
            raise ValueError(f'{where}: zero quaternion in a pose')
        order = np.argsort(stamps, kind='stable')
        stamps, poses = stamps[order], poses[order]
        poses[:, 3:] /= norms[order]
        keep = np.concatenate([[True], np.diff(stamps) > 0])  # duplicates: keep the first
        return cls(stamps[keep], poses[keep])

    def at(self, stamps_ns: np.ndarray, max_gap_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Poses at ``stamps_ns`` ``[K, 7]`` and the mask of those with samples close enough.

        A stamp is valid when it lies between two samples each at most ``max_gap_ns`` away
        (or on a sample).
        """
        times, poses = self.stamps, self.poses
        stamps_ns = np.asarray(stamps_ns, dtype=np.int64).reshape(-1)
        hi = np.clip(np.searchsorted(times, stamps_ns, side='left'), 0, len(times) - 1)
        exact = times[hi] == stamps_ns
        lo = np.where(exact, hi, np.clip(hi - 1, 0, len(times) - 1))
        span = (times[hi] - times[lo]).astype(np.float64)
        frac = np.where(span > 0, (stamps_ns - times[lo]) / np.where(span > 0, span, 1.0), 0.0)
        frac = np.clip(frac, 0.0, 1.0)
        inside = (times[lo] <= stamps_ns) & (stamps_ns <= times[hi])
        gap = np.maximum(stamps_ns - times[lo], times[hi] - stamps_ns)
        valid = inside & (gap <= max_gap_ns)
        t = poses[lo, :3] + frac[:, None] * (poses[hi, :3] - poses[lo, :3])
        q = slerp(poses[lo, 3:], poses[hi, 3:], frac) if len(frac) else poses[:0, 3:]
        return np.concatenate([t, q], axis=1), valid


class TfChain:
    """``T_parent_child`` along a chain of static and time-varying (``/tf``) edges.

    ``edges[child] = (parent, track_or_matrix)``; a static edge holds a 4x4 matrix.
    """

    def __init__(self, edges: dict, where: str):
        self.edges = edges
        self.where = where

    def path(self, top: str, bottom: str) -> list[str]:
        """Frames from ``bottom`` up to (not including) ``top``; ValueError when not linked."""
        frames, frame = [], frame_name(bottom)
        while frame != frame_name(top):
            if frame not in self.edges or frame in frames:
                known = ', '.join(f'{p}->{c}' for c, (p, _) in sorted(self.edges.items()))
                raise ValueError(f'{self.where}: no chain {top} -> {bottom} (edges: '
                                 f'{known or "none"})')
            frames.append(frame)
            frame = self.edges[frame][0]
        return frames

    def at(self, top: str, bottom: str, stamps_ns: np.ndarray,
           max_gap_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """``T_top_bottom`` as poses ``[K, 7]`` at ``stamps_ns`` and their validity mask."""
        stamps_ns = np.asarray(stamps_ns, dtype=np.int64).reshape(-1)
        mats = np.tile(np.eye(4), (len(stamps_ns), 1, 1))
        valid = np.ones(len(stamps_ns), dtype=bool)
        for frame in self.path(top, bottom):  # bottom first: left-multiply parents
            value = self.edges[frame][1]
            if isinstance(value, PoseTrack):
                poses, ok = value.at(stamps_ns, max_gap_ns)
                valid &= ok
                edge = np.stack([pose_to_matrix(p) for p in poses]) if len(poses) else mats
            else:
                edge = value[None]
            mats = edge @ mats
        poses = np.stack([matrix_to_pose(m) for m in mats]) if len(mats) else np.zeros((0, 7))
        return poses, valid

    def static(self, top: str, bottom: str) -> np.ndarray:
        """``T_top_bottom`` 4x4 when every edge of the chain is static."""
        matrix = np.eye(4)
        for frame in self.path(top, bottom):
            value = self.edges[frame][1]
            if isinstance(value, PoseTrack):
                raise ValueError(f'{self.where}: edge {self.edges[frame][0]} -> {frame} is not '
                                 f'static')
            matrix = value @ matrix
        return matrix
