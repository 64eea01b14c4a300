#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one run that fits a short loan of one H100/H200 (under 8 minutes):
#
#   bash benchmarks/gpu_checks.sh             # on the GPU machine; everything lands under $OUT (default gpu_checks/)
#   bash benchmarks/gpu_checks.sh --dry-run   # on a CPU machine: the same steps, tiny, GPU tests collected and skipped
#
# Data: the KMNIST test split in data/KMNIST/raw/ (the device machine receives the repository with its ignored
# data/ folder, not ../shared: copy it there first), or $KMNIST_DATA_DIR.
#
# Steps, with the time each is given (a hard limit) and the estimate behind it. The estimate: a Python process that
# imports torch and initialises CUDA takes about 10 s; the project's step about 4 ms on an H100 (a few hundred
# kernel launches, CPU-bound); torch.compile about 60 s per process; two spawned ranks about 15 s.
#   1. environment: GPU, driver, torch, CUDA                                              limit  30 s, estimate   5 s
#   2. pytest -m gpu (tests/test_gpu.py and two in test_conditional.py), 20 tests:        limit 330 s, estimate 270 s
#      nn.SyncBatchNorm over gloo, two ranks on one GPU, vs one BatchNorm2d: fp32/fp16/bf16 x train/frozen/eval
#      (9 x 15 s); fp16 skipped steps vs the loss-scale history (15 s); no sync between sync points in fp32/bf16/fp16,
#      by CUDA's sync debug mode (3 x 15 s); 1 vs 2 ranks in float64 within 1e-4 (30 s); a 2-rank checkpoint
#      resumed on 1 rank (25 s); SIGTERM to a 2-rank launch, then --resume latest (25 s); two --deterministic runs
#      identical (20 s); export and evaluation of a GPU run with CUDA hidden (25 s)
#   3. speed: benchmarks/bench_train.py, the literal port and fp32/bf16/fp16/--compile,     limit 150 s, estimate 110 s
#      300 timed steps after 30 warm-up (where --compile compiles), one repeat: 5 processes x 10 s start-up,
#      4 x 300 x 4 ms of steps, 60 s of compilation
#   4. two or more GPUs only: NCCL, 1 vs 2 GPUs in float64 and images/s                     limit  90 s, estimate  60 s
# Total: at most 600 s by the limits, about 445 s by the estimates. Each step's outcome and time go to the summary
# table printed at the end and written to $OUT/summary.md.
set -uo pipefail
cd "$(dirname "$0")/.."

dry_run=false
[[ ${1:-} == --dry-run ]] && dry_run=true
out=${OUT:-gpu_checks}
mkdir -p "$out"
exec > >(tee "$out/gpu_checks.log") 2>&1
if [[ -z ${KMNIST_DATA_DIR:-} ]]; then
    if [[ -f data/KMNIST/raw/t10k-images-idx3-ubyte.gz ]]; then KMNIST_DATA_DIR=data; else KMNIST_DATA_DIR=../shared/data; fi
fi
export KMNIST_DATA_DIR PYTHONUNBUFFERED=1
summary="$out/summary.md"
printf '| step | outcome | seconds |\n|---|---|---:|\n' > "$summary"

step() {  # step NAME LIMIT COMMAND...: run it with a time limit, record outcome and time
    local name=$1 limit=$2 start status outcome
    shift 2
    echo "== $name"
    start=$(date +%s)
    timeout --signal=TERM --kill-after=10 "$limit" "$@"
    status=$?
    case $status in
        0) outcome=passed ;;
        124 | 137) outcome="TIMED OUT after ${limit} s" ;;
        *) outcome="FAILED (exit $status)" ;;
    esac
    printf '| %s | %s | %d |\n' "$name" "$outcome" "$(($(date +%s) - start))" >> "$summary"
}

if $dry_run; then
    steps=5 warmup=2 variants=(literal project)
else
    steps=300 warmup=30 variants=(literal project project-bf16 project-fp16 project-compile)
fi

step "1. environment" 30 python - "$dry_run" <<'EOF'
import subprocess, sys, torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "GPUs", torch.cuda.device_count())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(), subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                                        "--format=csv,noheader"], capture_output=True, text=True).stdout)
elif sys.argv[1] != "true":
    sys.exit("no CUDA GPU visible: run this on a GPU machine, or pass --dry-run")
EOF

step "2. pytest -m gpu (tests/test_gpu.py)" 330 \
    python -m pytest -q -m gpu -rA -p no:cacheprovider --junitxml="$out/gpu_tests.xml" tests/

step "3. speed: ${variants[*]}" 150 \
    python benchmarks/bench_train.py --data-dir "$KMNIST_DATA_DIR" --steps "$steps" --warmup "$warmup" --repeats 1 \
    --variants "${variants[@]}"

gpus=$(python -c 'import torch; print(torch.cuda.device_count())')
if ((gpus >= 2)); then
    step "4. NCCL: 1 vs 2 GPUs (float64) and images/s" 90 python - "$out" <<'EOF'
import json, subprocess, sys, time
from pathlib import Path
sys.path.insert(0, "tests")
from helpers import SHARED_DATA, free_port
out = Path(sys.argv[1]) / "nccl"
flags = ["--data-dir", str(SHARED_DATA), "--split", "test", "--no-download", "--report-to", "none",
         "--eval-every", "0", "--max-steps", "20", "--dtype", "float64", "--ema-decay", "0", "--output-dir", str(out)]
launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "launch/multi_gpu.yaml",
          "--main_process_port", str(free_port())]
for processes in (1, 2):
    start = time.perf_counter()
    subprocess.run([*launch, "--num_processes", str(processes), "train_ddp.py", *flags, "--run-name", f"p{processes}"],
                   check=True)
    print(f"{processes} GPU(s): {time.perf_counter() - start:.1f} s for 20 float64 steps incl. start-up")
from safetensors.torch import load_file
one, two = (load_file(str(out / f"p{n}" / "generator.safetensors")) for n in (1, 2))
difference = max((one[k] - two[k]).abs().max().item() for k in one)
print("max |1 GPU - 2 GPUs| =", difference)
assert json.loads((out / "p2" / "config.json").read_text())["distributed_type"].endswith("MULTI_GPU")
assert difference <= 1e-4
EOF
else
    printf '| 4. NCCL | not run: %s GPU(s), NCCL needs two | 0 |\n' "$gpus" >> "$summary"
fi

python - "$out/gpu_tests.xml" >> "$summary" <<'EOF'
import sys, xml.etree.ElementTree as ElementTree
try:
    cases = ElementTree.parse(sys.argv[1]).getroot().iter("testcase")
except (OSError, ElementTree.ParseError):
    sys.exit(0)
print("\n| GPU test | outcome | seconds |\n|---|---|---:|")
for case in cases:
    outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
    print(f"| {case.get('name')} | {outcome} | {float(case.get('time', 0)):.1f} |")
EOF
echo
cat "$summary"
