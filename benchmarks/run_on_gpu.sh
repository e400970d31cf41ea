#!/bin/bash
# The one GPU call: (a) the suite's quick profile on CIFAR-10, (b) the speed benchmark -- keras.fit, a
# float32 pack and its variants (bfloat16, steps per execution) side by side, with a kernel trace of two
# rows -- and (c) everything as results.tgz in $OUT (with the logs, timing.txt and speed.md: at most 6
# files). Run from the project's root after `source .gpu/bootstrap.sh` (see ../shared/gpu). Each step has
# its own time limit; at the limit it gets SIGINT (the speed benchmark has written every finished row
# already; the suite's report is written from its store if pytest could not) and SIGKILL 10 s later, so
# what finished always comes back.
#
# Defaults, for one H100 within ~9 minutes (last session: first-epoch compile ~15 s at K=1 and ~35 s at
# K=16-20 with partial batches; float32 packs ~0.78 s per model-epoch of 50k images):
# (a) KT_QUICK_SECONDS=300: quick with 5 seeds trains ~400 s from scratch, but KT_QUICK_STORE (default: the
#     committed store of the last GPU session, seeds 0-2) is copied in first and reused -- the runs are keyed
#     by configuration, recipe, seed, epochs, backend and data, so only seeds 3-4 train (~200 s);
# (b) KT_SPEED_SECONDS=170 for ~145 s expected: keras.fit ~13 s, four K=16 packs at ~20-25 s compile
#     (20480 images leave no partial batch) + 2 epochs each (float32 ~5 s, bfloat16 hopefully less), two
#     traces ~5 s; the float32+spe16 row runs last, the one to lose if compiles run long;
# (c) seconds. With bootstrap (~30 s): ~540 s.
#
# Settings: KT_PROFILE (quick), KT_SEEDS (5), KT_QUICK_STORE (empty: from scratch), KT_QUICK_SECONDS, KT_QUICK_K (a pytest -k expression;
# none), KT_SPEED_SECONDS, KT_SPEED_WIDTHS (the --kt-profile of the speed benchmark: full), and the
# benchmark's own KT_SPEED_* (see benchmarks/bench_speed.py), defaulted below.
set -u
out=${OUT:-gpu-out}
work=${KT_WORK:-/tmp/kt-gpu}
profile=${KT_PROFILE:-quick}
export KT_SPEED_PACKS=${KT_SPEED_PACKS:-16}
export KT_SPEED_VARIANT_PACK=${KT_SPEED_VARIANT_PACK:-16}
export KT_SPEED_VARIANTS=${KT_SPEED_VARIANTS:-bf16,bf16+spe16,spe16}
export KT_SPEED_IMAGES=${KT_SPEED_IMAGES:-20480}  # a multiple of 5120: no partial batch, one compile per function
export KT_SPEED_EPOCHS=${KT_SPEED_EPOCHS:-2}
export KT_SPEED_TRACE=${KT_SPEED_TRACE:-f32,bf16}
export KT_SPEED_TRACE_STEPS=${KT_SPEED_TRACE_STEPS:-50}
select=()
if [ -n "${KT_QUICK_K:-}" ]; then select=(-k "$KT_QUICK_K"); fi
mkdir -p "$out" "$work/$profile" "$work/speed"
quick_store=${KT_QUICK_STORE-benchmarks/results/quick-h100/store}
if [ -n "$quick_store" ]; then cp -r "$quick_store" "$work/$profile/store"; fi
timing="$work/timing.txt"
: > "$timing"
step() {  # step NAME SECONDS LOG COMMAND...: runs COMMAND under its time limit, logs its exit code and wall time
  local name=$1 limit=$2 log=$3 start=$SECONDS code
  shift 3
  timeout -s INT -k 10 "$limit" "$@" > "$log" 2>&1
  code=$?
  echo "$name exit code: $code" >> "$log"
  echo "$name: exit code $code, $((SECONDS - start)) s (limit $limit s)" | tee -a "$timing"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$work/gpu.txt" 2>&1
env | grep -E '^(KT_|KERAS_BACKEND|XLA_)' | sort > "$work/settings.txt"

step suite "${KT_QUICK_SECONDS:-300}" "$work/$profile.log" \
  python3 -m pytest benchmarks/test_post.py -m gpu -p no:cacheprovider -rA "${select[@]}" \
  --kt-profile "$profile" --kt-seeds "${KT_SEEDS:-5}" --kt-results "$work/$profile" \
  --benchmark-json "$work/$profile/benchmark.json"
# Interrupted in the middle of a benchmark, pytest-benchmark fails in its session-end hook and the suite's
# report is not written: write it from the stored runs instead.
stored=$(find "$work/$profile/store" -name '*.json' ! -name store.json 2>/dev/null | wc -l)
if [ ! -f "$work/$profile/report-$profile/report.md" ] && [ "$stored" -gt 0 ]; then
  step report 45 "$work/report.log" python3 -m kt_dropout.cli report "$work/$profile"
fi

step speed "${KT_SPEED_SECONDS:-170}" "$work/speed.log" \
  python3 -m pytest benchmarks/bench_speed.py -m gpu -p no:cacheprovider -rA \
  --kt-profile "${KT_SPEED_WIDTHS:-full}" --kt-results "$work/speed" --benchmark-json "$work/speed/benchmark.json"

tar czf "$out/results.tgz" -C "$work" .
cp "$work"/*.log "$timing" "$out"/
if [ -f "$work/speed/speed.md" ]; then cp "$work/speed/speed.md" "$out"/; fi
ls -l "$out"
