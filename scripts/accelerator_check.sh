#!/usr/bin/env bash
# The accelerator check: what one GPU or TPU host does with Inception-v3 at 299 px in bfloat16, in at most
# eight minutes (installs included; ACCELERATOR_CHECK_BUDGET_S changes the 470 s).
#
#   bash scripts/accelerator_check.sh            # on a GPU or TPU host (detected; or say `gpu` / `tpu`)
#   bash scripts/accelerator_check.sh --dry_run  # the same sequence on the CPU with tiny settings (2-3 min)
#   bash scripts/accelerator_check.sh --levers   # instead: one row per performance lever (below)
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
#   train_bf16            train img/s and MFU at batch 128 and 256 (kernels=auto; experiments.benchmark);
#                         the 256 run also traces three steps and adds "breakdown": the step's time by kind
#                         of work (the convolutions' forward pass and two backward products, BatchNorm and
#                         other fusions, layout changes, the optimizer update, the device's idle gaps) and
#                         the 15 longest kernels (experiments/op_profile.py)
#   train_bf16_lax        the same with kernels=lax named; where auto already resolved to lax (any host but
#                         a CPU) train_bf16's record is repeated with "same_as": "train_bf16", not run again
#   peer_torchvision      torchvision's inception_v3 at batch 256 under PyTorch's AMP (bfloat16) in
#   peer_torchvision_compile   channels-last order, eager and torch.compile'd, timed as ours
#   synthetic_loop        50 steps of `experiments.imagenet --config=v3 --config.dataset=synthetic` at
#                         batch 128: the loop's img/s between its last two log steps (compilation left
#                         out), its MFU from train_bf16's FLOPs per step, and the share spent waiting
#   max_batch             the largest batch whose train step fits (to within 64 images), without and
#                         with remat=blocks
# With --levers it prints instead, at batch 256, one "lever_*" row per change against the same run's
# "lever_baseline", most promising first, and last a "levers_vs_baseline" line (each row's images/s over
# the baseline's):
# kernels=gpu (BatchNorm in bfloat16), XLA without command buffers, XLA without autotuning, batch 512 with
# and without remat, batch 384, no buffer donation; rows the budget leaves out say so.
# A run that fails, passes its time limit or finds the budget spent prints {"check": ..., "error": ...,
# "command": ...} and the script goes on; ACCELERATOR_CHECK_LOG=FILE keeps every run's stderr there. The dry run skips the installs and uses LeNet at 28 px, batches
# 8 and 16, two steps, a 6 MB device for the largest-batch search: it tests the script, not the models.
set -uo pipefail
cd "$(dirname "$0")/.."

dry_run=0
installed=0
levers=0
kind=''
for arg in "$@"; do
  case "$arg" in
    --dry_run) dry_run=1 ;;
    --installed) installed=1 ;;
    --levers) levers=1 ;;
    gpu|tpu) kind="$arg" ;;
    *) echo "error: unknown argument '$arg'; valid: --dry_run, --installed, --levers, gpu, tpu" >&2; exit 2 ;;
  esac
done

if [ "$dry_run" = 1 ]; then
  # LeNet has no BN, so the v1 preset (which sets none of a model's BN fields) carries it, and no blocks,
  # so remat is 'dots'; a 6 MB device keeps the largest-batch search short.
  preset=v1; model=lenet; size=28; batches=(8 16); steps=2; warmup=1; loop_steps=4; limit=300; remat=dots
  # The peer has no LeNet: torchvision's GoogLeNet, eager (torch.compile on a CPU compiles C++ for minutes).
  peer_model=googlenet; peer_size=32; peers=(torchvision)
  memory=(--memory_gb=0.006)
  budget=${ACCELERATOR_CHECK_BUDGET_S:-900}
  python=${PYTHON:-.venv/bin/python}
else
  # Each run's limit; the budget (counted from the start, installs included) bounds the whole.
  preset=v3; model=inception_v3; size=299; batches=(128 256); steps=10; warmup=2; loop_steps=50; limit=150
  remat=blocks
  peer_model=inception_v3; peer_size=299; peers=(torchvision torchvision_compile)
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
big=${batches[-1]}

if [ "$levers" = 1 ]; then
  report lever_baseline "${bench[@]}" --batch="$big"
  report lever_kernels_gpu "${bench[@]}" --batch="$big" --kernels=gpu
  report lever_no_command_buffer env XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=" \
    "${bench[@]}" --batch="$big"
  report lever_no_autotuning env XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0" "${bench[@]}" --batch="$big"
  report lever_batch_2x "${bench[@]}" --batch=$((big * 2))
  report lever_batch_2x_remat "${bench[@]}" --batch=$((big * 2)) --remat="$remat"
  report lever_batch_1.5x "${bench[@]}" --batch=$((big * 3 / 2))
  report lever_no_donation "${bench[@]}" --batch="$big" --nodonate
  # Last, every row against the baseline of this run (the same host, the same hour): images/s over the
  # baseline's, null where a row or the baseline did not run.
  "$python" - "$records" <<'PY'
import json, sys
records = [json.loads(line) for line in open(sys.argv[1])]
base = next((r for r in records if r['check'] == 'lever_baseline' and 'error' not in r), None)
print(json.dumps({'check': 'levers_vs_baseline', 'baseline_images_per_sec': base and base['train_images_per_sec'],
                  **{r['check']: (r['train_images_per_sec'] / base['train_images_per_sec']
                                  if base and 'error' not in r else None)
                     for r in records if r['check'] != 'lever_baseline'}}))
PY
  exit 0
fi

for batch in "${batches[@]}"; do
  # The larger batch is also profiled (after its timed steps): where its step's time goes.
  profile=()
  [ "$batch" = "$big" ] && profile=(--profile="$workdir/profile")
  report train_bf16 "${bench[@]}" --batch="$batch" "${profile[@]}"
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
# The same network in PyTorch on the same device (AMP to bfloat16, channels-last; then torch.compile), at
# the larger batch and by the same timing rule; a host without torch prints an error row for it.
for peer in "${peers[@]}"; do
  report "peer_$peer" "$python" -m experiments.benchmark --model="$peer_model" --size="$peer_size" \
    --dtype=bfloat16 --steps="$steps" --warmup="$warmup" --batch="$big" --peer="$peer" --json
done
# The training loop on device-made batches; its last logging window leaves compilation out.
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
# Each record's rate is its logging window's: the last window's leaves compilation out.
b = logged[-1]
rate = b['train/images_per_sec']
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
