#!/usr/bin/env bash
# The GPU check (issue 22): on a bare machine with one NVIDIA GPU, in one go and within a time
# budget (default 460 s), record the machine, install the project into a fresh venv from this
# checkout, then run the CUDA tests, torchrun over NCCL and the GPU figures, and write two files:
# $OUT/gpu_results.md (one table row per step, then each benchmark's own Markdown) and
# $OUT/logs.tar.gz (the raw logs, logs/*, and the benchmarks' Markdown, sections/*), both rewritten
# after every step (the device tool sends back at most 8 files). Every step has its own timeout;
# a failed step is a row of the table, never the end of the script.
#
# Run from the repository root:   OUT=/tmp/gpu_out bash bench/gpu_check.sh
#
# Environment:
#   OUT                    where the results go (required)
#   GPU_CHECK_SKIP_CUDA=1  skip the CUDA steps (each says why) and run the same scripts on the
#                          CPU at tiny sizes instead; automatic when there is no usable GPU
#   GPU_CHECK_VENV=DIR     the venv (default $TMPDIR/hpr_gpu_check_venv): created when absent; the
#                          torch and the project it already has are kept
#   GPU_CHECK_BUDGET_S     the whole script's time budget in seconds (default 460)
#   GPU_CHECK_STEPS        only these CUDA steps, comma-separated (default: all of
#                          pytest,torchrun,startup,memory,loop,fused)
#   GPU_CHECK_WHEELS=DIR   a folder of wheels pip may also install from (--find-links; default .whl
#                          when it exists: bench/gpu_wheels.sh fills it for a machine with no index)
#   GPU_CHECK_PYTHON       the interpreter to build the venv from (default: the first python3,
#                          python3.13, python3.12, python3.11 that is >= 3.11 and holds torch, else
#                          the first that is >= 3.11)

set -u
export LC_ALL=C.UTF-8 PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1 MPLBACKEND=Agg PIP_DISABLE_PIP_VERSION_CHECK=1

if [ -z "${OUT:-}" ]; then
    echo "Error: OUT is not set: give the folder for the results, e.g. OUT=/tmp/gpu_out bash bench/gpu_check.sh" >&2
    exit 2
fi
if [ ! -f bench/gpu_check.sh ] || [ ! -f pyproject.toml ]; then
    echo "Error: run bench/gpu_check.sh from the repository root (here: $PWD)" >&2
    exit 2
fi

REPO=$PWD
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")  # logs, sections, run folders
LOGS=$WORK/logs
SECTIONS_DIR=$WORK/sections
mkdir -p "$OUT" "$LOGS" "$SECTIONS_DIR"
BUDGET=${GPU_CHECK_BUDGET_S:-460}
STEPS=${GPU_CHECK_STEPS:-pytest,torchrun,startup,memory,loop,fused}
START=$SECONDS
WHEELS=${GPU_CHECK_WHEELS:-}
[ -z "$WHEELS" ] && [ -d .whl ] && WHEELS=$REPO/.whl
PIP_EXTRA=(--progress-bar off)
[ -n "$WHEELS" ] && PIP_EXTRA+=(--find-links "$WHEELS")

ROWS=()      # "step|device|status|seconds|result|log", in order
SECTIONS=()  # benchmark Markdown files appended after the table
SKIP_REASON=""

# ------------------------------------------------------------------ the table
clean() {  # one table cell: no pipes, no line breaks, not too long
    printf '%s' "$1" | sed ':a;N;$!ba;s/\n/; /g' | sed 's/|/\//g' | cut -c1-400
}

add_row() {  # step device status seconds result log (the log named only if it was written)
    local log=$6
    [ -n "$log" ] && [ ! -f "$WORK/$log" ] && log=""
    ROWS+=("$(clean "$1")|$2|$(clean "$3")|$4|$(clean "$5")|$log")
    write_table
}

write_table() {
    {
        echo "# GPU check"
        echo
        echo "Written by \`bench/gpu_check.sh\` at $(date -u '+%Y-%m-%d %H:%M UTC'), $((SECONDS - START)) s into a budget of ${BUDGET} s."
        echo "Commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$( [ -n "$(git -C "$REPO" status --porcelain -- runner conf bench tests 2>/dev/null)" ] && echo ' + uncommitted changes')."
        if [ -n "$SKIP_REASON" ]; then
            echo
            echo "CUDA steps skipped: $SKIP_REASON"
        fi
        echo
        echo 'Logs: `logs.tar.gz` beside this file (`tar -xzf logs.tar.gz`: logs/, and the Markdown of each benchmark in sections/).'
        echo
        echo "| step | device | status | seconds | result | log |"
        echo "|---|---|---|---:|---|---|"
        local row
        for row in "${ROWS[@]}"; do
            echo "| ${row//|/ | } |"
        done
        local section
        for section in "${SECTIONS[@]}"; do
            [ -s "$SECTIONS_DIR/$section" ] && { echo; cat "$SECTIONS_DIR/$section"; }
        done
    } >"$OUT/gpu_results.md"
    tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs sections 2>/dev/null
}

remaining() { echo $((BUDGET - (SECONDS - START))); }

# run_step NAME DEVICE TIMEOUT LOGFILE COMMAND: the command in bash, under timeout (which ends
# its whole process group), stdout and stderr to logs/LOGFILE. Sets STATUS, ELAPSED, RC.
run_step() {
    local name=$1 device=$2 limit=$3 log=$4 command=$5 left
    left=$(remaining)
    if [ "$left" -lt 20 ]; then
        STATUS="skipped"; RC=-1; ELAPSED=0
        RESULT="skipped: the script's time budget (${BUDGET} s) is spent"
        return
    fi
    [ "$limit" -gt "$((left - 10))" ] && limit=$((left - 10))
    local t0=$SECONDS
    echo "\$ $command" >"$LOGS/$log"
    timeout -k 10 "$limit" bash -c "$command" >>"$LOGS/$log" 2>&1
    RC=$?
    ELAPSED=$((SECONDS - t0))
    if [ "$RC" -eq 0 ]; then
        STATUS="ok"
    elif [ "$RC" -eq 124 ] || [ "$RC" -eq 137 ]; then
        STATUS="timed out after ${limit} s"
    else
        STATUS="failed (exit $RC)"
    fi
    echo "[exit $RC after $ELAPSED s]" >>"$LOGS/$log"
    RESULT=""
}

last_line() {  # the last non-empty line of a log that is not our own exit note
    grep -v '^\[exit ' "$LOGS/$1" | grep -v '^[[:space:]]*$' | tail -n 1
}

# ------------------------------------------------------------------ 1. the machine
machine() {
    echo "## date"; date -u
    echo "## uname"; uname -a
    echo "## cores, memory, disk"; nproc; free -g 2>/dev/null; df -h "$REPO" "${TMPDIR:-/tmp}" 2>/dev/null
    echo "## nvidia-smi"; timeout 30 nvidia-smi 2>&1 || echo "nvidia-smi: not available (exit $?)"
    echo "## nvidia-smi query"; timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1
    echo "## pythons"; for p in python3 python3.13 python3.12 python3.11 python; do command -v "$p" >/dev/null && echo "$p: $($p --version 2>&1) at $(command -v "$p")"; done
    echo "## system torch"; timeout 60 python3 -c "import torch; print('torch', torch.__version__, 'cuda build', torch.version.cuda, 'cuda available', torch.cuda.is_available())" 2>&1 | tail -n 1
    echo "## pip"; timeout 30 python3 -m pip --version 2>&1; timeout 30 python3 -m pip config list 2>&1
    echo "## uv"; command -v uv || echo "no uv"
    echo "## registry: pip index versions torch"; timeout 40 python3 -m pip index versions torch --timeout 5 --retries 0 2>&1 | head -c 3000
    echo "## wheels carried (.whl or GPU_CHECK_WHEELS)"; ls "${WHEELS:-/nonexistent}" 2>&1
}
t0=$SECONDS
machine >"$LOGS/machine.txt" 2>&1
GPU_NAME=$(timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)
SYS_TORCH=$(grep -A1 '^## system torch' "$LOGS/machine.txt" | tail -n 1)
if grep -q '^Available versions' "$LOGS/machine.txt"; then
    REGISTRY="reachable"
else
    REGISTRY="not reachable (pip index versions torch failed): pip installs only from ${WHEELS:-no wheel folder} (--no-index)"
    PIP_EXTRA+=(--no-index)
fi
add_row "machine" "host" "ok" "$((SECONDS - t0))" \
    "GPU: ${GPU_NAME:-none (nvidia-smi failed or absent)}; $(python3 --version 2>&1); system torch: $SYS_TORCH; $(nproc) cores; package registry $REGISTRY" \
    "logs/machine.txt"
[ -n "$WHEELS" ] && add_row "wheels" host "ok" 0 "pip may install from $WHEELS: $(ls "$WHEELS" 2>&1 | tr '\n' ' ')" ""

if [ "${GPU_CHECK_SKIP_CUDA:-0}" = "1" ]; then
    SKIP_REASON="GPU_CHECK_SKIP_CUDA=1 (CUDA steps skipped on request)"
elif [ -z "$GPU_NAME" ]; then
    SKIP_REASON="no NVIDIA GPU here (nvidia-smi absent or failing)"
fi

# ------------------------------------------------------------------ 2. venv and install
pick_python() {  # the first >= 3.11 that holds torch (the lent machine's python3 does), else the first >= 3.11
    local p
    [ -n "${GPU_CHECK_PYTHON:-}" ] && { echo "$GPU_CHECK_PYTHON"; return; }
    for p in python3 python3.13 python3.12 python3.11; do
        command -v "$p" >/dev/null && timeout 60 "$p" -c 'import sys, torch; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { echo "$p"; return; }
    done
    for p in python3 python3.13 python3.12 python3.11; do
        command -v "$p" >/dev/null && "$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo "$p"; return; }
    done
    echo python3
}

# When the base interpreter is itself a venv (the lent machine's python3 is /opt/torch/.venv's),
# --system-site-packages reaches only the python it was made from, not that venv's packages:
# a .pth file adds them, so its torch (a CUDA build) and the rest stay importable, and pip sees
# them as installed.
share_base_packages() {
    local base=$1
    "$base" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' 2>/dev/null || return 0
    "$base" -c 'import site, sysconfig; print("\n".join(dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()])))' \
        >"$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_gpu_check_base.pth"
}

# The venv lives outside the checkout and outlives the script: a second try on a machine that is
# still warm skips the install (minutes when pip downloads torch's CUDA build).
VENV=${GPU_CHECK_VENV:-${TMPDIR:-/tmp}/hpr_gpu_check_venv}
VPY=$VENV/bin/python
if [ -x "$VPY" ]; then
    add_row "venv" host "ok" 0 "reused $VENV ($("$VPY" --version 2>&1))" ""
else
    BASE_PY=$(pick_python)
    # --system-site-packages: a torch the machine already has (with its CUDA) stays usable.
    # Without ensurepip (Debian's python3 without python3-venv), a venv without pip of its own
    # still runs pip: the base venv's, through the .pth file below.
    # From a base that is a venv, no pip or setuptools of the new venv's own: they would shadow the
    # base's (an older setuptools than its torch needs, on python 3.11).
    if "$BASE_PY" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' 2>/dev/null; then
        run_step "venv" host 90 venv.log "'$BASE_PY' -m venv --without-pip --system-site-packages '$VENV'"
    else
        run_step "venv" host 90 venv.log "'$BASE_PY' -m venv --system-site-packages '$VENV' || { echo '--- again without pip'; rm -rf '$VENV'; '$BASE_PY' -m venv --without-pip --system-site-packages '$VENV'; }"
    fi
    if [ "$STATUS" = ok ]; then
        share_base_packages "$BASE_PY"
        "$VPY" -m pip --version >>"$LOGS/venv.log" 2>&1 || { STATUS="failed (no pip in the venv)"; rm -rf "$VENV"; }
    fi
    add_row "venv" host "$STATUS" "$ELAPSED" "$( [ "$STATUS" = ok ] && echo "created $VENV from $(command -v "$BASE_PY") ($($BASE_PY --version 2>&1))$( [ -f "$VENV"/lib/*/site-packages/_gpu_check_base.pth ] && echo ", with that venv's packages")" || last_line venv.log)" "logs/venv.log"
    if [ "$STATUS" != ok ]; then
        VPY=$(command -v "$BASE_PY")  # without a venv, the machine's own python is all there is
    fi
fi

# torch: one already there (the machine's, or from an earlier try) is kept; the CUDA check below
# replaces it if it cannot see the GPU. Otherwise the pinned version.
HAVE=$(timeout 60 "$VPY" -c 'import torch; print(torch.__version__, "cuda available", torch.cuda.is_available())' 2>/dev/null)
if [ -n "$HAVE" ]; then
    add_row "install torch" host "skipped" 0 "skipped: the environment has torch $HAVE" ""
else
    run_step "install torch" host 240 install_torch.log "'$VPY' -m pip install ${PIP_EXTRA[*]} torch==2.13.0"
    add_row "install torch" host "$STATUS" "$ELAPSED" "${RESULT:-$(last_line install_torch.log)}" "logs/install_torch.log"
fi

# The project (editable, from this checkout) and what the CUDA tests import (pytest); not the
# [test] extra's Ray/Slurm/Optuna/Selenium.
# Asked from / : "python -c" in the checkout would import runner/ from the working directory.
if (cd / && timeout 60 "$VPY" -c "import sys, pytest, hydra, runner; sys.exit(not runner.__file__.startswith('$REPO/'))") >/dev/null 2>&1; then
    add_row "install project" host "skipped" 0 "skipped: the environment has the project from this checkout, and pytest" ""
else
    # Last resort, where no build backend will do (no index for setuptools>=68 and an older one
    # in the venv): the dependencies from pyproject.toml, and the checkout on sys.path through a
    # .pth file, which is what an editable install amounts to for this pure-Python package.
    cat >"$WORK/install_as_path.sh" <<INSTALL
set -e
deps=\$('$VPY' -c 'import tomllib; print(" ".join(repr(d) for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')
eval "'$VPY' -m pip install ${PIP_EXTRA[*]} \$deps pytest"
echo '$REPO' >"\$('$VPY' -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_hparam_runner_checkout.pth"
echo "installed the dependencies; the checkout $REPO is on sys.path through a .pth file (no package metadata)"
INSTALL
    run_step "install project" host 300 install_project.log \
        "'$VPY' -m pip install ${PIP_EXTRA[*]} -e . pytest || { echo '--- again without build isolation (no index for setuptools?)'; '$VPY' -m pip install ${PIP_EXTRA[*]} --no-build-isolation -e . pytest; } || { echo '--- the dependencies, and the checkout through a .pth file'; bash '$WORK/install_as_path.sh'; }"
    add_row "install project" host "$STATUS" "$ELAPSED" "${RESULT:-$(last_line install_project.log)}" "logs/install_project.log"
fi

# tests/test_ddp.py starts the torchrun beside sys.executable: a torch shared from the base venv
# brought none into this one.
if [ -d "$VENV/bin" ] && [ ! -e "$VENV/bin/torchrun" ] && [ "$VPY" = "$VENV/bin/python" ]; then
    printf '#!/bin/sh\nexec "%s" -m torch.distributed.run "$@"\n' "$VPY" >"$VENV/bin/torchrun" && chmod +x "$VENV/bin/torchrun"
fi

# ------------------------------------------------------------------ 3. can torch see the GPU?
probe_torch() {
    timeout 120 "$VPY" -c 'import torch
print("torch", torch.__version__, "cuda build", torch.version.cuda, "cuda available", torch.cuda.is_available(),
      "devices", torch.cuda.device_count(), *( [torch.cuda.get_device_name(0)] if torch.cuda.is_available() else [] ))' 2>&1 | tail -n 1
}
TORCH_LINE=$(probe_torch)
if [ -z "$SKIP_REASON" ] && ! grep -q 'cuda available True' <<<"$TORCH_LINE"; then
    # The GPU is there but this torch cannot use it (a CPU wheel, or none): try a CUDA build of
    # the same version among those the reachable index lists (pip has no --index-url here).
    echo "torch in the venv: $TORCH_LINE" >"$LOGS/torch_cuda_build.log"
    CANDIDATES=$(timeout 60 "$VPY" -m pip index versions torch --timeout 5 --retries 0 2>>"$LOGS/torch_cuda_build.log" | grep -o '2\.13\.0+cu[0-9]*' | sort -u -t u -k2 -n -r | head -n 2)
    echo "CUDA builds of 2.13.0 the index lists: ${CANDIDATES:-none}" >>"$LOGS/torch_cuda_build.log"
    if [ -n "$CANDIDATES" ]; then
        for candidate in $CANDIDATES; do
            run_step "torch CUDA build" host 240 torch_cuda_build_try.log "'$VPY' -m pip install ${PIP_EXTRA[*]} 'torch==$candidate'"
            cat "$LOGS/torch_cuda_build_try.log" >>"$LOGS/torch_cuda_build.log"
            TORCH_LINE=$(probe_torch)
            grep -q 'cuda available True' <<<"$TORCH_LINE" && break
        done
        add_row "torch CUDA build" host "$STATUS" "$ELAPSED" "tried ${CANDIDATES//$'\n'/, }: now $TORCH_LINE" "logs/torch_cuda_build.log"
    else
        add_row "torch CUDA build" host "failed" 0 "the venv's torch cannot see the GPU ($TORCH_LINE) and the index lists no 2.13.0+cu build" "logs/torch_cuda_build.log"
    fi
fi
if [ -z "$SKIP_REASON" ] && grep -q 'cuda available True' <<<"$TORCH_LINE"; then
    add_row "torch sees the GPU" cuda "ok" 0 "$TORCH_LINE" ""
else
    [ -z "$SKIP_REASON" ] && SKIP_REASON="torch in the venv cannot use the GPU: ${TORCH_LINE:-torch not importable}"
    add_row "torch sees the GPU" cuda "skipped" 0 "skipped: $SKIP_REASON (venv torch: ${TORCH_LINE:-not importable})" ""
fi

# ------------------------------------------------------------------ 4. the CUDA steps (or their CPU plumbing)
# Each: name, key in GPU_CHECK_STEPS, timeout, command on the GPU, the same script on the CPU at
# tiny sizes (run only when the CUDA steps are skipped, so the script is tested off the GPU),
# and the Markdown file the benchmark writes (empty for none).
PY="'$VPY'"
TORCHRUN="$PY -m torch.distributed.run"  # torchrun, from the venv's torch
CUDA_TESTS="tests/test_cuda.py tests/test_instruments_cuda.py tests/test_ddp.py"
# The project's addopts put the suite on pytest-xdist workers; the lent machine installs pytest
# alone (no index for more), and the CUDA tests run one after another anyway.
PYTEST="$PY -m pytest -o addopts= -p no:cacheprovider"
step_pytest=("pytest -m cuda (CUDA tests, sync-debug, cuda_graph = eager, NCCL torchrun)" pytest 200
    "$PYTEST -m cuda $CUDA_TESTS -q -rs --junitxml='$LOGS/pytest_cuda.xml'"
    "$PYTEST -m cuda $CUDA_TESTS -q --collect-only"
    "")
step_torchrun=("torchrun, 1 process on 1 GPU (nccl)" torchrun 90
    "$TORCHRUN --standalone --nproc_per_node=1 -m runner dataset=iris epochs=2 batch_size=25 micro_batch_size=4 device=cuda progress=false hydra.run.dir='$WORK/torchrun' && ls '$WORK/torchrun'/summary.json"
    "$TORCHRUN --standalone --nproc_per_node=1 -m runner dataset=iris epochs=1 device=cpu progress=false hydra.run.dir='$WORK/torchrun_cpu' && ls '$WORK/torchrun_cpu'/summary.json"
    "")
step_startup=("first update latency (fresh process, eager and cuda_graph)" startup 100
    "$PY bench/startup.py --device cuda --quick --rounds 3 --out '$SECTIONS_DIR/startup.md'"
    "$PY bench/startup.py --device cpu --quick --rounds 1 --out '$SECTIONS_DIR/startup.md'"
    startup.md)
step_memory=("BGD peak memory against the runner's estimate (with and without micro_batch_size)" memory 100
    "$PY bench/bgd_memory.py --device cuda --out '$SECTIONS_DIR/bgd_memory.md'"
    "$PY bench/bgd_memory.py --device cpu --max-rows 1e5 --out '$SECTIONS_DIR/bgd_memory.md'"
    bgd_memory.md)
step_loop=("µs per iteration, one run, batch 1/32/full, eager and cuda_graph" loop 150
    "$PY bench/loop_overhead.py --device cuda --quick --out '$SECTIONS_DIR/loop_overhead.md'"
    "$PY bench/loop_overhead.py --device cpu --batches 32 --epochs 32=1 --rounds 1 --out '$SECTIONS_DIR/loop_overhead.md'"
    loop_overhead.md)
step_fused=("fused group K = 8, 64, 256 against the basic launcher (runs/s)" fused 150
    "$PY bench/fused_sweep.py --device cuda --ks 8 64 256 --batch-sizes 1 --iterations 100 --rounds 1 >'$SECTIONS_DIR/fused_sweep.md'"
    "$PY bench/fused_sweep.py --device cpu --ks 2 --batch-sizes 32 --iterations 5 --rounds 1 >'$SECTIONS_DIR/fused_sweep.md'"
    fused_sweep.md)

summary_of() {  # what the result cell says about a finished step: key, log, Markdown section
    local key=$1 log=$2
    case $key in
        pytest) local counts; counts=$(grep -E '[0-9]+ (passed|failed|errors?|skipped|deselected|tests? collected)' "$LOGS/$log" | tail -n 1)
                echo "${counts:-$(last_line "$log")}" ;;
        torchrun) if [ "$STATUS" = ok ]; then echo "the run finished and wrote summary.json; backend its log names: $(grep -oiE 'nccl|gloo' "$LOGS/$log" | sort -u | tr '\n' ' ')"; else last_line "$log"; fi ;;
        *) if [ "$STATUS" = ok ] && [ -s "$SECTIONS_DIR/$3" ]; then echo "table below ($3)"; else last_line "$log"; fi ;;
    esac
}

for key in pytest torchrun startup memory loop fused; do
    unset -n step 2>/dev/null
    declare -n step="step_$key"
    name=${step[0]} limit=${step[2]} gpu_cmd=${step[3]} cpu_cmd=${step[4]} section=${step[5]}
    [ -n "$section" ] && rm -f "$SECTIONS_DIR/$section"
    if [ -n "$SKIP_REASON" ]; then
        add_row "$name" cuda "skipped" 0 "skipped: $SKIP_REASON" ""
        run_step "$name" cpu 240 "${key}_cpu.log" "$cpu_cmd"
        add_row "$name (CPU plumbing, tiny)" cpu "$STATUS" "$ELAPSED" "${RESULT:-$(summary_of "$key" "${key}_cpu.log" "$section")}" "logs/${key}_cpu.log"
    elif [[ ",$STEPS," != *",$key,"* ]]; then
        add_row "$name" cuda "skipped" 0 "skipped: not in GPU_CHECK_STEPS=$STEPS" ""
        continue
    else
        run_step "$name" cuda "$limit" "${key}.log" "$gpu_cmd"
        add_row "$name" cuda "$STATUS" "$ELAPSED" "${RESULT:-$(summary_of "$key" "${key}.log" "$section")}" "logs/${key}.log"
    fi
    if [ -n "$section" ]; then
        SECTIONS+=("$section")
        write_table
    fi
done

write_table
rm -rf "$WORK"
echo "GPU check done in $((SECONDS - START)) s: $OUT/gpu_results.md"
cat "$OUT/gpu_results.md"
