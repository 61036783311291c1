#!/usr/bin/env bash
# The GPU checks of the CUDA path (docs/gpu.md), for a bare CUDA machine that has python3 with
# torch (>= 2.8), numpy, pillow, tqdm, pyyaml, torchvision and pytest, and the repository.
# Pure-Python wheels it lacks (roma, transforms3d) are installed from $WHEELS (default .whl/)
# into a private folder; nothing is fetched. Results go to $OUT if set, else ./gpu_results:
#   env.txt           GPU, driver, torch and CUDA versions
#   pytest.txt        pytest -m gpu on the backend and GPU-path tests
#   graph_check.json  CUDA-graph vs eager search after memory churn, paper configuration
#   bench-*.json      imposing-ros bench --device cuda for torch and torch-fp16 (+ a level-0
#                     set of 20000 poses, N 4096, on torch-fp16)
#   log.txt           everything printed
# Exit status: 0 when every step passed, else 1 (each step runs whatever the others did).
set -u -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
RESULTS=${OUT:-$REPO/gpu_results}
mkdir -p "$RESULTS"
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-$REPO/.whl}
LOG=$RESULTS/log.txt
: >"$LOG"
export PYTHONUNBUFFERED=1

if compgen -G "$WHEELS/*.whl" >/dev/null; then
    SITE=$(mktemp -d /tmp/imposing_site.XXXXXX)
    if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --target "$SITE" "$WHEELS"/*.whl >>"$LOG" 2>&1; then
        # No pip: pure-Python wheels import from the archive itself.
        SITE=$(printf '%s:' "$WHEELS"/*.whl)
        SITE=${SITE%:}
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

status=0
step() {  # step NAME COMMAND...: run, log, remember a failure
    echo "=== $1: ${*:2}" | tee -a "$LOG"
    "${@:2}" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "=== $1: exit $rc" | tee -a "$LOG"
    [ "$rc" -eq 0 ] || status=1
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
    "$PYTHON" -c 'import sys, torch; print("python", sys.version.split()[0]);
print("torch", torch.__version__, "cuda", torch.version.cuda,
      "gpus", torch.cuda.device_count(), torch.cuda.get_device_name(0))' 2>&1
    "$PYTHON" -c 'import roma, transforms3d; print("roma", roma.__version__)' 2>&1
} >"$RESULTS/env.txt"
cat "$RESULTS/env.txt" >>"$LOG"

step pytest bash -o pipefail -c "'$PYTHON' -m pytest -m gpu -q -rs -p no:cacheprovider \
    test/test_gpu_path.py test/test_backends.py 2>&1 | tee '$RESULTS/pytest.txt'"
step graph_check "$PYTHON" tools/graph_check.py --json "$RESULTS/graph_check.json"
for backend in torch torch-fp16; do
    step "bench $backend" "$PYTHON" -m imposing_ros.cli bench --device cuda \
        --backend "$backend" --json "$RESULTS/bench-$backend.json"
done
step "bench torch-fp16 level0" "$PYTHON" -m imposing_ros.cli bench --device cuda \
    --backend torch-fp16 --level0 20000 --json "$RESULTS/bench-torch-fp16-level0.json"
echo "results in $RESULTS (status $status)" | tee -a "$LOG"
exit $status
