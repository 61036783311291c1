"""The localizer's stamp rules without ROS (the node tests drive the same through DDS)."""

from imposing_ros.nodes.frame_gate import FrameGate

S = 1_000_000_000


def test_stale_future_and_out_of_order_frames_are_refused():
    gate = FrameGate()
    now = 100 * S
    assert gate.refusal(now - S // 2, now, 1.0, 0.5) is None
    assert gate.refusal(now - 2 * S, now, 1.0, 0.5)[0] == 'stale'
    assert gate.refusal(now + 86400 * S, now, 1.0, 0.5)[0] == 'future'
    assert gate.refusal(now - 2 * S, now, 0.0, 0.5) is None  # age test off
    gate.processed(now)
    # A refused future frame left nothing behind; an older one than the last is refused.
    assert gate.refusal(now + S // 10, now + S // 5, 1.0, 0.5) is None
    assert gate.refusal(now - S // 10, now, 1.0, 0.5)[0] == 'out of order'
    # Sim time before the first /clock (0): no age or future test.
    assert FrameGate().refusal(5 * S, 0, 1.0, 0.5) is None


def test_a_clock_jump_back_forgets_the_last_stamp():
    gate = FrameGate()
    assert not gate.clock_jumped_back(200 * S)
    gate.processed(200 * S)
    assert not gate.clock_jumped_back(200 * S - S // 2)  # jitter under a second
    assert gate.clock_jumped_back(100 * S)  # the bag loops
    assert gate.refusal(100 * S, 100 * S, 1.0, 0.5) is None
