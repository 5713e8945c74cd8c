#!/usr/bin/env bash
# The accelerator check: what one GPU or TPU host does with Inception-v3, in about eight minutes.
#
#   bash scripts/accelerator_check.sh            # on a GPU or TPU host (detected; or say `gpu` / `tpu`)
#   bash scripts/accelerator_check.sh --dry_run  # the same sequence on the CPU with tiny settings
#
# It sets the project up (scripts/setup.sh), installs the accelerator's jax (the version requirements.txt
# pins), then prints one JSON line per run, each with "check" naming it:
#   train_bf16            Inception-v3 bfloat16 train img/s and MFU at batch 128 and 256 (kernels=auto)
#   train_bf16_lax        the same with kernels=lax named (what auto picks off the CPU)
#   max_batch             the largest batch whose bfloat16 train step fits, without and with remat=blocks
#   synthetic_loop        50 steps of `experiments.imagenet --config=v3 --config.dataset=synthetic`: the
#                         training loop's img/s between its last two log steps (compilation excluded)
# A run that fails or passes its time limit prints {"check": ..., "error": ...} and the script goes on.
# The dry run skips the installs and uses LeNet at 28 px, batches 8 and 16, two steps: it tests the script.
set -uo pipefail
cd "$(dirname "$0")/.."

dry_run=0
kind=''
for arg in "$@"; do
  case "$arg" in
    --dry_run) dry_run=1 ;;
    gpu|tpu) kind="$arg" ;;
    *) echo "error: unknown argument '$arg'; valid: --dry_run, gpu, tpu" >&2; exit 2 ;;
  esac
done

if [ "$dry_run" = 1 ]; then
  # LeNet has no BN, so the v1 preset (which sets none of a model's BN fields) carries it, and no blocks,
  # so remat is 'dots'; a 16 MB device keeps the largest-batch search short.
  preset=v1; model=lenet; size=28; batches=(8 16); steps=2; warmup=1; loop_steps=4; limit=300; remat=dots
  memory=(--memory_gb=0.016)
  python=${PYTHON:-.venv/bin/python}
else
  preset=v3; model=inception_v3; size=299; batches=(128 256); steps=10; warmup=2; loop_steps=50; limit=240
  remat=blocks
  memory=()
  bash scripts/setup.sh || exit 1
  if [ -z "$kind" ]; then
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then kind=gpu
    elif ls /dev/accel* /dev/vfio/[0-9]* >/dev/null 2>&1; then kind=tpu
    else echo "error: no GPU (nvidia-smi) or TPU (/dev/accel*) found; say gpu or tpu, or use --dry_run" >&2; exit 2
    fi
  fi
  version=$(sed -n 's/^jax==//p' requirements.txt)
  extra=$([ "$kind" = gpu ] && echo cuda12 || echo tpu)
  .venv/bin/python -m pip install -q --disable-pip-version-check "jax[$extra]==$version" || exit 1
  python=.venv/bin/python
fi

# report CHECK COMMAND...: runs COMMAND under the time limit; prints its last JSON line with "check" added,
# or an error record.
report() {
  local check=$1; shift
  local out err status
  out=$(mktemp); err=$(mktemp)
  timeout "$limit" "$@" >"$out" 2>"$err"
  status=$?
  "$python" - "$check" "$status" "$out" "$err" <<'PY'
import json, sys
check, status, out, err = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
lines = [line for line in open(out).read().splitlines() if line.startswith('{')]
if status == 0 and lines:
  print(json.dumps({'check': check, **json.loads(lines[-1])}), flush=True)
else:
  said = [line for line in open(err).read().splitlines() if line.strip()]
  reason = 'timed out' if status == 124 else (said[-1] if said else f'exit status {status}')
  print(json.dumps({'check': check, 'error': reason, 'exit_status': status}), flush=True)
PY
  rm -f "$out" "$err"
}

bench=("$python" -m experiments.benchmark --model="$model" --size="$size" --dtype=bfloat16 --steps="$steps"
       --warmup="$warmup" --json)
for batch in "${batches[@]}"; do
  report train_bf16 "${bench[@]}" --batch="$batch"
done
for batch in "${batches[@]}"; do
  report train_bf16_lax "${bench[@]}" --batch="$batch" --kernels=lax
done
for mode in '' "$remat"; do
  report max_batch "$python" -m experiments.benchmark --model="$model" --size="$size" --dtype=bfloat16 \
    --max_batch ${mode:+--remat=$mode} "${memory[@]}" --json
done

# The training loop on device-made batches; its rate between the last two log steps leaves compilation out.
workdir=$(mktemp -d)
batch=${batches[0]}
export python preset model size batch loop_steps workdir
loop() {
  "$python" -m experiments.imagenet --config="$preset" --config.model="$model" --config.dataset=synthetic \
    --config.image_size="$size" --config.dtype=bfloat16 --config.batch_size="$batch" \
    --config.total_steps="$loop_steps" --config.log_every_steps=$((loop_steps / 2)) \
    --config.checkpoint_every_steps=100000 --workdir="$workdir/run" >/dev/null || return $?
  "$python" - "$workdir/run/metrics.jsonl" "$batch" <<'PY'
import json, sys
records = [r for r in map(json.loads, open(sys.argv[1])) if 'train/images_per_sec' in r]
batch = int(sys.argv[2])
# Each record's rate is over all steps so far; two of them give the time between them.
(a, b) = records[-2:]
seconds = b['step'] * batch / b['train/images_per_sec'] - a['step'] * batch / a['train/images_per_sec']
print(json.dumps({'steps': b['step'], 'batch': batch, 'train_images_per_sec': (b['step'] - a['step']) * batch / seconds,
                  'input_wait': b.get('train/input_wait'), 'loss': b['train/loss']}))
PY
}
export -f loop
report synthetic_loop bash -c loop
rm -rf "$workdir"
