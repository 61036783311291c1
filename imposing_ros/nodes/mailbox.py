"""A one-slot mailbox of the newest camera frame, between the input and inference threads.

The input callback puts every frame; a frame that was still waiting is overwritten (counted as
skipped), so inference always works on the newest one and never queues, whatever the camera
rate. The consumer is woken once per burst: ``put`` says when to wake it, and ``take`` disarms
when the slot is empty. No ROS here.
"""

from __future__ import annotations

import threading


class Mailbox:
    """The newest frame, its counters, and whether the consumer is scheduled."""

    def __init__(self):
        self._lock = threading.Lock()
        self._slot = None
        self._armed = False  # the consumer is scheduled or running
        self.received = self.skipped = 0

    def put(self, item) -> bool:
        """Keep ``item`` as the newest frame; True when the consumer must be woken."""
        with self._lock:
            self.received += 1
            if self._slot is not None:  # the older frame was never processed
                self.skipped += 1
            self._slot = item
            wake, self._armed = not self._armed, True
        return wake

    def take(self, newer_than=None):
        """The newest frame, or ``None`` (disarmed: the next ``put`` wakes the consumer).

        With ``newer_than``: a frame that arrived meanwhile replaces it (it counts as skipped),
        else ``newer_than`` itself, without disarming.
        """
        with self._lock:
            item, self._slot = self._slot, None
            if newer_than is not None:
                if item is None:
                    return newer_than
                self.skipped += 1
                return item
            if item is None:
                self._armed = False
            return item

    def clear(self) -> None:
        """Drop a waiting frame (deactivation)."""
        with self._lock:
            self._slot = None

    def counts(self) -> dict:
        """Counters for diagnostics."""
        with self._lock:
            return {'frames received': self.received, 'frames skipped': self.skipped}
