"""Geometry against independent references (scipy, transforms3d) and brute force."""

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
import torch

from imposing_ros import geometry as geo


def random_quats(n, seed=0):
    return torch.from_numpy(Rotation.random(n, random_state=seed).as_quat()).float()


def test_rpy_matches_scipy_extrinsic_xyz():
    rpy = torch.tensor([[0.1, -0.2, 1.3], [-2.0, 0.4, -3.0]])
    ref = Rotation.from_euler('xyz', rpy.numpy()).as_quat()
    ours = geo.rpy_to_quat(rpy).numpy()
    assert np.allclose(np.abs((ours * ref).sum(-1)), 1.0, atol=1e-6)


def test_rotation_distance_matches_scipy():
    q1, q2 = random_quats(50, 1), random_quats(50, 2)
    ref = (Rotation.from_quat(q1.numpy()).inv() * Rotation.from_quat(q2.numpy())).magnitude()
    assert np.allclose(geo.rotation_distance(q1, q2).numpy(), ref, atol=1e-5)
    # q and -q are the same rotation
    assert torch.allclose(geo.rotation_distance(q1, -q1), torch.zeros(50), atol=1e-3)


def test_perturb_moves_translation_in_map_and_rotation_in_body_frame():
    q = random_quats(20, 3)
    poses = torch.cat([torch.randn(20, 3), q], dim=-1)
    noise = torch.randn(20, 6)
    sigma = torch.tensor([8.0, 8.0, 0.2, 0.1, 0.1, 0.3])
    out = geo.perturb_poses(poses, noise, sigma)
    delta = (noise * sigma).numpy()
    assert np.allclose(out[:, :3].numpy(), poses[:, :3].numpy() + delta[:, :3], atol=1e-5)
    ref = Rotation.from_quat(q.numpy()) * Rotation.from_euler('xyz', delta[:, 3:])
    err = (ref.inv() * Rotation.from_quat(out[:, 3:].numpy())).magnitude()
    assert err.max() < 1e-5
    assert (out[:, 6] >= 0).all()


def test_markley_average_matches_scipy_and_brute_force():
    rng = np.random.default_rng(4)
    center = Rotation.random(random_state=5)
    rots = center * Rotation.from_rotvec(rng.normal(0, 0.2, (40, 3)))
    quats = torch.from_numpy(rots.as_quat()).float()
    quats[::3] *= -1  # sign must not matter
    weights = torch.from_numpy(rng.uniform(0.1, 1.0, 40)).float()
    ours = geo.weighted_quat_average(quats, weights)
    ref = Rotation.from_quat(quats.numpy()).mean(weights=weights.numpy())
    assert (ref.inv() * Rotation.from_quat(ours.numpy())).magnitude() < 1e-4

    # Brute force: no unit quaternion scores higher on Markley's objective.
    def objective(v):
        return (weights[:, None] * (quats @ v.T) ** 2).sum(0)
    trials = torch.nn.functional.normalize(torch.randn(20000, 4), dim=-1)
    near = torch.nn.functional.normalize(ours + 0.05 * torch.randn(20000, 4), dim=-1)
    best = objective(ours[None])[0]
    assert best >= objective(trials).max() - 1e-5
    assert best >= objective(near).max() - 1e-5


def test_power_iteration_average_equals_eigh():
    rng = np.random.default_rng(6)
    centers = Rotation.random(8, random_state=7)
    quats = torch.stack([torch.from_numpy(
        (c * Rotation.from_rotvec(rng.normal(0, 0.1, (64, 3)))).as_quat()).float()
        for c in centers])
    weights = torch.rand(8, 64)
    exact = geo.weighted_quat_average(quats, weights)
    power = geo.weighted_quat_average_power(quats, weights)
    assert geo.rotation_distance(exact, power).max() < 1e-3


def test_weighted_covariance_matches_numpy():
    rng = np.random.default_rng(8)
    poses = torch.cat([torch.from_numpy(rng.normal(0, 2.0, (100, 3))).float(),
                       torch.from_numpy((Rotation.from_rotvec(rng.normal(0, 0.05, (100, 3))))
                                        .as_quat()).float()], -1)
    weights = torch.from_numpy(rng.uniform(0, 1, 100)).float()
    mean = torch.tensor([0.1, -0.2, 0.3, 0.0, 0.0, 0.0, 1.0])
    cov = geo.weighted_pose_covariance(poses, weights, mean).numpy()
    w = weights.numpy() / weights.numpy().sum()
    d = poses[:, :3].numpy() - mean[:3].numpy()
    assert np.allclose(cov[:3, :3], (w[:, None, None] * d[:, :, None] * d[:, None, :]).sum(0),
                       atol=1e-4)
    rv = Rotation.from_quat(poses[:, 3:].numpy()).as_rotvec()  # mean rotation is identity
    assert np.allclose(cov[3:, 3:], (w[:, None, None] * rv[:, :, None] * rv[:, None, :]).sum(0),
                       atol=1e-6)
    assert np.allclose(cov, cov.T, atol=1e-7)


def test_map_normalization_round_trip_and_range():
    positions = torch.tensor([[100.0, -50.0, 1.0], [1100.0, 450.0, 3.0], [600.0, 0.0, 2.0]])
    norm = geo.MapNormalization.from_positions(positions)
    assert norm.scale == pytest.approx(1000.0)
    poses = torch.cat([positions, torch.tensor([[0.0, 0, 0, 1]]).expand(3, 4)], -1)
    normalized = norm.normalize(poses)
    assert normalized[:, :3].abs().max() <= 0.5 + 1e-6
    assert torch.allclose(norm.denormalize(normalized), poses, atol=1e-4)
    assert geo.MapNormalization.from_dict(norm.to_dict()) == norm


def test_scalar_conversions_match_transforms3d_order():
    q = Rotation.from_euler('xyz', [0.3, -0.1, 2.0]).as_quat()  # xyzw
    m = geo.quat_xyzw_to_matrix(q)
    assert np.allclose(m, Rotation.from_quat(q).as_matrix())
    pose = np.array([1.0, 2.0, 3.0, *q])
    back = geo.matrix_to_pose(geo.pose_to_matrix(pose))
    assert np.allclose(np.abs(back[3:] @ q), 1.0) and np.allclose(back[:3], pose[:3])
    assert geo.yaw_of_quat(q) == pytest.approx(2.0)
    # optical z axis is the body x axis (forward)
    assert np.allclose(geo.T_camera_optical()[:3, :3] @ [0, 0, 1], [1, 0, 0])


@pytest.mark.parametrize('bad, message', [
    (torch.zeros(3, 6), 'shape'),
    (torch.tensor([[0.0, 0, 0, 0, 0, 0, 1], [math.nan, 0, 0, 0, 0, 0, 1]]), 'NaN'),
    (torch.zeros(2, 7), 'zero quaternion'),
    (torch.zeros(2, 7, dtype=torch.int64), 'floating'),
])
def test_check_poses_rejects_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        geo.check_poses(bad)


def test_compose_covariance_matches_monte_carlo():
    """Sampled poses carried through a fixed transform have the covariance of the formula."""
    rng = np.random.default_rng(0)
    a = np.array([[0.3, 0.1, 0, 0.01, 0, 0.02], [0.1, 0.2, 0, 0, 0, -0.01],
                  [0, 0, 0.05, 0, 0, 0], [0.01, 0, 0, 0.002, 0, 0],
                  [0, 0, 0, 0, 0.003, 0], [0.02, -0.01, 0, 0, 0, 0.01]])
    t_map_a = geo.pose_to_matrix([10.0, -5.0, 1.0, 0.0, 0.0, math.sin(0.4), math.cos(0.4)])
    x = geo.extrinsic_matrix([1.5, -0.3, 1.2], [0.0, 0.1, 0.3], optical=False)
    t_map_b = t_map_a @ x
    samples = rng.multivariate_normal(np.zeros(6), a, size=200000)
    residuals = []
    rot_b = Rotation.from_matrix(t_map_b[:3, :3])
    for d in samples[:20000]:
        perturbed = t_map_a.copy()
        perturbed[:3, :3] = Rotation.from_rotvec(d[3:]).as_matrix() @ t_map_a[:3, :3]
        perturbed[:3, 3] += d[:3]
        b = perturbed @ x
        dr = (Rotation.from_matrix(b[:3, :3]) * rot_b.inv()).as_rotvec()
        residuals.append(np.concatenate([b[:3, 3] - t_map_b[:3, 3], dr]))
    empirical = np.cov(np.array(residuals).T)
    predicted = geo.compose_covariance(a, t_map_a[:3, 3], t_map_b[:3, 3])
    assert np.allclose(empirical, predicted, atol=0.01 * np.abs(predicted).max())
    # The rotation -> translation leak is real here: ignoring it would be far off.
    assert not np.allclose(empirical, a, atol=0.01 * np.abs(predicted).max())


def test_optical_extrinsic_gives_body_frame():
    """An optical camera_frame with identity pose yields a body frame looking along base z."""
    body = geo.extrinsic_matrix([0, 0, 0], [0, 0, 0], optical=True)
    assert np.allclose(body @ geo.T_camera_optical(), np.eye(4))
    # Body x (forward) is the optical z axis: base z here.
    assert np.allclose(body[:3, 0], [0, 0, 1])


def test_turning_marks_corners_within_each_drive():
    from imposing_ros.geometry import rpy_to_quat, turning

    yaw = np.concatenate([np.zeros(10), np.linspace(0, np.pi / 2, 6)[1:], np.full(10, np.pi / 2)])
    quats = rpy_to_quat(torch.tensor(np.stack([0 * yaw, 0 * yaw, yaw], 1))).numpy()
    poses = np.concatenate([np.zeros((len(yaw), 3)), quats], axis=1)
    stamps = np.arange(len(yaw)) * 400_000_000
    turns = turning(poses, stamps)  # 18 deg a frame from frame 10 to 14
    assert not turns[:7].any() and turns[9:16].all() and not turns[18:].any()
    # Two drives joined (a day apart): no turn is seen across the junction.
    both = turning(np.concatenate([poses[:10], poses[-10:]]),
                   np.concatenate([stamps[:10], stamps[:10] + 86_400 * 10**9]))
    assert not both.any()
    with pytest.raises(ValueError, match='stamps'):
        turning(poses, stamps[:-1])
