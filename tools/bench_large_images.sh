#!/usr/bin/env bash
# Raw 1080p rgb8 frames at 30 Hz for 60 s from a camera-like publisher into `imposing-ros run`
# (a tiny random model), both with the packaged Fast DDS profile: prints frames sent and
# received and the node's memory at the start and the end. Usage: tools/bench_large_images.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/bench_large_images}
mkdir -p "$OUT"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-83} OMP_NUM_THREADS=1
unset FASTDDS_DEFAULT_PROFILES_FILE  # `run` sets the packaged profile itself
PYTHONPATH=test $PY -c "from node_harness import build_tiny_checkpoint, write_params; \
build_tiny_checkpoint('$OUT/tiny.pt'); write_params('$OUT/params.yaml', {'model_path': \
'$PWD/$OUT/tiny.pt', 'image_topic': '/camera/image_raw', 'diagnostic_period': 0.5, \
'inductor': 'auto'})"
PYTHONPATH=test $PY -c "from test_large_images import PUBLISHER; open('$OUT/camera.py', 'w').write(PUBLISHER)"
$PY -m imposing_ros.cli run --params "$OUT/params.yaml" --use-filter false > "$OUT/node.log" 2>&1 &
NODE=$!
trap 'kill -INT $NODE 2>/dev/null || true' EXIT
until grep -q 'running /imposing_localizer' "$OUT/node.log"; do sleep 1; done
rss() { grep VmRSS "/proc/$NODE/status" | awk '{print $2 / 1024 " MB"}'; }
echo "node memory at start: $(rss)"
$PY - "$OUT/received.txt" <<'PYEOF' &
import sys, time
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
rclpy.init()
node = rclpy.create_node('bench_reader')
last = {}
node.create_subscription(DiagnosticArray, '/diagnostics', lambda m: last.update(
    {kv.key: kv.value for s in m.status for kv in s.values}), 10)
end = time.monotonic() + 80
while time.monotonic() < end:
    rclpy.spin_once(node, timeout_sec=0.5)
open(sys.argv[1], 'w').write(last.get('frames received', '-1'))
PYEOF
READER=$!
sleep 3
FASTDDS_DEFAULT_PROFILES_FILE=$PWD/config/fastdds_large_images.xml \
  $PY "$OUT/camera.py" 1920 1080 1800
echo "node memory at the end: $(rss)"
wait $READER
echo "frames received by the node: $(cat "$OUT/received.txt") of 1800"
