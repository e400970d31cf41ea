#!/bin/bash
# One GPU call: the steps named in KT_STEPS (default "speed,conv"), each under its own time limit, then
# everything as results.tgz in $OUT with the logs and tables (at most 8 files). Run from the project's root
# after `source .gpu/bootstrap.sh` (see ../shared/gpu). At its limit a step gets SIGINT and SIGKILL 10 s
# later; the benchmarks write every finished row as they go and the suite stores every finished pack, so
# what finished always comes back.
#
# Steps:
# - speed (KT_SPEED_SECONDS, 300): benchmarks/bench_speed.py (`pytest -m speed`). Defaults: keras.fit at
#   batch 64 (the baseline) and at batch 512 in bfloat16 (a different recipe, the reference point);
#   float32 packs of 16 and 48 with the images on the device; at 16 also the host-fed pack (last session's
#   path), bfloat16, the im2col convolution, and both; a kernel trace of the float32 and bfloat16 packs of 16.
#   ~250 s expected: ~20-25 s to compile a pack plus two epochs of 20480 images.
# - conv (KT_CONV_SECONDS, 120): benchmarks/bench_conv.py (`pytest -m speed`), one packed convolution written
#   five ways. ~60 s.
# - quick (KT_QUICK_SECONDS, 300): the post's reproduction (`pytest -m gpu`), profile KT_PROFILE (quick), with
#   KT_SEEDS (3) seeds in KT_PRECISION (mixed_bfloat16), from scratch into its own store, to compare its runs
#   and verdicts with the float32 runs of the same seeds in results/quick-h100/store (afterwards, on the
#   results that came back: `kt-dropout compare benchmarks/results/quick-h100/store STORE > comparison.md`).
#   ~220 s expected.
#
# KT_SPEED_WIDTHS (full) is the speed benchmark's --kt-profile (smoke shrinks the networks, for a dry run on a
# CPU); the benchmarks' own KT_SPEED_* / KT_CONV_* settings are defaulted below when unset.
set -u
out=${OUT:-gpu-out}
work=${KT_WORK:-/tmp/kt-gpu}
steps=${KT_STEPS:-speed,conv}
profile=${KT_PROFILE:-quick}
precision=${KT_PRECISION:-mixed_bfloat16}
export KT_SPEED_PACKS=${KT_SPEED_PACKS:-16,48}
export KT_SPEED_VARIANT_PACK=${KT_SPEED_VARIANT_PACK:-16}
export KT_SPEED_VARIANTS=${KT_SPEED_VARIANTS:-host,bf16,im2col,bf16+im2col}
export KT_SPEED_FIT_VARIANTS=${KT_SPEED_FIT_VARIANTS:-bf16+bs512}
export KT_SPEED_IMAGES=${KT_SPEED_IMAGES:-20480}  # a multiple of 5120: no partial batch, one compile per function
export KT_SPEED_EPOCHS=${KT_SPEED_EPOCHS:-2}
export KT_SPEED_TRACE=${KT_SPEED_TRACE:-f32,bf16}
export KT_SPEED_TRACE_STEPS=${KT_SPEED_TRACE_STEPS:-50}
mkdir -p "$out" "$work"
timing="$work/timing.txt"
touch "$timing"
step() {  # step NAME SECONDS LOG COMMAND...: runs COMMAND under its time limit, logs its exit code and wall time
  local name=$1 limit=$2 log=$3 start=$SECONDS code
  shift 3
  timeout -s INT -k 10 "$limit" "$@" > "$log" 2>&1
  code=$?
  echo "$name exit code: $code" >> "$log"
  echo "$name: exit code $code, $((SECONDS - start)) s (limit $limit s)" | tee -a "$timing"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$work/gpu.txt" 2>&1
env | grep -E '^(KT_|KERAS_BACKEND|XLA_)' | sort > "$work/settings-$(date +%s).txt"
bench=(-p no:cacheprovider -rA)

for name in ${steps//,/ }; do
  case $name in
    speed)
      mkdir -p "$work/speed"
      step speed "${KT_SPEED_SECONDS:-300}" "$work/speed.log" python3 -m pytest benchmarks/bench_speed.py -m speed "${bench[@]}" \
        --kt-profile "${KT_SPEED_WIDTHS:-full}" --kt-results "$work/speed" --benchmark-json "$work/speed/benchmark.json"
      cp "$work/speed/speed.md" "$out"/ 2>/dev/null ;;
    conv)
      mkdir -p "$work/conv"
      step conv "${KT_CONV_SECONDS:-120}" "$work/conv.log" python3 -m pytest benchmarks/bench_conv.py -m speed "${bench[@]}" \
        --kt-results "$work/conv" --benchmark-json "$work/conv/benchmark.json"
      cp "$work/conv/conv.md" "$out"/ 2>/dev/null ;;
    quick)
      results="$work/$profile-$precision"
      mkdir -p "$results"
      step quick "${KT_QUICK_SECONDS:-300}" "$work/quick.log" python3 -m pytest benchmarks/test_post.py -m gpu "${bench[@]}" \
        --kt-profile "$profile" --kt-seeds "${KT_SEEDS:-3}" --kt-precision "$precision" --kt-results "$results" \
        --benchmark-json "$results/benchmark.json"
      # Interrupted mid-benchmark, pytest-benchmark fails at session end and no report is written: write it
      # from the stored runs instead.
      if [ ! -f "$results/report-$profile/report.md" ] && [ -d "$results/store" ]; then
        step report 60 "$work/report.log" python3 -m kt_dropout.cli report "$results"
      fi ;;
    *) echo "KT_STEPS: unknown step $name (use speed, conv, quick)" | tee -a "$timing" ;;
  esac
done

tar czf "$out/results.tgz" -C "$work" .
cp "$work"/*.log "$timing" "$out"/
ls -l "$out"
