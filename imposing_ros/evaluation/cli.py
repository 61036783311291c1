"""Localize a test set with a trained model and report errors and recalls.

The model may be ImPosing's or a baseline's (:mod:`imposing_ros.baselines`): one metrics path.

Prints median / mean errors and recalls at (0.5 m, 2 deg), (1 m, 5 deg), (5 m, 10 deg); a frame
the localizer fails on counts as an infinite error. ``--json`` writes the summary and
``--csv`` the per-frame estimates.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import json
import logging
from pathlib import Path
import time
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from imposing_ros.baselines.localizers import open_localizer
from imposing_ros.config import config_from_dict, config_to_dict, parse_override
from imposing_ros.evaluation.metrics import (
    covariance_calibration,
    format_summary,
    pose_errors,
    summarize,
    turn_recalls,
)
from imposing_ros.localization.localizer import LocalizerConfig
from imposing_ros.localization.scenes import AUTO, SceneLocalizer, SceneVoteLocalizer
from imposing_ros.localization.search import SearchConfig
from imposing_ros.runtime.select import add_backend_arguments, DEFAULT_BACKEND, DEFAULT_INDUCTOR
from imposing_ros.utils import atomic_write_text

LOGGER = logging.getLogger('imposing_ros.evaluation')


class Evaluation(NamedTuple):
    """What :func:`evaluate` returns: the summary and per-frame arrays in frame order.

    ``estimates`` / ``truth [M, 7]`` T_map_camera (NaN rows: failures), ``scores [M]``,
    ``stamps_ns [M]`` and ``sources`` (image file or bag topic@stamp) of each frame;
    ``covariances [M, 6, 6]`` (NaN: failures, or a method without one), ``frame_ms [M]`` wall
    time of each ``localize`` call, ``candidates`` the result's top candidates per frame
    (None: failures).
    """

    summary: dict
    estimates: np.ndarray
    truth: np.ndarray
    scores: np.ndarray
    stamps_ns: np.ndarray
    sources: list
    covariances: np.ndarray
    frame_ms: np.ndarray
    candidates: list


def evaluate(model_path: str | Path, frames, scene: str | None = None,
             config: LocalizerConfig | None = None, device: str = 'cpu',
             backend: str = DEFAULT_BACKEND, inductor: str = DEFAULT_INDUCTOR,
             engine_cache: str | None = None, min_score: float = 0.0,
             expect_scene: str | None = None):
    """Localize every frame; return (summary dict, estimates [M, 7], truth [M, 7], scores).

    A frame fails (infinite error, NaN estimate) when localization raises or when its best score
    is 0 or under ``min_score``: a pose nobody would publish is not counted as a pose. The
    summary adds the calibration of the covariances of the localized frames
    (:func:`~imposing_ros.evaluation.metrics.covariance_calibration`).

    ``scene='auto'`` (a multi-scene model): every frame is searched in every scene and the best
    score picks one (:class:`~imposing_ros.localization.scenes.SceneVoteLocalizer`); the frames
    are of ``expect_scene``, a frame won by another scene is a miss, and the summary adds
    ``scene_votes`` (``none``: no scene scored ``min_score``, no vote) and ``scene_accuracy``
    (share of the voting frames the right scene won).
    """
    if scene == AUTO:
        if not expect_scene:
            raise ValueError('--scene auto needs --expect-scene: the scene the frames are in')
        scenes = SceneLocalizer.from_checkpoint(model_path, AUTO, config=config, device=device,
                                                backend=backend, inductor=inductor,
                                                engine_cache=engine_cache)
        vote = SceneVoteLocalizer(scenes.localizers, expect_scene, min_score)
        result = evaluate_localizer(vote, frames, min_score)
        result.summary['scene_votes'] = dict(vote.votes)
        result.summary['scene_accuracy'] = vote.accuracy
        return result
    localizer = open_localizer(model_path, scene, config, device, backend, inductor,
                               engine_cache)
    return evaluate_localizer(localizer, frames, min_score)


def evaluate_localizer(localizer, frames, min_score: float = 0.0,
                       desc: str = 'evaluate') -> Evaluation:
    """:func:`evaluate` with a localizer already built (ImPosing's or a baseline's)."""
    estimates, truth, scores, covariances, stamps, sources = [], [], [], [], [], []
    frame_ms, candidates = [], []
    low_score = 0
    for frame in tqdm(frames, desc=desc, unit='frame', dynamic_ncols=True):
        truth.append(frame.pose)
        stamps.append(frame.stamp_ns)
        sources.append(frame.source)
        t0 = time.perf_counter()
        try:
            result = localizer.localize(frame.image)
        except (ValueError, RuntimeError) as exc:
            LOGGER.warning('%s: localization failed: %s', frame.source, exc)
            result = None
        frame_ms.append(1e3 * (time.perf_counter() - t0))
        if result is not None and (result.score <= 0 or result.score < min_score):
            low_score += 1
            scores.append(result.score)
            result = None
        elif result is not None:
            scores.append(result.score)
        else:
            scores.append(0.0)
        estimates.append(np.full(7, np.nan) if result is None else result.pose)
        covariances.append(np.full((6, 6), np.nan) if result is None else result.covariance)
        candidates.append(None if result is None else result.candidates)
    if not truth:
        raise ValueError('the test set yielded no frames')
    est, gt = np.stack(estimates), np.stack(truth)
    et, er = pose_errors(torch.from_numpy(est), torch.from_numpy(gt))
    summary = summarize(et.numpy(), er.numpy())
    summary['low_score'] = low_score
    summary.update(turn_recalls(et.numpy(), er.numpy(), gt, np.asarray(stamps, np.int64)))
    covariances = np.stack(covariances)
    summary.update(covariance_calibration(est, gt, covariances))
    return Evaluation(summary, est, gt, np.asarray(scores), np.asarray(stamps, np.int64), sources,
                      covariances, np.asarray(frame_ms), candidates)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``imposing-ros evaluate``."""
    parser.add_argument('--model', required=True, help='checkpoint (.pt)')
    parser.add_argument('--data', required=True, help='test dataset spec (folder, bag, ...)')
    parser.add_argument('--scene', help='scene of a multi-scene model, or auto: every frame '
                        'searched in every scene, the best score picks it (needs --expect-scene)')
    parser.add_argument('--expect-scene', metavar='SCENE',
                        help='with --scene auto: the scene the frames are in (a frame another '
                             'scene wins is a miss)')
    parser.add_argument('--candidates', type=int, help='candidates per level (default 4096)')
    parser.add_argument('--levels', type=int, help='levels (default 6)')
    parser.add_argument('--set', action='append', default=[], metavar='search.KEY=VALUE',
                        help='override a search setting (repeatable), e.g. '
                             "search.refine_share=0 for the paper's search")
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--min-score', type=float, default=0.0,
                        help='count a best score under this as a failure, as the node does with '
                             'its min_score (default 0: only a score of 0 fails)')
    add_backend_arguments(parser)
    parser.add_argument('--json', help='write the summary here')
    parser.add_argument('--csv', help='write per-frame estimates here')
    parser.add_argument('--plot', help='write a map of the estimates coloured by error (PNG/SVG)')


def run(args: argparse.Namespace) -> int:
    """Entry of ``imposing-ros evaluate``."""
    from imposing_ros.data.datasets import open_dataset

    search = LocalizerConfig().search
    if args.candidates:
        search = replace(search, num_candidates=args.candidates,
                         num_average=min(search.num_average, args.candidates),
                         top_k=min(search.top_k, args.candidates))
    if args.levels:
        search = replace(search, levels=args.levels)
    overrides = {}
    for text in args.set:
        section, key, value = parse_override(text)
        if section != 'search':
            raise ValueError(f'--set {text!r}: evaluate takes search.KEY=VALUE only')
        overrides[key] = value
    search = config_from_dict(SearchConfig, {**config_to_dict(search), **overrides}, '--set')
    result = evaluate(args.model, open_dataset(args.data), args.scene,
                      LocalizerConfig(search=search), args.device, args.backend, args.inductor,
                      args.engine_cache, args.min_score, args.expect_scene)
    summary, est, gt, scores, stamps, sources = result[:6]
    print(format_summary(summary))
    if args.json:
        atomic_write_text(args.json, json.dumps(summary, indent=2))
    if args.csv:
        lines = ['timestamp,image,x,y,z,qx,qy,qz,qw,score,'
                 'true_x,true_y,true_z,true_qx,true_qy,true_qz,true_qw']
        lines += [f'{t},{src},' + ','.join(f'{v:.6f}' for v in (*e, s, *g))
                  for t, src, e, s, g in zip(stamps, sources, est, scores, gt)]
        atomic_write_text(args.csv, '\n'.join(lines) + '\n')
    if args.plot:
        from imposing_ros.evaluation.plots import trajectory_figure

        errors, _ = pose_errors(torch.from_numpy(est), torch.from_numpy(gt))
        trajectory_figure(est, gt, errors.numpy(), args.plot,
                          f"{Path(args.data).name}: median {summary['median_m']:.2f} m, "
                          f"{100 * summary['recall_5m_10deg']:.0f} % within 5 m / 10 deg")
    return 0
