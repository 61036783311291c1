"""Replay benchmark: ImPosing beside image retrieval and absolute pose regression.

``imposing-ros benchmark --data SPEC --out DIR [--models A.pt B.pt ...]`` replays every frame
of a dataset (a rosbag2 or a plain folder with poses) through each model, ImPosing's or a
baseline's (:mod:`imposing_ros.baselines`), with the same metrics (:mod:`.metrics`: a frame
without a pose is a miss, an infinite error). Without ``--models`` it takes the committed
models of the three methods. DIR receives:

* ``summary.json``: ``methods: {name: {median_error_m, median_error_deg, mean_error_m,
  recall: {'5.0m/10.0deg': ...}, frame_ms_median, frame_ms_p90, model_bytes, backend,
  trained_epochs, ...}}``, the scaling rows, the machine;
* ``report.md``: the table and what it says;
* ``frames_<method>.csv``: per-frame estimates, errors and times;
* PNG plots: ``map.png`` (estimates over the true trajectory, coloured by error), ``cdf.png``
  (error CDF), ``latency.png`` (time per frame), ``scaling.png`` (time and model bytes for
  1k, 10k, 100k reference images), ``levels.png`` (ImPosing's candidates level by level, the
  paper's Figure 2);
* ``result/``: a rosbag2 (``result.mcap`` inside) with the images, true and estimated poses
  (PoseStamped per method), the published covariances and the candidate markers, to replay in
  RViz or Foxglove (:mod:`.result_bag`).

Poses are ``T_map_camera`` of the camera body frame (x forward, z up), as the readers give them.
Everything is checked (data with poses, every model, the scene) before anything is written.
By default every method runs eagerly in fp32 (``--backend torch`` for ImPosing), so frame times
compare arithmetic alike; ``--live`` adds the demo's live figures (over DDS) as one more row.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
from pathlib import Path
import shutil
import tempfile
import time

import numpy as np
import torch

from imposing_ros.evaluation.cli import evaluate_localizer, Evaluation
from imposing_ros.evaluation.metrics import pose_errors, report_entry
from imposing_ros.geometry import MapNormalization
from imposing_ros.model.checkpoint import read_checkpoint
from imposing_ros.utils import atomic_write_text, cpu_description

LOGGER = logging.getLogger('imposing_ros.evaluation')
MODELS_DIR = Path(__file__).resolve().parents[2] / 'models'
DEFAULT_MODELS = ('helsinki_demo.pt', 'helsinki_retrieval.pt', 'helsinki_apr.pt')
SCALING_SIZES = (1_000, 10_000, 100_000)
# A model fits the data when at least this share of its true positions lies in the model's map
# (the normalisation box, widened by MAP_MARGIN of its extent).
MIN_INSIDE, MAP_MARGIN = 0.5, 0.1


def load_frames(spec: str, limit: int | None = None) -> list:
    """Every frame (or the first ``limit``) of the dataset ``spec``, checked for poses."""
    from imposing_ros.data.datasets import open_dataset

    try:
        frames = list(itertools.islice(open_dataset(spec), limit))
    except KeyError as exc:  # a reader without its pose topic
        raise ValueError(f'{spec}: no ground-truth poses ({exc})') from exc
    if not frames:
        raise ValueError(f'{spec}: the dataset has no frames (with ground truth)')
    poses = np.stack([f.pose for f in frames])
    if not np.isfinite(poses).all():
        raise ValueError(f'{spec}: {int((~np.isfinite(poses).all(1)).sum())} frames have no '
                         f'finite ground-truth pose')
    return frames


def check_scene(path: Path, positions: np.ndarray) -> str:
    """The scene of checkpoint ``path`` whose map holds the data; ValueError if none does."""
    data = read_checkpoint(path)
    best, share = None, -1.0
    for name, scene in data['scenes'].items():
        normalization = MapNormalization.from_dict(scene['normalization'])
        t = (positions - np.asarray(normalization.center)) / normalization.scale
        inside = float((np.abs(t) <= 0.5 + MAP_MARGIN).all(axis=1).mean())
        if inside > share:
            best, share = name, inside
    if share < MIN_INSIDE:
        raise ValueError(f'{path}: a model of another place: only {100 * share:.0f} % of the '
                         f"data's true positions lie in its map (scene {best!r}); benchmark "
                         f'models of the scene the data was recorded in')
    return best


def method_name(path: Path, method: str, taken: set) -> str:
    """``imposing``, ``retrieval``, ``apr``; the file's stem when two share a method."""
    name = method if method not in taken else f'{method}:{path.stem}'
    taken.add(name)
    return name


def training_facts(data: dict) -> dict:
    """Epochs trained and training seconds from a checkpoint's history (all stages)."""
    history = data.get('history') or []
    return {'trained_epochs': len(history),
            'train_seconds': float(sum(h.get('seconds', 0.0) for h in history)),
            'train_frames_per_s': float(np.median([h['frames_per_s'] for h in history]))
            if history else math.nan}


def run_method(path: Path, frames: list, backend: str, device: str, warmup: int = 3):
    """Build the localizer of ``path``, warm it up on the first frame, evaluate every frame."""
    from imposing_ros.baselines.localizers import open_localizer

    localizer = open_localizer(path, device=device, backend=backend, inductor='off')
    for _ in range(warmup):
        localizer.localize(frames[0].image)
    return localizer, evaluate_localizer(localizer, frames, desc=path.stem)


def nearest_reference_m(localizer, truth: np.ndarray) -> float | None:
    """Median distance (m) from the data's true positions to the nearest database image.

    Only retrieval has a database. Near 0 means the test poses repeat reference poses (e.g. a
    simulated traversal driving the very path of the training ones, imaged at the same
    places): retrieval's nearest neighbour is then exact and the comparison says nothing about
    positions between reference images.
    """
    database = getattr(localizer, 'db_poses', None)
    if database is None:
        return None
    positions = torch.as_tensor(truth[:, :3], dtype=torch.float32)
    nearest = torch.cat([torch.cdist(chunk, database[:, :3].float()).min(dim=1).values
                         for chunk in positions.split(1024)])
    return float(nearest.median())


def entry(evaluation: Evaluation, localizer, path: Path, data: dict) -> dict:
    """One row of ``summary.json``."""
    errors_t, errors_r = pose_errors(torch.from_numpy(evaluation.estimates),
                                     torch.from_numpy(evaluation.truth))
    row = report_entry(errors_t.numpy(), errors_r.numpy())
    ms = evaluation.frame_ms
    row.update(frame_ms_median=float(np.median(ms)), frame_ms_p90=float(np.percentile(ms, 90)),
               model=str(path), method=data.get('method', 'imposing'),
               model_bytes=path.stat().st_size, backend=localizer.backend_name,
               xy_in_95_ellipse=evaluation.summary.get('xy_in_95_ellipse', math.nan),
               **training_facts(data))
    nearest = nearest_reference_m(localizer, evaluation.truth)
    if nearest is not None:
        row['data_to_nearest_reference_m_median'] = nearest
    return row


def live_entry(path: Path) -> dict:
    """The demo's summary (``imposing-ros demo --json``) as a row of the same table."""
    demo = json.loads(Path(path).read_text())
    if 'median_error_m' not in demo:
        raise ValueError(f'{path}: not a demo summary with errors (imposing-ros demo --json)')
    latency = demo.get('latency_ms', {})
    kept = ('median_error_m', 'median_error_deg', 'missed', 'mean_error_m',
            'mean_error_m_localized', 'recall')
    return {key: demo[key] for key in kept if key in demo} | {
        'frames': demo.get('frames_with_truth'), 'method': 'imposing',
        'frame_ms_median': latency.get('p50', math.nan),
        'frame_ms_p90': latency.get('p90', math.nan),
        'frames_skipped': demo.get('localizer frames skipped'),
        'poses_per_s': demo.get('poses_per_s', math.nan),
        'frames_processed_per_s': demo.get('frames_processed_per_s', math.nan),
        'backend': demo.get('localizer backend'),
        'note': 'live over DDS (tracking + filter): latency image -> pose, end to end'}


def scaling_rows(paths: dict[str, Path], frames: list, device: str,
                 sizes: tuple[int, ...] = SCALING_SIZES, timed: int = 10) -> list[dict]:
    """Frame time and fp32 model bytes of each method for maps of ``sizes`` reference images.

    ImPosing: a model of the same configuration over a map built from N reference poses (its
    weights, so its bytes and time, do not depend on N). Retrieval: the real model with its
    database tiled to N descriptors (slightly jittered). APR has no reference set: the same
    model at every N. Times: median of ``timed`` frames after 3 warm-up frames.
    """
    from imposing_ros.baselines.localizers import open_localizer
    from imposing_ros.evaluation.bench import random_model
    from imposing_ros.localization.localizer import Localizer
    from imposing_ros.model.checkpoint import load_model, save_checkpoint

    image = frames[0].image
    rows = []
    for name, path in paths.items():
        method = read_checkpoint(path).get('method', 'imposing')
        for size in sizes:
            if method == 'imposing':
                model = random_model(load_model(path)[0].config, size)
                localizer = Localizer(model, device=device, backend='torch', inductor='off')
            else:
                localizer = open_localizer(path, device=device)
                model = localizer.model
                if method == 'retrieval':
                    _tile_database(localizer, size)
            with tempfile.TemporaryDirectory() as tmp:
                model_bytes = save_checkpoint(Path(tmp) / 'm.pt', model, 0).stat().st_size
            times = []
            for i in range(3 + timed):
                t0 = time.perf_counter()
                localizer.localize(image)
                if i >= 3:
                    times.append(1e3 * (time.perf_counter() - t0))
            rows.append({'method': name, 'reference_images': size,
                         'frame_ms_median': float(np.median(times)), 'model_bytes': model_bytes})
    return rows


def _tile_database(localizer, size: int) -> None:
    """Repeat the retrieval database to ``size`` entries (jittered descriptors)."""
    reps = -(-size // len(localizer.db_descriptors))
    generator = torch.Generator().manual_seed(0)
    codes = localizer.db_descriptors.repeat(reps, 1)[:size]
    codes = torch.nn.functional.normalize(
        codes + 0.01 * torch.randn(codes.shape, generator=generator), dim=-1)
    localizer.model.set_database(codes, localizer.db_poses.repeat(reps, 1)[:size])
    localizer.db_descriptors, localizer.db_poses = localizer.model.db_descriptors, \
        localizer.model.db_poses


def write_csv(path: Path, evaluation: Evaluation) -> None:
    """Per-frame estimates, errors and times of one method."""
    errors_t, errors_r = pose_errors(torch.from_numpy(evaluation.estimates),
                                     torch.from_numpy(evaluation.truth))
    lines = ['timestamp,image,x,y,z,qx,qy,qz,qw,score,error_m,error_deg,frame_ms']
    for i, estimate in enumerate(evaluation.estimates):
        lines.append(f'{evaluation.stamps_ns[i]},{evaluation.sources[i]},'
                     + ','.join(f'{v:.6f}' for v in estimate)
                     + f',{evaluation.scores[i]:.6f},{float(errors_t[i]):.4f},'
                       f'{float(errors_r[i]):.4f},{evaluation.frame_ms[i]:.3f}')
    atomic_write_text(path, '\n'.join(lines) + '\n')


def report(summary: dict) -> str:
    """``report.md``: the table and what it says, in words a user can act on."""
    methods = summary['methods']
    lines = [f"# Benchmark on {summary['data']} ({summary['frames']} frames)", '',
             f"Machine: {summary['machine']}. Offline rows: every frame localized on its own "
             f"(global search), {summary['arithmetic']}.", '',
             '| method | median error | within 5 m / 10 deg | mean error | frame time median '
             '(p90) | model | trained |', '| --- | --- | --- | --- | --- | --- | --- |']
    for name, m in methods.items():
        recall = m.get('recall', {}).get('5.0m/10.0deg', math.nan)
        size = f"{m['model_bytes'] / 1e6:.0f} MB" if 'model_bytes' in m else '-'
        trained = (f"{m['trained_epochs']} epochs, {m['train_seconds'] / 60:.0f} min"
                   if m.get('trained_epochs') else '-')
        lines.append(f"| {name} | {m['median_error_m']:.2f} m / {m['median_error_deg']:.2f} deg "
                     f"| {100 * recall:.1f} % | {m.get('mean_error_m', math.nan):.1f} m "
                     f"| {m['frame_ms_median']:.1f} ({m['frame_ms_p90']:.1f}) ms | {size} "
                     f"| {trained} |")
    lines.append('')
    offline = {k: v for k, v in methods.items() if 'note' not in v}
    if 'imposing' in offline and len(offline) > 1:
        others = {k: v['median_error_m'] for k, v in offline.items() if k != 'imposing'}
        best = min(others, key=others.get)
        ratio = offline['imposing']['median_error_m'] / others[best]
        lines.append(f"ImPosing's median translation error is {ratio:.2f}x that of the best "
                     f"baseline ({best}, {others[best]:.2f} m); the paper reports 0.24x against "
                     f"CoordiNet on Daoxiang.")
    for name, row in offline.items():
        nearest = row.get('data_to_nearest_reference_m_median')
        if nearest is not None and nearest < 0.5:
            lines.append(f'Caution: the true positions of this data lie a median {nearest:.3f} m '
                         f"from the nearest of {name}'s reference images: the test poses repeat "
                         f'the reference poses, so its nearest neighbour is close to exact and '
                         f'this comparison does not measure positions between reference images.')
    epochs = {k: v.get('trained_epochs') for k, v in offline.items()}
    if len(set(epochs.values())) > 1:
        listed = ', '.join(f'{k} {v}' for k, v in epochs.items())
        lines.append(f'Training budgets differ (epochs: {listed}): the comparison is not '
                     f'at equal budget; each row says what its model had.')
    for name, row in methods.items():
        if 'note' in row:
            lines.append(f'{name}: {row["note"]}.')
    if summary.get('scaling'):
        lines += ['', '| method | reference images | frame time | model bytes (fp32) |',
                  '| --- | --- | --- | --- |']
        lines += [f"| {r['method']} | {r['reference_images']:,} | {r['frame_ms_median']:.1f} ms "
                  f"| {r['model_bytes'] / 1e6:.1f} MB |" for r in summary['scaling']]
        lines.append('')
        lines.append('ImPosing keeps its map in the pose encoder: its time and bytes do not '
                     'grow with the reference set; retrieval stores and searches one '
                     'descriptor per reference image.')
    lines += ['', f"Command: `{summary['command']}`", '']
    return '\n'.join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``imposing-ros benchmark``."""
    parser.add_argument('--data', required=True, help='dataset with poses (bag or folder)')
    parser.add_argument('--models', nargs='+',
                        help=f"checkpoints of any method (default: models/ "
                             f"{', '.join(DEFAULT_MODELS)})")
    parser.add_argument('--out', required=True, help='output folder (created; must be new '
                                                     'or empty)')
    parser.add_argument('--frames', type=int, help='only the first N frames')
    parser.add_argument('--backend', default='torch',
                        help="ImPosing's inference backend (default torch: fp32 eager, as the "
                             'baselines run)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--live', metavar='SUMMARY_JSON',
                        help='add the live figures of `imposing-ros demo --json` as a row')
    parser.add_argument('--no-scaling', action='store_true',
                        help='skip the 1k / 10k / 100k reference-image timing')
    parser.add_argument('--mcap-frames', type=int, default=0,
                        help='frames written to the result bag (default 0: all)')


def run(args: argparse.Namespace) -> int:
    """Entry of ``imposing-ros benchmark``."""
    import sys

    from imposing_ros.evaluation import plots as figures

    paths = [Path(p) for p in (args.models or [MODELS_DIR / m for m in DEFAULT_MODELS])]
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f'{out}: exists and is not an empty folder')
    if args.frames is not None and args.frames < 1:
        raise ValueError(f'--frames must be >= 1, got {args.frames}')
    # Everything is checked before anything is written.
    frames = load_frames(args.data, args.frames)
    positions = np.stack([f.pose[:3] for f in frames])
    checked, taken = {}, set()
    for path in paths:
        data = read_checkpoint(path)  # CheckpointError (a ValueError) names the file
        check_scene(path, positions)
        checked[method_name(path, data.get('method', 'imposing'), taken)] = (path, data)
    live = live_entry(Path(args.live)) if args.live else None

    runs, methods = {}, {}
    for name, (path, data) in checked.items():
        localizer, evaluation = run_method(path, frames, args.backend, args.device)
        runs[name] = (localizer, evaluation)
        methods[name] = entry(evaluation, localizer, path, data)
        LOGGER.info('%s: median %.2f m, %.1f %% within 5 m / 10 deg, %.1f ms a frame', name,
                    methods[name]['median_error_m'],
                    100 * methods[name]['recall']['5.0m/10.0deg'],
                    methods[name]['frame_ms_median'])
    if live is not None:
        methods['imposing (live)'] = live
    scaling = [] if args.no_scaling else scaling_rows(
        {n: p for n, (p, _) in checked.items()}, frames, args.device)
    summary = {'data': str(args.data), 'frames': len(frames), 'machine': cpu_description(),
               'arithmetic': f'ImPosing backend {args.backend}, baselines eager fp32',
               'command': 'imposing-ros ' + ' '.join(sys.argv[1:]), 'methods': methods,
               'scaling': scaling}

    # Written into a temporary folder, moved into place at the end: no half-written DIR.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f'.{out.name}.'))
    try:
        for name, (_, evaluation) in runs.items():
            write_csv(tmp / f"frames_{name.replace(':', '_')}.csv", evaluation)
        evaluations = {n: e for n, (_, e) in runs.items()}
        figures.map_figure(evaluations, tmp / 'map.png')
        figures.cdf_figure(evaluations, tmp / 'cdf.png')
        figures.latency_figure(evaluations, tmp / 'latency.png')
        if scaling:
            figures.scaling_figure(scaling, tmp / 'scaling.png')
        if 'imposing' in runs:
            localizer, evaluation = runs['imposing']
            picks = np.linspace(0, len(frames) - 1, 3).round().astype(int)
            figures.levels_figure([localizer.search_levels(frames[i].image) for i in picks],
                                  [frames[i].pose for i in picks], positions,
                                  tmp / 'levels.png')
        from imposing_ros.evaluation.result_bag import write_result_bag

        count = args.mcap_frames or len(frames)
        write_result_bag(tmp / 'result', frames[:count],
                         {n: e for n, e in evaluations.items()})
        atomic_write_text(tmp / 'summary.json', json.dumps(summary, indent=2))
        atomic_write_text(tmp / 'report.md', report(summary))
        tmp.chmod(0o755)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    print(report(summary))
    print(f'written: {out}')
    return 0
