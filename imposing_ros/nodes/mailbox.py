"""A one-slot mailbox of the newest camera frame, between the input and inference threads.

The input callback puts every frame; a frame that was still waiting is overwritten (counted as
skipped), so inference always works on the newest one and never queues, whatever the camera
rate. The consumer blocks in ``wait`` until a frame is there. No ROS here.
"""

from __future__ import annotations

import threading


class Mailbox:
    """The newest frame and its counters."""

    def __init__(self):
        self._ready = threading.Condition()
        self._slot = None
        self.received = self.skipped = 0

    def put(self, item) -> None:
        """Keep ``item`` as the newest frame and wake the consumer."""
        with self._ready:
            self.received += 1
            if self._slot is not None:  # the older frame was never processed
                self.skipped += 1
            self._slot = item
            self._ready.notify()

    def wait(self, timeout: float):
        """The newest frame, waiting up to ``timeout`` seconds for one; ``None`` if none came."""
        with self._ready:
            self._ready.wait_for(lambda: self._slot is not None, timeout)
            item, self._slot = self._slot, None
            return item

    def take(self, newer_than=None):
        """The newest frame without waiting, or ``None``.

        With ``newer_than``: a frame that arrived meanwhile replaces it (it counts as skipped),
        else ``newer_than`` itself.
        """
        with self._ready:
            item, self._slot = self._slot, None
            if newer_than is None:
                return item
            if item is None:
                return newer_than
            self.skipped += 1
            return item

    def clear(self) -> None:
        """Drop a waiting frame (deactivation)."""
        with self._ready:
            self._slot = None

    def counts(self) -> dict:
        """Counters for diagnostics."""
        with self._ready:
            return {'frames received': self.received, 'frames skipped': self.skipped}
