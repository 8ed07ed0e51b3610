#!/usr/bin/env bash
# Fetch, on this machine, the wheels the lent GPU machine's image lacks, into .whl/ at the project root
# (ignored by git; carried to the GPU machine with the run, which has no network). benchmarks/gpu/run.sh
# installs them there with `pip install --no-index --no-deps --target`: docs/gpu.md.
#
#   bash benchmarks/gpu/wheels.sh          # about 11 MB
#
# The image runs CPython 3.12 on x86-64 and already holds torch, triton, timm, tensorboard, numpy,
# pillow, safetensors, pyyaml, tqdm, huggingface-hub, regex, einops, msgpack, ninja, psutil,
# py-cpuinfo and opencv-python-headless. What it lacks: DeepSpeed (and its pydantic / hjson), open_clip
# (and ftfy / wcwidth), WebDataset (and braceexpand), and xformers built for the image's torch.
set -euo pipefail
cd "$(dirname "$0")/../.."
TARGET_PYTHON=${TARGET_PYTHON:-3.12}
PY=${PYTHON:-python3}
mkdir -p .whl

# binary wheels for the GPU machine's interpreter and platform, not this one's
PLATFORMS=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$tag")
done
$PY -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: -d .whl \
  --python-version "$TARGET_PYTHON" --implementation cp "${PLATFORMS[@]}" \
  xformers==0.0.35 open-clip-torch==3.3.0 webdataset==1.0.2 braceexpand ftfy wcwidth \
  hjson pydantic pydantic-core annotated-types typing-inspection typing-extensions

# DeepSpeed publishes a source archive only; without torch at build time it builds a pure-Python
# wheel (its ops compile just in time on the GPU machine), which installs on any interpreter.
$PY -m pip wheel -q --disable-pip-version-check --no-deps -w .whl deepspeed==0.19.8

ls -1 .whl
du -sh .whl
