#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one run (about 10 minutes on one H100), for a machine lent for a short time:
#
#   bash benchmarks/gpu_checks.sh [OUT_DIR]        # OUT_DIR (default: gpu_checks/) receives logs and run folders
#
# 1. the test suite's GPU-only test (fp16 loss scaling with two optimizers, skipped-step counting), which skips on CPU;
# 2. short runs in fp32, bf16 and fp16 with nn.SyncBatchNorm conversion (--sync-bn), each evaluated (FID, coverage)
#    and exported to ONNX with the onnxruntime check;
# 3. the training-speed benchmark against the literal port on the GPU (benchmarks/bench_train.py, GPU variants).
#
# Multi-process NCCL needs two GPUs: with one GPU this script cannot check it (two NCCL ranks may not share a device);
# with two or more it also runs 2 processes through launch/multi_gpu.yaml and checks the world size they recorded.
# Data: the KMNIST test split under $KMNIST_DATA_DIR (default ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_checks}
data=${KMNIST_DATA_DIR:-../shared/data}
mkdir -p "$out"
exec > >(tee "$out/gpu_checks.log") 2>&1

python - <<'EOF'
import torch
assert torch.cuda.is_available(), "no CUDA GPU visible: run this on a GPU machine"
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(), torch.cuda.device_count(), "GPU(s)")
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

echo "== 1. the GPU-only test"
python -m pytest -q tests/test_train.py::test_fp16_on_gpu_counts_skipped_steps -rs

echo "== 2. short runs: fp32, bf16, fp16 with --sync-bn; evaluation; ONNX export"
for precision in no bf16 fp16; do
    python train_ddp.py --data-dir "$data" --split test --no-download --max-steps 390 --sync-bn \
        --mixed-precision "$precision" --report-to none --output-dir "$out/runs" --run-name "$precision" \
        --log-every 100
    python -m gan.evaluate "$out/runs/$precision" --n 10000 --data-dir "$data" --split test
    python export.py "$out/runs/$precision"
done
python - "$out/runs" <<'EOF'
import json, sys
from pathlib import Path
for run in sorted(Path(sys.argv[1]).iterdir()):
    config = json.loads((run / "config.json").read_text())
    quality = json.loads((run / "evaluation.json").read_text())
    metrics = quality.get("metrics", quality)
    print(f"{run.name}: device {config['device']}, precision {config['mixed_precision']}, sync_bn {config['sync_bn']}, "
          f"skipped steps {config.get('skipped_steps')}, FID {metrics['fid']:.1f}, coverage {metrics['class_coverage']:.3f}")
EOF

if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
    echo "== 2b. NCCL: 2 processes"
    accelerate launch --config_file launch/multi_gpu.yaml --num_processes 2 train_ddp.py --data-dir "$data" \
        --split test --no-download --max-steps 100 --mixed-precision bf16 --report-to none \
        --output-dir "$out/runs_nccl" --run-name nccl
    python -c "import json,sys; c=json.load(open(sys.argv[1])); print('world size', c['world_size'], c['distributed_type'], 'sync_bn', c['sync_bn']); assert c['world_size'] == 2" \
        "$out/runs_nccl/nccl/config.json"
else
    echo "== 2b. NCCL: skipped, one GPU only"
fi

echo "== 3. training speed on the GPU"
python benchmarks/bench_train.py --data-dir "$data" --steps 300 --warmup 30 --repeats 2
