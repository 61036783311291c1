"""The one-slot mailbox between the localizer's input callbacks and its inference thread."""

import threading
import time

from imposing_ros.nodes.mailbox import Mailbox


def test_wait_returns_the_newest_frame_and_counts_the_skipped_ones():
    box = Mailbox()
    for frame in ('a', 'b', 'c'):
        box.put(frame)
    assert box.wait(timeout=0.0) == 'c'
    assert box.counts() == {'frames received': 3, 'frames skipped': 2}
    assert box.wait(timeout=0.01) is None  # empty: times out


def test_wait_wakes_when_a_frame_is_put_from_another_thread():
    box = Mailbox()
    got = []
    consumer = threading.Thread(target=lambda: got.append(box.wait(timeout=5.0)))
    consumer.start()
    time.sleep(0.05)
    start = time.monotonic()
    box.put('frame')
    consumer.join(timeout=5.0)
    assert got == ['frame'] and time.monotonic() - start < 1.0


def test_take_newer_than_prefers_a_frame_that_arrived_meanwhile():
    box = Mailbox()
    assert box.take(newer_than='old') == 'old'
    box.put('new')
    assert box.take(newer_than='old') == 'new'
    assert box.counts()['frames skipped'] == 1
    box.put('x')
    box.clear()
    assert box.take() is None
