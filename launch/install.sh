#!/usr/bin/env bash
# Set up UniEmoX from nothing on this machine, into the current Python environment.
#
#   bash launch/install.sh            # the package (runs the main job)
#   bash launch/install.sh dev        # + test tools, the trackers and the person detector (up to Python 3.12)
#   bash launch/install.sh detect,gpu # any extras of setup.py, comma-separated
#
# torch: a working torch + torchvision pair (e.g. a cluster's CUDA build) is kept as it is.
# Where there is none, or torchvision cannot import with the torch present (torch 2.13.0+cpu,
# the only CPU wheel on some machines, has no matching torchvision), the pinned pair below is
# installed: a CUDA build that also runs on CPU-only machines.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${1:-}
TORCH_PAIR="torch==2.14.1 torchvision==0.29.1"
PIP="$PY -m pip install --disable-pip-version-check"

if $PY -c "import torch, torchvision" 2>/dev/null; then
  echo "[install] keeping torch $($PY -c 'import torch; print(torch.__version__)')"
elif $PY -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
  echo "[install] a CUDA torch is installed but torchvision does not import with it;" >&2
  echo "[install] install the torchvision release that matches it, then run this again." >&2
  exit 2
else
  echo "[install] installing $TORCH_PAIR"
  $PIP $TORCH_PAIR
fi

$PIP -e ".${EXTRAS:+[$EXTRAS]}"

# The person detector: mediapipe's release with a bundled pose model, whose metadata pins packages that
# conflict with tensorboard (protobuf<5, numpy<2, jax): installed with --no-deps on top of the `detect`
# extra (setup.py). It has wheels up to CPython 3.12; on a later Python the rest installs without it.
if [[ ",$EXTRAS," == *",dev,"* || ",$EXTRAS," == *",detect,"* ]]; then
  MEDIAPIPE=$(sed -n 's/^MEDIAPIPE_RELEASE = "\(.*\)"$/\1/p' uniemox/data/detector.py)
  if $PY -c 'import sys; sys.exit(sys.version_info[:2] > (3, 12))'; then
    $PIP --no-deps "mediapipe==$MEDIAPIPE"
  else
    echo "[install] mediapipe $MEDIAPIPE has no wheel for Python $($PY -c 'import platform; print(platform.python_version())')" \
         "(wheels up to 3.12): make_shards needs --detector torchvision or none here, and the tests that need it are skipped" >&2
  fi
fi
echo "[install] done: $($PY -c 'import torch, uniemox; print("uniemox", uniemox.__version__, "torch", torch.__version__)')"
