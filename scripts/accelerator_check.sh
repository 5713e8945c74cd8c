#!/usr/bin/env bash
# The accelerator check: what one GPU or TPU host does with Inception-v3 at 299 px in bfloat16, in at most
# eight minutes (installs included; ACCELERATOR_CHECK_BUDGET_S changes the 470 s).
#
#   bash scripts/accelerator_check.sh            # on a GPU or TPU host (detected; or say `gpu` / `tpu`)
#   bash scripts/accelerator_check.sh --dry_run  # the same sequence on the CPU with tiny settings (2-3 min)
#   PYTHON=python3 bash scripts/accelerator_check.sh --installed
#                                                # with the host's own Python and accelerator jax, installing
#                                                # nothing (an image without a package index); it needs jax,
#                                                # flax, optax, orbax-checkpoint, chex and ml_collections, not
#                                                # TensorFlow
#
# It sets the project up (scripts/setup.sh), installs the accelerator's jax (jax[cuda12] or jax[tpu] at the
# version requirements.txt pins), then prints one JSON line per run, in this order, each with "check"
# naming it and "batch", "kernels" (as resolved), "remat" and, where it applies, "train_images_per_sec"
# and "mfu":
#   train_bf16            train img/s and MFU at batch 128 and 256 (kernels=auto; experiments.benchmark)
#   train_bf16_lax        the same with kernels=lax named; where auto already resolved to lax (any host but
#                         a CPU) train_bf16's record is repeated with "same_as": "train_bf16", not run again
#   synthetic_loop        50 steps of `experiments.imagenet --config=v3 --config.dataset=synthetic` at
#                         batch 128: the loop's img/s between its last two log steps (compilation left
#                         out), its MFU from train_bf16's FLOPs per step, and the share spent waiting
#   max_batch             the largest batch whose train step fits (to within 64 images), without and
#                         with remat=blocks
# A run that fails, passes its time limit or finds the budget spent prints {"check": ..., "error": ...,
# "command": ...} and the script goes on; ACCELERATOR_CHECK_LOG=FILE keeps every run's stderr there. The dry run skips the installs and uses LeNet at 28 px, batches
# 8 and 16, two steps, a 6 MB device for the largest-batch search: it tests the script, not the models.
set -uo pipefail
cd "$(dirname "$0")/.."

dry_run=0
installed=0
kind=''
for arg in "$@"; do
  case "$arg" in
    --dry_run) dry_run=1 ;;
    --installed) installed=1 ;;
    gpu|tpu) kind="$arg" ;;
    *) echo "error: unknown argument '$arg'; valid: --dry_run, --installed, gpu, tpu" >&2; exit 2 ;;
  esac
done

if [ "$dry_run" = 1 ]; then
  # LeNet has no BN, so the v1 preset (which sets none of a model's BN fields) carries it, and no blocks,
  # so remat is 'dots'; a 6 MB device keeps the largest-batch search short.
  preset=v1; model=lenet; size=28; batches=(8 16); steps=2; warmup=1; loop_steps=4; limit=300; remat=dots
  memory=(--memory_gb=0.006)
  budget=${ACCELERATOR_CHECK_BUDGET_S:-900}
  python=${PYTHON:-.venv/bin/python}
else
  # Each run's limit; the budget (counted from the start, installs included) bounds the whole.
  preset=v3; model=inception_v3; size=299; batches=(128 256); steps=10; warmup=2; loop_steps=50; limit=150
  remat=blocks
  budget=${ACCELERATOR_CHECK_BUDGET_S:-470}
  # To within 64 images: four compilations of the step when the linear prediction holds.
  memory=(--max_batch_resolution=64)
  if [ "$installed" = 1 ]; then
    python=${PYTHON:-python3}
    "$python" -c 'import jax, sys; sys.exit(jax.default_backend() == "cpu")' || {
      echo "error: $python's jax finds no GPU or TPU (backend: cpu); --installed needs the accelerator's jax" >&2
      exit 2; }
    kind=installed
  else
    bash scripts/setup.sh || exit 1
    python=.venv/bin/python
  fi
  if [ -z "$kind" ]; then
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then kind=gpu
    elif ls /dev/accel* /dev/vfio/[0-9]* >/dev/null 2>&1; then kind=tpu
    else echo "error: no GPU (nvidia-smi) or TPU (/dev/accel*) found; say gpu or tpu, or use --dry_run" >&2; exit 2
    fi
  fi
  if [ "$installed" = 0 ]; then
    version=$(sed -n 's/^jax==//p' requirements.txt)
    extra=$([ "$kind" = gpu ] && echo cuda12 || echo tpu)
    "$python" -m pip install -q --disable-pip-version-check "jax[$extra]==$version" || exit 1
  fi
fi

workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
records=$workdir/records.jsonl   # what was printed, for the loop's MFU

# report CHECK COMMAND...: runs COMMAND under its time limit (the budget's remainder if less); prints its
# last JSON line with "check" added, or an error record naming the command.
report() {
  local check=$1; shift
  local out=$workdir/out err=$workdir/err status=-1 left=$((budget - SECONDS))
  : >"$out"; : >"$err"
  if [ "$left" -ge 30 ]; then
    timeout -k 10 "$((left < limit ? left : limit))" "$@" >"$out" 2>"$err"
    status=$?
  fi
  if [ -n "${ACCELERATOR_CHECK_LOG:-}" ]; then
    { echo "== $check (exit status $status): $*"; cat "$err"; } >>"$ACCELERATOR_CHECK_LOG"
  fi
  "$python" - "$check" "$status" "$out" "$err" "$budget" "$@" <<'PY' | tee -a "$records"
import json, sys
check, status, out, err, budget, command = *sys.argv[1:2], int(sys.argv[2]), *sys.argv[3:6], sys.argv[6:]
lines = [line for line in open(out).read().splitlines() if line.startswith('{')]
if status == 0 and lines:
  print(json.dumps({'check': check, **json.loads(lines[-1])}), flush=True)
else:
  said = [line for line in open(err).read().splitlines() if line.strip()]
  reason = ({-1: f'skipped: the {budget} s budget is spent', 124: 'timed out', 137: 'timed out (killed)'}.get(status)
            or (said[-1] if said else f'exit status {status}'))
  print(json.dumps({'check': check, 'error': reason, 'exit_status': status, 'command': ' '.join(command)}),
        flush=True)
PY
}

bench=("$python" -m experiments.benchmark --model="$model" --size="$size" --dtype=bfloat16 --steps="$steps"
       --warmup="$warmup" --json)
for batch in "${batches[@]}"; do
  report train_bf16 "${bench[@]}" --batch="$batch"
done
for batch in "${batches[@]}"; do
  # Off the CPU, auto is lax: the run would repeat train_bf16's to the compiled program.
  same=$("$python" - "$records" "$batch" <<'PY'
import json, sys
records, batch = sys.argv[1], int(sys.argv[2])
same = [r for r in map(json.loads, open(records)) if r.get('check') == 'train_bf16' and r.get('batch') == batch
        and r.get('kernels') == 'lax']
if same:
  print(json.dumps({**same[0], 'check': 'train_bf16_lax', 'same_as': 'train_bf16'}))
PY
)
  if [ -n "$same" ]; then echo "$same" | tee -a "$records"; continue; fi
  report train_bf16_lax "${bench[@]}" --batch="$batch" --kernels=lax
done
# The training loop on device-made batches; its rate between the last two log steps leaves compilation out.
batch=${batches[0]}
export python preset model size batch loop_steps workdir records
loop() {
  "$python" -m experiments.imagenet --config="$preset" --config.model="$model" --config.dataset=synthetic \
    --config.image_size="$size" --config.dtype=bfloat16 --config.batch_size="$batch" \
    --config.total_steps="$loop_steps" --config.log_every_steps=$((loop_steps / 2)) \
    --config.checkpoint_every_steps=100000 --workdir="$workdir/run" >/dev/null || return $?
  "$python" - "$workdir/run" "$batch" "$records" <<'PY'
import json, sys
run, batch, records = sys.argv[1], int(sys.argv[2]), sys.argv[3]
config = json.load(open(f'{run}/config.json'))
logged = [r for r in map(json.loads, open(f'{run}/metrics.jsonl')) if 'train/images_per_sec' in r]
# Each record's rate is over all steps so far; two of them give the time between them.
(a, b) = logged[-2:]
seconds = b['step'] * batch / b['train/images_per_sec'] - a['step'] * batch / a['train/images_per_sec']
rate = (b['step'] - a['step']) * batch / seconds
# The benchmark's step at this batch (same model, size, dtype and kernels setting) gives FLOPs and peak, and
# what kernels=auto resolved to on this host.
bench = [r for r in map(json.loads, open(records)) if r.get('check') == 'train_bf16' and r.get('batch') == batch
         and 'error' not in r]
bench = bench[0] if bench else {}
mfu = rate / batch * bench['flops_per_step'] / bench['peak_flops'] if bench else None
print(json.dumps({'model': config['model'], 'batch': batch, 'size': config['image_size'], 'dtype': config['dtype'],
                  'kernels': bench.get('kernels', config['kernels']), 'remat': config['remat'], 'steps': b['step'],
                  'train_images_per_sec': rate, 'mfu': mfu, 'input_wait': b.get('train/input_wait'),
                  'loss': b['train/loss']}))
PY
}
export -f loop
report synthetic_loop bash -c loop

# Last: each search compiles the train step several times (tens of seconds each for Inception-v3).
for mode in '' "$remat"; do
  report max_batch "$python" -m experiments.benchmark --model="$model" --size="$size" --dtype=bfloat16 \
    --max_batch ${mode:+--remat=$mode} "${memory[@]}" --json
done
