"""Person detectors, run ONCE at shard-writing time (never in the training step).

A detector maps an RGB uint8 array [H, W, 3] to ``(box, score)`` of the highest-scoring
person, box = [x0, y0, x1, y1] in pixels of that array, or None when no person is found.

* ``mediapipe``: mediapipe 0.10.21's bundled BlazePose (model_complexity=1, the only
  complexity that needs no download) with its segmentation mask; the box is the mask's
  extent (landmarks alone miss the top of the head). Single person by design. CPU, offline.
* ``torchvision``: a COCO detector from torchvision.models.detection (default
  fasterrcnn_mobilenet_v3_large_320_fpn); weights from a file (``--detector-weights``) or,
  on a machine with network, torchvision's own download.
"""
import os
from typing import List, Optional, Tuple

import numpy as np

from ..errors import UserError

Detection = Optional[Tuple[List[float], float]]
DETECTORS = ("none", "mediapipe", "torchvision")
COCO_PERSON = 1
# The last mediapipe release with the legacy pose solution and its model inside the wheel (later
# releases download their models); wheels up to CPython 3.12. pip cannot install it as a dependency
# (its metadata pins protobuf<5 and numpy<2), hence --no-deps on top of the 'detect' extra.
MEDIAPIPE_RELEASE = "0.10.21"
INSTALL_MEDIAPIPE = (f"run `bash launch/install.sh detect` (or `pip install \".[detect]\" && "
                     f"pip install --no-deps mediapipe=={MEDIAPIPE_RELEASE}`; Python up to 3.12)")


class MediapipePersonDetector:
    name = "mediapipe"

    def __init__(self, min_confidence: float = 0.5, mask_threshold: float = 0.5):
        try:
            import mediapipe as mp
            mp.solutions.pose  # noqa: B018 - releases after 0.10.21 have no bundled pose solution
        except (ImportError, AttributeError) as e:
            raise UserError(f"detector 'mediapipe' needs mediapipe {MEDIAPIPE_RELEASE} with its bundled pose "
                            f"model ({type(e).__name__}: {e}): {INSTALL_MEDIAPIPE}, or pass --detector "
                            "torchvision or none") from None
        self.version = mp.__version__
        self.mask_threshold = mask_threshold
        self.pose = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1,
                                           enable_segmentation=True,
                                           min_detection_confidence=min_confidence)

    def __call__(self, rgb: np.ndarray) -> Detection:
        h, w = rgb.shape[:2]
        result = self.pose.process(np.ascontiguousarray(rgb[..., :3]))
        if result.pose_landmarks is None:
            return None
        marks = result.pose_landmarks.landmark
        score = float(np.mean([m.visibility for m in marks]))
        mask = result.segmentation_mask
        if mask is not None and (mask > self.mask_threshold).any():
            ys, xs = np.nonzero(mask > self.mask_threshold)
            box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
        else:  # fall back to the visible landmarks
            pts = np.array([(m.x * w, m.y * h) for m in marks if m.visibility > 0.5] or
                           [(m.x * w, m.y * h) for m in marks])
            box = [float(np.clip(pts[:, 0].min(), 0, w)), float(np.clip(pts[:, 1].min(), 0, h)),
                   float(np.clip(pts[:, 0].max(), 0, w)), float(np.clip(pts[:, 1].max(), 0, h))]
        if box[2] - box[0] < 2 or box[3] - box[1] < 2:
            return None
        return box, score

    def close(self) -> None:
        self.pose.close()


class TorchvisionPersonDetector:
    name = "torchvision"

    def __init__(self, weights: Optional[str] = None, arch: str = "fasterrcnn_mobilenet_v3_large_320_fpn",
                 score_threshold: float = 0.5, allow_download: bool = True):
        import torch
        import torchvision
        from torchvision.models import detection

        self.version = torchvision.__version__
        self.score_threshold = score_threshold
        if arch not in detection.__dict__:
            raise UserError(f"unknown torchvision detector {arch!r}")
        if weights is not None:
            if not os.path.isfile(weights):
                raise UserError(f"detector weights file not found: {weights}")
            model = torchvision.models.get_model(arch, weights=None, weights_backbone=None, num_classes=91)
            try:
                if weights.endswith(".safetensors"):
                    from safetensors.torch import load_file
                    state = load_file(weights)
                else:
                    state = torch.load(weights, map_location="cpu", weights_only=True)
                model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
            except Exception as e:  # a wrong or damaged file is the user's to fix
                raise UserError(f"cannot load detector weights {weights}: {str(e).splitlines()[0]}") from None
        elif allow_download:
            try:
                model = torchvision.models.get_model(arch, weights="DEFAULT")
            except Exception as e:
                raise UserError(f"cannot fetch torchvision weights for {arch} ({type(e).__name__}); "
                                "pass --detector-weights FILE") from None
        else:
            model = torchvision.models.get_model(arch, weights=None, weights_backbone=None, num_classes=91)
        self.model = model.eval()
        self._torch = torch

    def __call__(self, rgb: np.ndarray) -> Detection:
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(rgb[..., :3])).permute(2, 0, 1).float() / 255.0
        with torch.inference_mode():
            out = self.model([x])[0]
        keep = (out["labels"] == COCO_PERSON) & (out["scores"] >= self.score_threshold)
        if not bool(keep.any()):
            return None
        scores = out["scores"][keep]
        best = int(scores.argmax())
        return [float(v) for v in out["boxes"][keep][best]], float(scores[best])

    def close(self) -> None:
        pass


def build_detector(name: str, weights: Optional[str] = None, **kw):
    """A detector by name; 'none' gives None (boxes only from annotations)."""
    if name == "none":
        return None
    if name == "mediapipe":
        if weights:
            raise UserError("--detector-weights is for the torchvision detector; mediapipe uses its bundled model")
        return MediapipePersonDetector(**kw)
    if name == "torchvision":
        return TorchvisionPersonDetector(weights=weights, **kw)
    raise UserError(f"unknown detector {name!r} (choose from {', '.join(DETECTORS)})")
