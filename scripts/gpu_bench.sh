#!/usr/bin/env bash
# The whole GPU benchmark in one command: IMPACT-base shapes, 10 s clips,
# batch 1/8/64, K = 64 and 16, bf16, with and without torch.compile, for the student, the
# guidance-distilled student (one backbone row per clip), the teacher, the caption-only
# one-pass student and the backbone-only floor (random weights at
# the config's shape: latency does not depend on the weights), peak memory included.
#
#   bash scripts/gpu_bench.sh OUT_DIR
# OUT_DIR gets bench.jsonl (one JSON line per generator x batch x K x compile, with the
# machine, device, dtype and torch version), one markdown table per (K, compile) and
# env.txt. Sized for under ~8 minutes on one H200; a CPU smoke test:
#   CONFIG=tiny DEVICE=cpu DTYPE=fp32 BATCHES=2 KS=2 COMPILE="0" DURATION=1 \
#       bash scripts/gpu_bench.sh /tmp/gpu_bench_smoke
# Knobs (environment): CONFIG (impact_base), DEVICE (cuda), DTYPE (bf16), BATCHES
# (1,8,64), KS ("64 16"), COMPILE ("0 1"), DURATION (10), REPEATS (3), EXTRA (more
# tools/bench.py flags or key=value overrides).
# Like scripts/gpu_teacher.sh it installs wheels carried in .whl/ when that folder exists
# (an offline GPU machine).
set -euo pipefail
out=${1:?usage: bash scripts/gpu_bench.sh OUT_DIR}
cd "$(dirname "$0")/.."
# shellcheck source=scripts/gpu_env.sh
source scripts/gpu_env.sh "$out"  # offline wheels, the package's entry points, env.txt
for k in ${KS:-64 16}; do
  for compile in ${COMPILE:-0 1}; do
    flag=""; [ "$compile" = "1" ] && flag="--compile"
    # shellcheck disable=SC2086  # EXTRA is a list of flags / overrides
    python3 tools/bench.py --config "${CONFIG:-impact_base}" --device "${DEVICE:-cuda}" \
      --dtype "${DTYPE:-bf16}" --batch-sizes "${BATCHES:-1,8,64}" --iterations "$k" \
      --duration "${DURATION:-10}" --repeats "${REPEATS:-3}" $flag \
      --json "$out/bench.jsonl" --markdown "$out/bench-k$k-compile$compile.md" ${EXTRA:-}
  done
done
echo "wrote $out/bench.jsonl"
