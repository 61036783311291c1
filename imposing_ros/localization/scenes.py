"""Localization in a model with several scenes (paper 4.2): which map the camera is in.

:class:`SceneLocalizer` holds one :class:`~imposing_ros.localization.localizer.Localizer` per
scene of a checkpoint. With a fixed scene it is that scene's localizer. With ``auto`` a global
search (no prior: first frame, lost tracking, relocalization) runs in every scene and the best
score votes for its scene; :class:`SceneSwitch` changes the scene in use only after
``switch_frames`` consecutive votes for the same other scene, so one ambiguous frame does not
move the robot to another map, and a search no scene scores well (under the node's
``min_score``) casts no vote. A search around a prior runs in the scene in use only (the prior
is a pose of that map), except while another scene has won votes: then every frame is global
until the switch happens or the scene in use wins again. No ROS here.
"""

from __future__ import annotations

from dataclasses import dataclass
import logging

import numpy as np

from imposing_ros.localization.localizer import LocalizationResult, Localizer
from imposing_ros.runtime.int8 import stored_calibration_images

LOGGER = logging.getLogger('imposing_ros.localization')

AUTO = 'auto'
# Consecutive global searches another scene must win before the scene in use changes.
DEFAULT_SWITCH_FRAMES = 3


class SceneSwitch:
    """Hysteresis on the winning scene of each global search.

    The first vote sets the scene; after that another scene must win ``switch_frames``
    consecutive votes. :meth:`set` (an operator's choice, an initial pose in a scene's frame)
    takes effect at once.
    """

    def __init__(self, switch_frames: int = DEFAULT_SWITCH_FRAMES):
        if switch_frames < 1:
            raise ValueError(f'switch_frames must be >= 1, got {switch_frames}')
        self.switch_frames = switch_frames
        self.current: str | None = None
        self._challenger: str | None = None
        self._votes = 0

    def vote(self, winner: str) -> bool:
        """Count one global search won by ``winner``; True when the scene in use changed."""
        if self.current is None:
            self.set(winner)
            return True
        if winner == self.current:
            self._challenger, self._votes = None, 0
            return False
        self._votes = self._votes + 1 if winner == self._challenger else 1
        self._challenger = winner
        if self._votes >= self.switch_frames:
            self.set(winner)
            return True
        return False

    def set(self, scene: str) -> None:
        """Use ``scene`` from now on (no hysteresis)."""
        self.current = scene
        self._challenger, self._votes = None, 0

    @property
    def pending(self) -> tuple[str | None, int]:
        """(scene challenging the one in use, its consecutive wins)."""
        return self._challenger, self._votes


@dataclass(frozen=True)
class SceneResult:
    """One frame localized in a multi-scene model.

    ``result`` is the localization in ``scene`` (the scene in use after this frame's vote);
    ``scores`` the best score of every scene searched this frame; ``switched`` whether the
    scene in use changed with this frame (a prior of the former scene is then meaningless).
    """

    result: LocalizationResult
    scene: str
    scores: dict
    switched: bool


class SceneLocalizer:
    """One localizer per scene of a model, and the choice of the scene in use (module doc)."""

    def __init__(self, localizers: dict[str, Localizer], scene: str = AUTO,
                 switch_frames: int = DEFAULT_SWITCH_FRAMES):
        if not localizers:
            raise ValueError('SceneLocalizer needs at least one scene')
        self.localizers = dict(localizers)
        self.switch = SceneSwitch(switch_frames)
        self.auto = scene == AUTO
        if not self.auto:
            self.switch.set(check_scene(scene, self.scenes))

    @classmethod
    def from_checkpoint(cls, path, scene: str = AUTO, switch_frames: int = DEFAULT_SWITCH_FRAMES,
                        **localizer_args) -> SceneLocalizer:
        """Load ``path``; ``scene``: a scene of the model, ``''`` (its only scene) or ``auto``.

        ``localizer_args`` go to :meth:`Localizer.from_checkpoint` for each scene used.
        """
        from imposing_ros.model.checkpoint import load_model

        model, data = load_model(path, 'cpu')
        scenes = model.scenes
        if scene == '':
            if len(scenes) > 1:
                raise ValueError(f'the model has scenes {scenes}: set scene to one of them or '
                                 f'{AUTO!r}')
            scene = scenes[0]
        wanted = scenes if scene == AUTO else [check_scene(scene, scenes)]
        scale = float(data.get('covariance_scale', 1.0))
        localizers = {}
        for name in wanted:
            localizers[name] = Localizer(model, name, covariance_scale=scale,
                                         calibration_images=stored_calibration_images(data, name),
                                         **localizer_args)
        return cls(localizers, scene, switch_frames)

    @property
    def scenes(self) -> list[str]:
        """Scenes this localizer can use."""
        return list(self.localizers)

    @property
    def scene(self) -> str | None:
        """The scene in use (``None`` in ``auto`` before the first frame)."""
        return self.switch.current

    def _any(self) -> Localizer:
        return self.localizers[self.scene or self.scenes[0]]

    @property
    def image_size(self) -> tuple[int, int]:
        """Model input (height, width)."""
        return self._any().image_size

    @property
    def backend_name(self) -> str:
        """The concrete backend of the scene in use."""
        return self._any().backend_name

    @property
    def backend(self):
        """The backend of the scene in use."""
        return self._any().backend

    @property
    def backend_names(self) -> dict[str, str]:
        """The concrete backend of every scene (int8 needs each scene's own calibration images)."""
        return {name: loc.backend_name for name, loc in self.localizers.items()}

    def set_scene(self, scene: str) -> None:
        """Use ``scene`` from the next frame on (an operator's choice); ValueError if unknown."""
        self.switch.set(check_scene(scene, self.scenes))

    def localize(self, image: np.ndarray, prior_pose: np.ndarray | None = None,
                 prior_covariance: np.ndarray | None = None,
                 min_score: float = 0.0) -> SceneResult:
        """Localize ``image``; a prior is a camera pose in the scene in use (see class doc).

        A global search whose best score is under ``min_score`` (the node's: a pose it would
        not publish) casts no vote: no scene recognised the image.
        """
        # While another scene challenges the one in use, frames stay global until the vote is
        # decided: a good score around a prior in the old map must not stop the count.
        challenged = self.switch.pending[1] > 0
        if (prior_pose is not None and not challenged) or not self.auto or \
                len(self.localizers) == 1:
            scene = self.scene or self.scenes[0]
            result = self.localizers[scene].localize(image, prior_pose, prior_covariance)
            switched = self.switch.current is None
            self.switch.set(scene)
            return SceneResult(result, scene, {scene: result.score}, switched)
        results = {name: loc.localize(image) for name, loc in self.localizers.items()}
        scores = {name: r.score for name, r in results.items()}
        winner = vote(scores, min_score)
        if winner is None:
            scene = self.scene or max(scores, key=scores.get)
            return SceneResult(results[scene], scene, scores, False)
        switched = self.switch.vote(winner)
        if switched:
            LOGGER.info('scene %s (scores %s)', self.scene,
                        ', '.join(f'{k} {v:.3f}' for k, v in scores.items()))
        return SceneResult(results[self.scene], self.scene, scores, switched)


class SceneVoteLocalizer:
    """Every frame searched in every scene, the best score picking the scene (no hysteresis).

    For evaluation (``imposing-ros evaluate --scene auto``): the frames are of scene
    ``expected``; a frame another scene wins gives None (a miss: its pose is in another map).
    ``votes`` counts the winners, and under ``'none'`` the frames no scene scores at
    ``min_score`` or more (the node casts no vote for them and keeps its scene).
    """

    NONE = 'none'

    def __init__(self, localizers: dict[str, Localizer], expected: str, min_score: float = 0.0):
        self.localizers = dict(localizers)
        self.expected = check_scene(expected, list(self.localizers))
        self.min_score = min_score
        self.votes = {name: 0 for name in [*self.localizers, self.NONE]}

    def localize(self, image: np.ndarray) -> LocalizationResult | None:
        """The expected scene's result unless another scene wins the vote (then None)."""
        results = {name: loc.localize(image) for name, loc in self.localizers.items()}
        winner = vote({name: r.score for name, r in results.items()}, self.min_score)
        if winner is None:
            self.votes[self.NONE] += 1
            return results[self.expected]  # under min_score: a miss all the same
        self.votes[winner] += 1
        return results[winner] if winner == self.expected else None

    @property
    def accuracy(self) -> float:
        """Share of the voting frames the expected scene won."""
        voted = sum(v for k, v in self.votes.items() if k != self.NONE)
        return self.votes[self.expected] / voted if voted else float('nan')


def vote(scores: dict[str, float], min_score: float = 0.0) -> str | None:
    """The best-scoring scene, or None where no scene recognised the image.

    Not recognised: the best score is 0 or under ``min_score`` (the node would publish no pose).
    """
    winner = max(scores, key=scores.get)
    return None if scores[winner] <= 0 or scores[winner] < min_score else winner


def check_scene(scene: str, scenes: list[str]) -> str:
    """``scene`` if the model has it, else a ValueError listing the model's scenes."""
    if scene not in scenes:
        raise ValueError(f'unknown scene {scene!r}: the model has {scenes} (or use {AUTO!r})')
    return scene
