#!/usr/bin/env bash
# GPU acceptance of issue 14 on one GPU, in under 10 minutes:
#   1. the GPU tests (tests/test_gpu.py),
#   2. bench attention --shape bert-base, bf16, fwd+bwd, BigBird pattern: flex vs dense
#      SDPA (and hf-bigbird when transformers is installed) at N=4096 and 16384,
#   3. bench model --shape bert-base, bf16, n=4096: dense, hf-bigbird, bigbird,
#      ernie-sparse, ernie-sparse+saor,
#   4. one PASS/FAIL line per target (python -m ernie_sparse.bench.targets).
# Every step runs under `timeout`, and a failed step or target does not stop the later ones.
#
# Usage: scripts/gpu-check.sh [--dry-run] [OUT_DIR]
#   OUT_DIR   where the tables go (default: $OUT if set, else runs/gpu-check):
#             summary.md (machine, commit, steps, targets), log.txt (every step's output),
#             attention/ and model/ (results.json, table.md)
#   --dry-run (or GPU_CHECK_DRY=1): CPU, float32, tiny sizes, blocked in place of flex;
#             proves the plumbing in about a minute; its numbers and verdicts mean nothing.
# Exit status: 0 when every step ran and every target passed, 1 otherwise.
set -euo pipefail

dry=${GPU_CHECK_DRY:-0}
out=""
for arg in "$@"; do
  case $arg in
    --dry-run) dry=1 ;;
    -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "gpu-check: unknown option $arg (see --help)" >&2; exit 2 ;;
    *)
      [[ -z $out ]] || { echo "gpu-check: one output folder, got $out and $arg" >&2; exit 2; }
      out=$arg
      ;;
  esac
done
out=${out:-${OUT:-runs/gpu-check}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

# Seconds per step: on the GPU, flex compiles each new shape (tens of seconds) inside them.
tests_timeout=170 attention_timeout=150 model_timeout=240
if [[ $dry == 1 ]]; then
  tests_timeout=120 attention_timeout=120 model_timeout=120
  # One thread: on a small shared CPU, OpenMP spin-waits make tiny steps 10x slower; no C++
  # build of the fused CPU kernel (auto takes blocked, after one warning).
  export OMP_NUM_THREADS=1 ERNIE_SPARSE_FUSED=0
  device=cpu dtype=float32 sparse=blocked lengths=256,512 model_length=256
  attention_sizes=(--batch 1 --heads 2 --head-dim 16 --block-size 16 --num-random 1)
  model_sizes=(--batch 1 --hidden-size 32 --num-layers 1 --num-heads 2 --mlp-size 64
    --block-size 16)
else
  device=cuda dtype=bfloat16 sparse=flex lengths=4096,16384 model_length=4096
  attention_sizes=() model_sizes=()
fi
if "$python" -c 'import importlib.util as u; exit(u.find_spec("transformers") is None)'; then
  hf_backend=,hf-bigbird hf_model=hf-bigbird,
else
  hf_backend="" hf_model=""
fi

summary=$out/summary.md log=$out/log.txt
: >"$log"
{
  echo "# GPU check ($([[ $dry == 1 ]] && echo "dry run on CPU: numbers mean nothing" || echo "GPU"))"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "- git commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(
    [[ -n $(git status --porcelain 2>/dev/null) ]] && echo " (working tree has changes)")"
  if command -v nvidia-smi >/dev/null; then
    echo "- nvidia-smi -L: $(nvidia-smi -L 2>&1 | paste -sd ';' -)"
  else
    echo "- nvidia-smi -L: no nvidia-smi here"
  fi
  "$python" - <<'EOF'
import importlib.metadata as metadata
import torch
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
print(f"- torch {torch.__version__} (CUDA {torch.version.cuda}), GPU seen by torch: {gpu}")
try:
    print(f"- transformers {metadata.version('transformers')}")
except metadata.PackageNotFoundError:
    print("- transformers: not installed (no hf-bigbird)")
EOF
  echo
  echo "## steps"
  echo
} >"$summary"
cat "$summary"

failed=0
run_step() { # name seconds command...: its output to the log and the screen, its verdict to summary
  local name=$1 seconds=$2 status=0 started=$SECONDS verdict
  shift 2
  echo "== $name (timeout ${seconds}s): $*" | tee -a "$log"
  timeout --kill-after=10 "$seconds" "$@" 2>&1 | tee -a "$log" || status=$?
  case $status in
    0) verdict=ok ;;
    124 | 137) verdict="timed out after ${seconds}s" ;;
    *) verdict="failed (exit $status)" ;;
  esac
  [[ $status == 0 ]] || failed=1
  echo "- $name: $verdict ($((SECONDS - started)) s)" | tee -a "$summary"
}

run_step tests "$tests_timeout" "$python" -m pytest -q -p no:cacheprovider tests/test_gpu.py
run_step bench-attention "$attention_timeout" "$python" -m ernie_sparse bench attention \
  --shape bert-base "${attention_sizes[@]}" --device "$device" --dtype "$dtype" \
  --modes fwd+bwd --seq-lens "$lengths" --backends "$sparse,dense$hf_backend" \
  --repeats 5 --no-plot --out "$out/attention"
run_step bench-model "$model_timeout" "$python" -m ernie_sparse bench model \
  --shape bert-base "${model_sizes[@]}" --device "$device" --dtype "$dtype" \
  --seq-lens "$model_length" --models "dense,${hf_model}bigbird,ernie-sparse,ernie-sparse+saor" \
  --repeats 5 --no-plot --out "$out/model"

{
  echo
  echo "## targets"
  echo
} >>"$summary"
status=0
verdicts=$(timeout 60 "$python" -m ernie_sparse.bench.targets --attention "$out/attention" \
  --model "$out/model" --sparse-backend "$sparse" --attention-lengths "$lengths" \
  --model-length "$model_length" 2>&1) || status=$?
sed 's/^/- /' <<<"$verdicts" >>"$summary"
[[ $status == 0 ]] || failed=1
for table in attention model; do
  if [[ -f $out/$table/table.md ]]; then
    printf '\n## bench %s\n\n' "$table" >>"$summary"
    cat "$out/$table/table.md" >>"$summary"
  fi
done
echo
sed -n '/^## targets/,$p' "$summary"
echo
echo "gpu-check: wrote $summary, $log, $out/attention, $out/model"
exit "$failed"
