"""The hierarchical search alone, with an oracle score (eq. 3 around a hidden true pose)."""

from dataclasses import replace
import math

import pytest
import torch

from imposing_ros.geometry import MapNormalization, rotation_distance, rpy_to_quat
from imposing_ros.localization.search import (
    draw_noise,
    hierarchical_search,
    SearchConfig,
    SearchSteps,
)
from imposing_ros.training.losses import target_scores

PAPER = SearchConfig(refine_share=0.0)  # the paper's search (section 4)


def street_grid(extent=2000.0, block=200.0, spacing=2.0):
    """Reference poses of a 2 km x 2 km street grid, both directions, right-hand lanes."""
    s = torch.arange(-extent / 2, extent / 2, spacing)
    n = s.numel()
    rows = []
    for c in torch.arange(-extent / 2, extent / 2 + 1, block).tolist():
        for d in (1.0, -1.0):
            zero, one = torch.zeros(n), torch.ones(n)
            rows.append(torch.stack([s, c - 2 * d * one, 1.5 * one, zero, zero,
                                     (0.0 if d > 0 else math.pi) * one], -1))
            rows.append(torch.stack([c + 2 * d * one, s, 1.5 * one, zero, zero,
                                     (math.pi / 2 if d > 0 else -math.pi / 2) * one], -1))
    p = torch.cat(rows)
    return torch.cat([p[:, :3], rpy_to_quat(p[:, 3:])], -1)


def hidden_poses(count, seed=100):
    g = torch.Generator().manual_seed(seed)
    street = torch.randint(-5, 6, (count,), generator=g).float() * 200
    along = torch.rand(count, generator=g) * 1800 - 900
    lateral = street - 2.0 + 0.5 * torch.randn(count, generator=g)
    z = 1.5 + 0.05 * torch.randn(count, generator=g)
    rpy = torch.stack([torch.full((count,), 0.01), torch.full((count,), -0.02),
                       0.05 * torch.randn(count, generator=g)], -1)
    return torch.cat([torch.stack([along, lateral, z], -1), rpy_to_quat(rpy)], -1)


@pytest.fixture(scope='module')
def grid_map():
    reference = street_grid()
    norm = MapNormalization.from_positions(reference[:, :3])
    initial = reference[torch.randperm(len(reference), generator=torch.Generator()
                                       .manual_seed(0))[:4096]]
    return norm, initial


def oracle_errors(grid_map, config, count=30):
    norm, initial = grid_map
    truth = hidden_poses(count)

    def oracle(true_poses, candidates):
        return target_scores(true_poses, candidates, norm.scale)

    noise = draw_noise(config, count, torch.Generator().manual_seed(1))
    result = hierarchical_search(truth, lambda p: p, initial, config, noise,
                                 SearchSteps(score=oracle))
    et = (result.pose[:, :3] - truth[:, :3]).norm(dim=-1)
    er = torch.rad2deg(rotation_distance(result.pose[:, 3:], truth[:, 3:]))
    return et, er, result


def test_oracle_search_converges_in_a_2km_map(grid_map):
    # The paper's search: N = 4096, K = 6, B = 100, no translation refinement.
    et, er, result = oracle_errors(grid_map, PAPER)
    # Measured: median 1.12 m / 0.013 deg over these 30 poses; one level alone: 14 m / 2 deg.
    # With eq. 3 in a 2 km map one degree weighs as much as 40 m, so the proposer ranks
    # candidates by rotation long before translation (the default refinement, below, helps).
    assert et.median() < 1.5, f'median translation error {et.median():.2f} m'
    assert er.median() < 1.0 and er.max() < 1.0
    assert (et < 5.0).float().mean() >= 0.9
    eig = torch.linalg.eigvalsh(result.covariance)
    assert torch.isfinite(result.covariance).all() and (eig > 0).all()
    assert ((result.score > 0.9) & (result.score <= 1.0)).all()


def test_translation_refinement_reaches_half_a_metre_with_the_oracle(grid_map):
    paper, er_paper, paper_result = oracle_errors(grid_map, PAPER)
    refined, er, result = oracle_errors(grid_map, SearchConfig())  # the default: 0.75
    # Measured: median 0.354 m (p90 0.59 m) against the paper's 1.125 m on these 30 poses;
    # the rotation, from the eq. 2 candidates, 0.019 deg (paper 0.013 deg).
    assert SearchConfig().refine_share > 0
    assert refined.median() <= 0.5 < paper.median()
    assert er.median() < 2 * er_paper.median()
    # Three quarters of the last level keep the best candidate's rotation.
    best = result.candidates[:, 0, 3:]
    shared = ((result.candidates[..., 3:] - best[:, None]).abs().amax(-1) < 1e-6).float()
    assert shared.mean() > 0.5
    # Yet the rotation covariance is not collapsed to the numerical floor: it is the spread of
    # the level's eq. 2 candidates (rotation block trace, rad^2, per pose).
    def rotation_var(r):
        return torch.diagonal(r.covariance[:, 3:, 3:], dim1=-2, dim2=-1).sum(-1)
    assert (rotation_var(result) > 0.5 * rotation_var(paper_result)).all()


def test_hierarchy_matters(grid_map):
    et_halve, _, _ = oracle_errors(grid_map, replace(PAPER, schedule='halve'))
    et_flat, _, _ = oracle_errors(grid_map, replace(PAPER, schedule='constant'))
    et_one, _, _ = oracle_errors(grid_map, replace(PAPER, levels=1))
    _, er_halve, _ = oracle_errors(grid_map, replace(PAPER, schedule='halve'))
    _, er_flat, _ = oracle_errors(grid_map, replace(PAPER, schedule='constant'))
    # Measured: constant sigma 1.35 m / 0.054 deg against 1.12 m / 0.013 deg halved.
    assert et_flat.median() > 1.1 * et_halve.median()
    assert er_flat.median() > 2 * er_halve.median()
    assert et_one.median() > 5 * et_halve.median()


def test_search_is_deterministic_and_batch_independent(grid_map):
    config = SearchConfig(num_candidates=512, top_k=50, num_average=64)
    _, _, a = oracle_errors(grid_map, config, count=4)
    _, _, b = oracle_errors(grid_map, config, count=4)
    assert torch.equal(a.pose, b.pose)


def test_schedules():
    v = SearchConfig().level_sigma
    assert torch.allclose(v(1)[:3], torch.tensor([8.0, 8.0, 0.2]))
    assert torch.allclose(v(3)[5], torch.deg2rad(torch.tensor(5.0)) / 4)
    inverse = SearchConfig(schedule='inverse').level_sigma
    assert torch.allclose(inverse(4)[0], torch.tensor(2.0))


@pytest.mark.parametrize('kwargs', [dict(top_k=0), dict(num_average=5000), dict(levels=0),
                                    dict(sigma=(1.0, 2.0)), dict(schedule='cosine'),
                                    dict(averaging='mean'), dict(converge_m=-1.0),
                                    dict(converge_deg=float('nan')), dict(refine_share=1.5),
                                    dict(refine_sigma_factor=0.0)])
def test_bad_search_config(kwargs):
    with pytest.raises(ValueError):
        SearchConfig(**kwargs)


def _per_image_search(grid_map, config, count=30):
    """Each hidden pose searched alone (early stop decides per image): errors and levels run."""
    norm, initial = grid_map
    errors, levels = [], []
    for truth in hidden_poses(count):
        noise = draw_noise(config, 1, torch.Generator().manual_seed(1))
        oracle = SearchSteps(score=lambda t, c: target_scores(t, c, norm.scale))
        result = hierarchical_search(truth[None], lambda p: p, initial, config, noise, oracle)
        errors.append(float((result.pose[0, :3] - truth[:3]).norm()))
        levels.append(result.levels)
    return torch.tensor(errors), torch.tensor(levels, dtype=torch.float)


def test_early_stop_trades_levels_for_accuracy(grid_map):
    full_err, full_levels = _per_image_search(grid_map, PAPER)
    assert (full_levels == 6).all()
    # A tolerance nothing can miss stops right after level 1; one nothing can meet never stops.
    _, levels = _per_image_search(grid_map, replace(PAPER, converge_m=1e9, converge_deg=1e9), 5)
    assert (levels == 2).all()
    tight_err, levels = _per_image_search(grid_map, replace(PAPER, converge_m=1e-6,
                                                                 converge_deg=1e-6), 5)
    assert (levels == 6).all()
    assert torch.equal(tight_err, _per_image_search(grid_map, PAPER, 5)[0])
    # Measured: 2 m / 0.5 deg runs 4.6 levels on average for a median of 2.2 m (full: 0.9 m).
    err, levels = _per_image_search(grid_map, replace(PAPER, converge_m=2.0, converge_deg=0.5))
    assert levels.mean() < 5.5 and err.median() < 3.0


def test_every_reference_pose_at_level0_halves_the_error(grid_map):
    # Level-0 codes are image-independent, so the localizer caches them: scoring all 44,000
    # reference poses of the map instead of 4096 costs one larger matrix product per frame.
    norm, sampled = grid_map
    reference = street_grid()
    et_all, er_all, _ = oracle_errors((norm, reference), PAPER)
    et_4k, _, _ = oracle_errors((norm, sampled), PAPER)
    # Measured on these 30 poses: 0.60 m median, all within 5 m (4096 sampled: 1.12 m, 97 %).
    assert et_all.median() < 0.75 and (et_all < 5.0).all()
    assert et_all.median() < 0.7 * et_4k.median()
    assert er_all.max() < 1.0


def test_precomputed_level0_scores_and_sigmas_give_the_same_search():
    # What the localizer and the CUDA graph pass in (cached unit codes, device sigmas) must not
    # change the search.
    from imposing_ros.localization.search import level0_scores, level_sigmas, unit_codes

    g = torch.Generator().manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(7, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    initial = street_grid()[torch.randperm(44000, generator=g)[:512]]
    images = torch.randn(2, 16, generator=g)
    config = SearchConfig(num_candidates=512, levels=4, top_k=16, num_average=32)
    noise = draw_noise(config, 2, g)
    with torch.no_grad():
        encode = lambda p: net(p / 1000.0)  # noqa: E731
        plain = hierarchical_search(images, encode, initial, config, noise)
        given = hierarchical_search(images, encode, initial, config, noise,
                                    sigmas=level_sigmas(config, config.levels),
                                    initial_scores=level0_scores(images,
                                                                 unit_codes(encode(initial))))
    assert torch.allclose(plain.pose, given.pose, atol=1e-5)
    assert torch.allclose(plain.candidate_scores, given.candidate_scores, atol=1e-6)


def test_mixture_picks_components_by_the_inverse_cdf():
    # sample_mixture counts the CDF entries at or below each draw (a vectorised loop once
    # compiled): the component searchsorted(right=True) finds, ties and an all-zero row included.
    from imposing_ros.localization.search import sample_mixture

    g = torch.Generator().manual_seed(5)
    centers = torch.zeros(3, 4, 7)
    centers[..., 0] = torch.arange(4.0)  # x of a drawn pose = its component
    centers[..., 6] = 1.0
    weights = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 2.0, 0.0, 6.0], [0.0, 0.0, 0.0, 0.0]])
    uniform = torch.cat([torch.rand(3, 500, generator=g),
                         torch.tensor([[0.0, 0.25, 0.5, 0.75]] * 3)], dim=1)
    drawn = sample_mixture(centers, weights, uniform, torch.zeros(3, 504, 6), torch.zeros(6))
    cdf = (weights + 1e-12).cumsum(-1)
    cdf = cdf / cdf[:, -1:]
    expected = torch.searchsorted(cdf, uniform, right=True).clamp_max(3)
    assert torch.equal(drawn[..., 0].long(), expected)
    # Components with no weight are not drawn (but by a draw of exactly 0, on the first); the
    # all-zero row draws all four.
    assert set(drawn[1, :500, 0].tolist()) == {1.0, 3.0}
    assert set(drawn[2, :, 0].tolist()) == {0.0, 1.0, 2.0, 3.0}
