"""Several scenes in one model: the scene choice (ROS-free), the priors, and the node over DDS."""

import time

import numpy as np
import pytest

from imposing_ros.localization.localizer import LocalizerConfig
from imposing_ros.localization.priors import Prior, PriorBook
from imposing_ros.localization.scenes import SceneLocalizer, SceneSwitch
from imposing_ros.localization.search import SearchConfig

SMALL = LocalizerConfig(search=SearchConfig(num_candidates=128, levels=2, top_k=8,
                                            num_average=16))


def test_scene_switch_needs_consecutive_wins():
    switch = SceneSwitch(switch_frames=3)
    assert switch.vote('a') and switch.current == 'a'  # the first vote decides at once
    assert not switch.vote('b') and not switch.vote('b')
    assert not switch.vote('a')  # an interruption starts the count again
    assert [switch.vote('b') for _ in range(3)] == [False, False, True]
    assert switch.current == 'b' and switch.pending == (None, 0)
    assert not switch.vote('c') and switch.pending == ('c', 1)
    switch.set('a')
    assert switch.current == 'a' and switch.pending == (None, 0)
    with pytest.raises(ValueError, match='switch_frames'):
        SceneSwitch(0)


def test_prior_book_order_of_seeds():
    book = PriorBook()
    eye, cov = np.eye(4), np.eye(6)
    assert book.take(0, True, 1.0) is None
    book.set_filter_prior(1_000_000_000, Prior(eye, cov, 'a'))
    assert book.take(1_500_000_000, True, 1.0).scene == 'a'  # recent enough
    assert book.take(2_500_000_000, True, 1.0) is None  # 1.5 s away from the image
    assert book.take(1_500_000_000, False, 1.0) is None  # tracking off
    book.set_initial_pose(Prior(2 * eye, cov, 'b'))
    assert book.take(9_000_000_000, True, 1.0).scene == 'b'  # wins, once
    assert book.take(1_000_000_000, True, 1.0).scene == 'a'
    book.request_global()
    assert book.take(1_000_000_000, True, 1.0) is None
    book.forget_filter_prior()
    assert book.take(1_000_000_000, True, 1.0) is None


@pytest.fixture(scope='module')
def two_scenes(tmp_path_factory):
    from node_harness import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp('model') / 'two.pt',
                                 scenes=('east', 'west'))


def test_scene_localizer_auto_votes_with_hysteresis(two_scenes):
    path, road = two_scenes
    image = road.image(30.0, True)
    auto = SceneLocalizer.from_checkpoint(path, 'auto', switch_frames=2, config=SMALL,
                                          backend='torch', inductor='off')
    assert auto.scenes == ['east', 'west'] and auto.scene is None
    assert auto.backend_names == {'east': 'torch', 'west': 'torch'}
    # No scene scores the image over min_score (none reaches 2): no vote, no scene yet.
    unrecognised = auto.localize(image, min_score=2.0)
    assert set(unrecognised.scores) == {'east', 'west'} and not unrecognised.switched
    assert auto.scene is None
    first = auto.localize(image)
    assert first.switched and set(first.scores) == {'east', 'west'}
    winner = max(first.scores, key=first.scores.get)
    assert first.scene == winner and first.result.score == first.scores[winner]
    other = ({'east', 'west'} - {winner}).pop()
    auto.set_scene(other)
    # The same image votes for the winner again: the scene changes on the second vote only.
    second = auto.localize(image)
    assert (second.scene, second.switched) == (other, False)
    assert second.result.score == pytest.approx(second.scores[other])
    # A challenger with a vote keeps frames global: a prior in the old map does not stop it.
    third = auto.localize(image, second.result.pose, np.eye(6))
    assert set(third.scores) == {'east', 'west'} and third.result.mode == 'global'
    assert (third.scene, third.switched) == (winner, True)
    # A prior is a pose of the scene in use: only that scene is searched.
    tracked = auto.localize(image, third.result.pose, np.eye(6))
    assert tracked.scores.keys() == {winner} and tracked.result.mode == 'tracking'
    with pytest.raises(ValueError, match=r"unknown scene 'north'.*\['east', 'west'\]"):
        auto.set_scene('north')


def test_scene_localizer_fixed_scene_and_refusals(two_scenes):
    path, road = two_scenes
    west = SceneLocalizer.from_checkpoint(path, 'west', config=SMALL, backend='torch',
                                          inductor='off')
    assert west.scenes == ['west'] and west.scene == 'west'
    found = west.localize(road.image(30.0, True))
    assert found.scene == 'west' and found.scores.keys() == {'west'}
    with pytest.raises(ValueError, match=r"unknown scene 'north'.*\['east', 'west'\]"):
        SceneLocalizer.from_checkpoint(path, 'north', config=SMALL, backend='torch')
    with pytest.raises(ValueError, match=r"scenes \['east', 'west'\]: set scene"):
        SceneLocalizer.from_checkpoint(path, '', config=SMALL, backend='torch')


def test_evaluate_scene_auto_counts_votes_and_wrong_scenes_as_misses(two_scenes):
    from imposing_ros.data.synthetic import SyntheticRoad
    from imposing_ros.evaluation.cli import evaluate

    path, _ = two_scenes
    frames = list(SyntheticRoad(length=100.0).frames(12, seed=4))
    result = evaluate(path, frames, 'auto', SMALL, backend='torch', inductor='off',
                      expect_scene='east')
    votes, summary = result.summary['scene_votes'], result.summary
    assert sum(votes.values()) == len(frames) and set(votes) == {'east', 'west', 'none'}
    voted = votes['east'] + votes['west']
    assert summary['scene_accuracy'] == pytest.approx(votes['east'] / voted)
    assert summary['failed'] >= votes['west']  # a frame won by west is a miss
    # At a min_score no frame reaches, no frame votes and every frame is a miss.
    strict = evaluate(path, frames, 'auto', SMALL, backend='torch', inductor='off',
                      min_score=2.0, expect_scene='east').summary
    assert strict['scene_votes']['none'] == len(frames) and strict['failed'] == len(frames)
    with pytest.raises(ValueError, match='--expect-scene'):
        evaluate(path, frames, 'auto', SMALL, backend='torch', inductor='off')
    with pytest.raises(ValueError, match="unknown scene 'north'"):
        evaluate(path, frames, 'auto', SMALL, backend='torch', inductor='off',
                 expect_scene='north')


def test_map_frame_patterns():
    pytest.importorskip('rclpy')
    from imposing_ros.nodes.conversions import check_map_frame, frame_scene, scene_frame

    assert scene_frame('map_{scene}', 'east') == 'map_east'
    assert frame_scene('map_{scene}', '/map_east') == 'east'
    assert frame_scene('{scene}/map', 'west/map') == 'west'
    assert frame_scene('map_{scene}', 'map_') is None
    assert frame_scene('map_{scene}', 'odom') is None
    assert frame_scene('map', 'map') == '' and frame_scene('map', 'map_east') is None
    assert check_map_frame('map_{scene}') is None and check_map_frame('map') is None
    assert 'placeholder' in check_map_frame('map_{scene}_{x}')
    assert check_map_frame('') == 'must not be empty'


# --- the node over DDS ------------------------------------------------------------------------

def _params(folder, model, **values):
    path = folder / 'params.yaml'
    extra = ''.join(f'    {k}: {v}\n' for k, v in values.items())
    path.write_text(f"""/**/imposing_localizer:
  ros__parameters:
    model_path: {model}
    search.num_candidates: 128
    search.levels: 2
    search.top_k: 8
    search.num_average: 16
    tracking.levels: 2
    min_score: 0.0
    backend: torch
    inductor: 'off'
{extra}""")
    return path


@pytest.mark.ros
def test_node_scene_auto_frames_topic_and_refusals(two_scenes, tmp_path):
    pytest.importorskip('rclpy')
    from lifecycle_msgs.msg import Transition
    from node_harness import Harness, localize, NodeProcess

    path, road = two_scenes
    process = None
    harness = Harness()
    try:
        for name, scene, reason in [
                # several scenes and a map_frame without {scene}
                ('bad', 'auto', 'put {scene} in map_frame'),
                ('unknown', 'north', "unknown scene 'north': the model has ['east', 'west']")]:
            refused = NodeProcess(_params(tmp_path, path, scene=scene), tmp_path / f'{name}.log')
            try:  # configure fails, saying why; the node stays up
                assert not harness.transition(Transition.TRANSITION_CONFIGURE)
                refused.wait_log(reason)
            finally:
                refused.stop()

        process = NodeProcess(_params(tmp_path, path, scene='auto', scene_switch_frames=2,
                                      map_frame="'map_{scene}'"), tmp_path / 'node.log')
        assert harness.transition(Transition.TRANSITION_CONFIGURE), process.text()[-2000:]
        assert harness.transition(Transition.TRANSITION_ACTIVATE)
        deadline = time.monotonic() + 20
        while harness.image_pub.get_subscription_count() == 0:
            assert time.monotonic() < deadline, 'localizer never subscribed to images'
            time.sleep(0.05)
        _, pose = localize(harness, road)
        harness.wait_for(lambda: harness.scenes, what='~/scene')
        scene = harness.scenes[-1][1].data
        assert scene in ('east', 'west') and pose.header.frame_id == f'map_{scene}'
        harness.wait_for(lambda: harness.diag_values().get('scene') == scene, what='diagnostics')
        backends = harness.diag_values()['scene backends']
        assert backends.startswith('east ') and ', west ' in backends
        other = 'west' if scene == 'east' else 'east'

        # An initial pose in another scene's map selects that scene for the next frame.
        harness.initial_pub.publish(harness.pose_msg((30.0, -2.0, 1.5), 0.0,
                                                     frame=f'map_{other}'))
        process.wait_log(f"in 'map_{other}'")
        _, pose = localize(harness, road)
        assert pose.header.frame_id == f'map_{other}'
        harness.wait_for(lambda: harness.scenes[-1][1].data == other, what='scene switch')
        # A frame of no scene is refused with the frames it accepts.
        harness.initial_pub.publish(harness.pose_msg((30.0, -2.0, 1.5), 0.0, frame='map'))
        process.wait_log("initial pose refused: frame_id is 'map', expected one of "
                         "['map_east', 'map_west']")
        # Global frames of the same image vote for the first scene again: back after 2 votes.
        _, pose = localize(harness, road)
        assert pose.header.frame_id == f'map_{other}'
        _, pose = localize(harness, road)
        assert pose.header.frame_id == f'map_{scene}'
    finally:
        harness.close()
        if process is not None:
            process.stop()
