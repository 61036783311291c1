"""Which camera frames the localizer takes, by their stamps (integer nanoseconds, no ROS types).

A frame is refused when it is older than ``max_age_s`` or stamped more than ``max_future_s``
after the node clock (a clock of 0 is sim time before the first ``/clock``: no age test), or
when it is not after the last processed one. A clock that jumps back by more than a second (a
bag loop) forgets the last stamp, and the caller its priors.
"""

from __future__ import annotations

CLOCK_JUMP_NS = 1_000_000_000


class FrameGate:
    """Stamp rules of one configured localizer; not thread-safe (the inference thread's)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        """Forget the last clock reading and the last processed stamp."""
        self._last_clock_ns: int | None = None
        self._last_stamp_ns: int | None = None

    def clock_jumped_back(self, now_ns: int) -> bool:
        """Record the clock; True (and forget the last stamp) when it went back over a second."""
        jumped = self._last_clock_ns is not None and now_ns < self._last_clock_ns - CLOCK_JUMP_NS
        if jumped:
            self._last_stamp_ns = None
        self._last_clock_ns = now_ns
        return jumped

    def refusal(self, stamp_ns: int, now_ns: int, max_age_s: float,
                max_future_s: float) -> tuple[str, str] | None:
        """(reason, detail) why a frame stamped ``stamp_ns`` is refused now, or None."""
        age = (now_ns - stamp_ns) * 1e-9
        if max_age_s > 0 and now_ns > 0 and age > max_age_s:
            return 'stale', f'image is {age:.2f} s old (max_image_age {max_age_s})'
        if now_ns > 0 and -age > max_future_s:
            return 'future', (f'image stamped {-age:.2f} s after the node clock '
                              f'(max_image_future {max_future_s})')
        if self._last_stamp_ns is not None and stamp_ns <= self._last_stamp_ns:
            return 'out of order', (f'stamp {stamp_ns * 1e-9:.3f} s is not after the last '
                                    f'processed {self._last_stamp_ns * 1e-9:.3f} s')
        return None

    def processed(self, stamp_ns: int) -> None:
        """A frame was localized: later ones must be newer."""
        self._last_stamp_ns = stamp_ns
