#!/bin/bash
# How the committed GPU results were produced: the quick profile of the suite on CIFAR-10, then the
# speed benchmark. Run from the project's root after `source .gpu/bootstrap.sh` (see ../shared/gpu);
# writes results.tgz and the logs to $OUT (or ./gpu-out). Each step has its own time limit so the
# results of the steps that finished always come back.
set -u
out=${OUT:-gpu-out}
work=${KT_WORK:-/tmp/kt-gpu}
profile=${KT_PROFILE:-quick}
mkdir -p "$out" "$work/$profile" "$work/speed"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$work/gpu.txt" 2>&1
timeout "${KT_QUICK_SECONDS:-310}" python3 -m pytest benchmarks/test_post.py -m gpu -p no:cacheprovider -rA \
  --kt-profile "$profile" --kt-results "$work/$profile" --benchmark-json "$work/$profile/benchmark.json" \
  > "$work/$profile.log" 2>&1
echo "suite exit code: $?" >> "$work/$profile.log"
timeout "${KT_SPEED_SECONDS:-220}" python3 -m pytest benchmarks/bench_speed.py -m gpu -p no:cacheprovider -rA \
  --kt-profile full --kt-results "$work/speed" --benchmark-json "$work/speed/benchmark.json" \
  > "$work/speed.log" 2>&1
echo "speed exit code: $?" >> "$work/speed.log"
tar czf "$out/results.tgz" -C "$work" .
cp "$work"/*.log "$out"/
