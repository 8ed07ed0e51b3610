"""Person detectors on real images: mediapipe (bundled model, offline) and torchvision."""
import os
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
import torch
from matplotlib import cbook
from PIL import Image

from uniemox.data.detector import MEDIAPIPE_RELEASE, TorchvisionPersonDetector, build_detector
from uniemox.errors import UserError
from subprocesses import child_env


def _grace_hopper():
    return np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))


@pytest.mark.parametrize("name,face", [("astronaut", (250, 150)), ("grace_hopper", (260, 220))])
def test_mediapipe_finds_the_person(mediapipe_detector, name, face):
    img = skimage.data.astronaut() if name == "astronaut" else _grace_hopper()
    found = mediapipe_detector(img)
    assert found is not None
    (x0, y0, x1, y1), score = found
    h, w = img.shape[:2]
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h and 0 < score <= 1
    assert x0 < face[0] < x1 and y0 < face[1] < y1  # the box holds the face
    assert (x1 - x0) * (y1 - y0) > 0.25 * w * h


@pytest.mark.parametrize("name", ["chelsea", "coffee"])
def test_mediapipe_finds_no_person_on_a_cat_or_a_cup(mediapipe_detector, name):
    assert mediapipe_detector(getattr(skimage.data, name)()) is None


def test_torchvision_detector_builds_and_runs_with_random_weights(tmp_path):
    torch.manual_seed(0)
    det = TorchvisionPersonDetector(weights=None, allow_download=False, score_threshold=0.0)
    path = tmp_path / "detector.pt"
    torch.save(det.model.state_dict(), path)
    loaded = build_detector("torchvision", str(path), score_threshold=0.0)
    for key, value in det.model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key])
    img = skimage.data.astronaut()[::8, ::8].copy()  # 64 x 64
    found = loaded(img)
    if found is not None:  # random weights may or may not call something a person
        (x0, y0, x1, y1), score = found
        assert 0 <= x0 <= x1 <= 64 and 0 <= y0 <= y1 <= 64 and score >= 0


def test_detector_bad_input(tmp_path):
    with pytest.raises(UserError, match="weights file not found"):
        build_detector("torchvision", str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot load detector weights"):
        build_detector("torchvision", str(tmp_path / "junk.pt"))
    with pytest.raises(UserError, match="unknown detector"):
        build_detector("yolo")
    with pytest.raises(UserError, match="only for|is for the torchvision"):
        build_detector("mediapipe", str(tmp_path / "junk.pt"))


def test_a_mediapipe_without_the_pose_solution_is_refused_in_one_line(tmp_path):
    """Releases after 0.10.21 (what `pip install mediapipe` gives, and all Python 3.13 can get) have no
    bundled pose model: make_shards names the install command instead of an AttributeError."""
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
                          "--target", str(site), "mediapipe==0.10.35"], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-2000:]
    (tmp_path / "src" / "person").mkdir(parents=True)
    Image.fromarray(skimage.data.astronaut()).save(tmp_path / "src" / "person" / "astronaut.jpg")
    proc = subprocess.run([sys.executable, "-m", "uniemox.launch.make_shards", str(tmp_path / "src"),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                          env=child_env({"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}))
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in proc.stderr
    assert f"needs mediapipe {MEDIAPIPE_RELEASE}" in line and "bash launch/install.sh detect" in line
