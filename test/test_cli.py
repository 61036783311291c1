"""The `imposing-ros` command end to end on the plain folder layout: train, evaluate, localize."""

import json
import shutil

import pytest

from imposing_ros import cli
from imposing_ros.data.plain import PlainFolder, write_plain_folder
from imposing_ros.data.synthetic import SyntheticRoad
from imposing_ros.training.cli import DEFAULT_SCENE, parse_scene_spec

CONFIG = """
model:   {backbone: resnet18, dim: 32, image_size: [32, 64], pose_layers: 2, pose_width: 64}
train:   {epochs: 1, batch_size: 8, lr: 0.001, num_candidates: 128, levels: 3, top_k: 16,
          val_every: 1, val_frames: 8, augment: true}
search:  {num_candidates: 256, levels: 3, top_k: 16, num_average: 32}
"""


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp('plain')
    road = SyntheticRoad(length=100.0, size=(32, 64))
    train = write_plain_folder(root / 'train', road.frames(24, seed=1))
    test = write_plain_folder(root / 'test', road.frames(6, seed=2))
    (root / 'cfg.yaml').write_text(CONFIG)
    return root, train, test


def test_train_evaluate_localize(folders, capsys):
    root, train, test = folders
    out = root / 'run'
    assert cli.main(['train', '--train', str(train), '--val', str(test), '--out', str(out),
                     '--config', str(root / 'cfg.yaml')]) == 0
    assert (out / 'last.pt').is_file() and (out / 'best.pt').is_file()
    # best.pt is for use: no optimizer state (Adam doubles the size of last.pt, kept to resume)
    assert (out / 'best.pt').stat().st_size < 0.5 * (out / 'last.pt').stat().st_size
    assert cli.main(['evaluate', '--model', str(out / 'last.pt'), '--data', str(test),
                     '--candidates', '256', '--levels', '3', '--json', str(root / 'e.json'),
                     '--csv', str(root / 'e.csv'), '--plot', str(root / 'e.png')]) == 0
    assert (root / 'e.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    summary = json.loads((root / 'e.json').read_text())
    assert summary['frames'] == 6 and summary['failed'] == 0
    assert {'median_m', 'recall_0.5m_2deg', 'recall_5m_10deg', 'low_score', 'xy_in_95_ellipse',
            'nees'} <= set(summary)
    assert summary['calibrated_frames'] == 6 - summary['failed']
    csv = (root / 'e.csv').read_text().splitlines()
    assert len(csv) == 7 and csv[0].startswith('timestamp,image,x,y,z,qx,qy,qz,qw,score,')
    assert 'images/' in csv[1].split(',')[1]
    assert 'recall' in capsys.readouterr().out
    assert cli.main(['localize', '--model', str(out / 'last.pt'), '--images',
                     str(test / 'images'), '--out', str(root / 'poses.csv')]) == 0
    lines = (root / 'poses.csv').read_text().splitlines()
    assert lines[0] == 'timestamp,image,x,y,z,qx,qy,qz,qw,score,status' and len(lines) == 7
    assert all(line.rsplit(',', 1)[1] in ('ok', 'low_score') for line in lines[1:])


def test_localize_keeps_every_result_past_a_bad_file(folders, tmp_path):
    root, _, test = folders
    images = tmp_path / 'images'
    shutil.copytree(test / 'images', images)
    (images / 'broken.png').write_text('not an image')
    out = tmp_path / 'poses.csv'
    assert cli.main(['localize', '--model', str(root / 'run' / 'last.pt'), '--images',
                     str(images), '--out', str(out), '--min-score', '1.01']) == 0
    rows = [line.split(',') for line in out.read_text().splitlines()[1:]]
    assert len(rows) == 7
    status = {row[1]: row[-1] for row in rows}
    assert status.pop('broken.png') == 'error'
    # No score reaches 1.01: every pose is written and flagged.
    assert set(status.values()) == {'low_score'}


def test_cli_errors_are_clear_and_write_nothing(folders, tmp_path, capsys):
    root, train, test = folders
    bad = tmp_path / 'bad.yaml'
    bad.write_text('train: {epochs: 1, learning_rate: 0.1}\n')
    assert cli.main(['train', '--train', str(train), '--out', str(tmp_path / 'o'),
                     '--config', str(bad)]) == 2
    assert 'learning_rate' in capsys.readouterr().err
    assert cli.main(['evaluate', '--model', str(tmp_path / 'none.pt'), '--data',
                     str(test)]) == 2
    assert 'none.pt: file not found' in capsys.readouterr().err
    out = tmp_path / 'poses.csv'
    assert cli.main(['localize', '--model', str(root / 'run' / 'last.pt'), '--images',
                     str(tmp_path), '--out', str(out)]) == 2
    assert 'no image files' in capsys.readouterr().err and not out.exists()


def test_plain_folder_errors(tmp_path):
    (tmp_path / 'poses.csv').write_text('timestamp,image,x,y\n1,a.png,0,0\n')
    with pytest.raises(ValueError, match='missing column'):
        PlainFolder(tmp_path)
    (tmp_path / 'poses.csv').write_text('timestamp,image,x,y,z,qx,qy,qz,qw\n'
                                        '1,a.png,0,0,nan,0,0,0,1\n')
    with pytest.raises(ValueError, match='poses.csv:2'):
        PlainFolder(tmp_path)
    (tmp_path / 'poses.csv').write_text('timestamp,image,x,y,z,qx,qy,qz,qw\n')
    with pytest.raises(ValueError, match='no poses'):
        PlainFolder(tmp_path)
    with pytest.raises(FileNotFoundError):
        PlainFolder(tmp_path / 'missing')


@pytest.mark.slow
def test_export_int8_then_evaluate_with_its_programs(folders, tmp_path, capsys):
    root, train, test = folders
    model = str(root / 'run' / 'last.pt')
    cache = tmp_path / 'int8'
    # Calibration images are required, and a refused export writes nothing.
    assert cli.main(['export', '--model', model, '--format', 'int8', '--out', str(cache)]) == 2
    assert '--calibration' in capsys.readouterr().err and not cache.exists()
    assert cli.main(['export', '--model', model, '--format', 'int8', '--calibration', str(train),
                     '--calibration-frames', '8', '--candidates', '256',
                     '--out', str(cache)]) == 0
    assert len(list(cache.glob('*.pt2'))) == 2
    info = json.loads(next(cache.glob('*.json')).read_text())
    assert info['calibration_images'] == 8 and info['calibration'] == str(train)
    summaries = {}
    for backend in ('torch-int8', 'torch'):
        out = tmp_path / f'{backend}.json'
        assert cli.main(['evaluate', '--model', model, '--data', str(test), '--candidates', '256',
                         '--levels', '3', '--backend', backend, '--engine-cache', str(cache),
                         '--json', str(out)]) == 0
        summaries[backend] = json.loads(out.read_text())
    assert all(s['frames'] == 6 and s['failed'] == 0 for s in summaries.values())
    # Programs for another candidate count are not there: a clear error, no result file.
    out = tmp_path / 'n512.json'
    assert cli.main(['evaluate', '--model', model, '--data', str(test), '--candidates', '512',
                     '--backend', 'torch-int8', '--engine-cache', str(cache),
                     '--json', str(out)]) == 2
    assert 'no int8 programs' in capsys.readouterr().err and not out.exists()


def test_evaluate_search_overrides(folders, tmp_path, capsys):
    root, _, test = folders
    model = str(root / 'run' / 'last.pt')
    base = ['evaluate', '--model', model, '--data', str(test), '--candidates', '256',
            '--levels', '3', '--backend', 'torch']
    out = tmp_path / 'refined.json'
    assert cli.main(base + ['--set', 'search.refine_share=0.5', '--json', str(out)]) == 0
    assert json.loads(out.read_text())['frames'] == 6
    # Only search settings, checked by SearchConfig: a clear error and no result file.
    for bad, said in (('train.lr=1', 'search.KEY=VALUE only'), ('search.refine_share=2',
                      'refine_share'), ('search.nope=1', 'unknown SearchConfig key')):
        out = tmp_path / 'bad.json'
        assert cli.main(base + ['--set', bad, '--json', str(out)]) == 2
        assert said in capsys.readouterr().err and not out.exists()


def test_scene_specs_keep_reader_options():
    assert parse_scene_spec('helsinki=data/t1') == ('helsinki', 'data/t1')
    assert parse_scene_spec('t1.mcap?image=/cam') == (DEFAULT_SCENE, 't1.mcap?image=/cam')
    assert parse_scene_spec('city=t1.mcap?image=/cam') == ('city', 't1.mcap?image=/cam')
    spec = '4seasons:/d:office:train'
    assert parse_scene_spec(spec) == (DEFAULT_SCENE, spec)


def test_odd_aspect_ratio_is_said_once(folders, caplog):
    import numpy as np

    from imposing_ros.localization.localizer import Localizer

    root, _, _ = folders
    localizer = Localizer.from_checkpoint(root / 'run' / 'last.pt')
    wide = np.zeros((376, 1241, 3), np.uint8)  # KITTI-like, on a 32 x 64 model
    with caplog.at_level('WARNING', logger='imposing_ros.localization'):
        localizer.localize(wide)
        localizer.localize(wide)
    warnings = [r for r in caplog.records if 'stretched' in r.getMessage()]
    assert len(warnings) == 1 and '1241x376' in warnings[0].getMessage()


def test_calibrate_fits_the_published_covariance(folders, tmp_path):
    import numpy as np

    from imposing_ros.data.plain import PlainFolder
    from imposing_ros.evaluation.metrics import CHI2_2DOF_95
    from imposing_ros.localization.calibration import fit_scale
    from imposing_ros.localization.localizer import Localizer
    from imposing_ros.model.checkpoint import read_checkpoint
    from imposing_ros.runtime.int8 import CHECKPOINT_KEY

    # Squared distances at factor 1: the fitted factor puts 95 % of them inside the ellipse.
    d2 = np.linspace(0.0, 100.0, 101)
    k = fit_scale(d2)
    assert np.mean(d2 / k <= CHI2_2DOF_95) == pytest.approx(0.95, abs=0.011)
    root, train, test = folders
    out = tmp_path / 'calibrated.pt'
    assert cli.main(['calibrate', '--model', str(root / 'run' / 'last.pt'), '--data', str(train),
                     '--frames', '12', '--out', str(out)]) == 0
    scale = read_checkpoint(out)['covariance_scale']
    assert scale > 0
    image = next(iter(PlainFolder(train))).image
    # fp32 both: the calibrated checkpoint also carries int8 images, which auto would time.
    raw = Localizer.from_checkpoint(root / 'run' / 'last.pt', backend='torch').localize(image)
    fitted = Localizer.from_checkpoint(out, backend='torch').localize(image)
    assert np.allclose(fitted.pose, raw.pose)
    assert np.allclose(fitted.covariance, scale * raw.covariance)
    # Images only, from the 6 test frames (too few for a fit, which would refuse them): the
    # scene's int8 images replaced by those frames', the fitted scale kept.
    again = tmp_path / 'images_only.pt'
    assert cli.main(['calibrate', '--model', str(out), '--data', str(test), '--images-only',
                     '--out', str(again)]) == 0
    stored, redone = read_checkpoint(out), read_checkpoint(again)
    assert redone['covariance_scale'] == scale
    assert redone[CHECKPOINT_KEY].keys() == stored[CHECKPOINT_KEY].keys()
    (scene,) = stored[CHECKPOINT_KEY]
    assert len(redone[CHECKPOINT_KEY][scene]) == 6 != len(stored[CHECKPOINT_KEY][scene])
    with pytest.raises(ValueError, match='at least 10'):
        fit_scale(np.ones(5))


def test_localize_takes_stamps_from_file_names_only():
    from pathlib import Path

    from imposing_ros.localization.cli import stamp_of_name

    assert stamp_of_name(Path('1700000000123456789.png')) == '1700000000123456789'
    assert stamp_of_name(Path('1700000000.25.jpg')) == '1700000000250000000'
    assert stamp_of_name(Path('1700000000.png')) == '1700000000000000000'
    # frame numbers and names are not stamps: the column stays empty, no index is invented
    assert stamp_of_name(Path('000042.png')) == ''
    assert stamp_of_name(Path('frame_7.png')) == ''
