"""Predictions for image files: listing, the evaluation view, the person view, top-k, output.

The image goes through exactly the evaluation transform of the reader (resize the short side
to S / 0.875, bicubic, centre crop S, ImageNet mean/std), so a file scores as its sample does
in evaluation. ``person_view``: the detector's crop of the main person is scored as a second
view; a classifier's two probability vectors are averaged (no person: the scene view alone),
the zero-shot model fuses the two CLS tokens as in pretraining (no person: B = the image).
"""
import logging
import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from uniemox.data.images import check_declared_size, to_rgb
from uniemox.data.sources import IMAGE_EXTS
from uniemox.data.transforms import EvalTransform, crop_person
from uniemox.errors import UserError

from .scores import top_k_rows



def list_images(paths: Sequence[str]) -> List[str]:
    """Files as given, folders searched recursively (sorted); nothing found is an error. What is
    not a regular file (a FIFO, a device, a socket) is skipped with a line: reading it could block."""
    out: List[str] = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(d, f) for d, _, files in os.walk(path) for f in files
                           if f.lower().endswith(IMAGE_EXTS))
            if not found:
                raise UserError(f"no image files under {path}")
            out += [f for f in found if _regular(f)]
        elif not os.path.exists(path):
            raise UserError(f"not found: {path}")
        elif _regular(path):
            out.append(path)
    if not out:
        raise UserError("no image given")
    return out


def _regular(path: str) -> bool:
    if os.path.isfile(path):
        return True
    logging.getLogger(__name__).warning("skipped %s: not a regular file", path)
    return False


@dataclass
class ImageViews:
    path: str
    scene: Optional[torch.Tensor]          # [3, S, S], None when unreadable
    person: Optional[torch.Tensor] = None  # the person crop's view, None when no person
    box: Optional[List[float]] = None
    error: Optional[str] = None
    detected: bool = False                 # a detector looked at this image


def load_views(paths: Iterable[str], size: int, detector=None) -> Iterable[ImageViews]:
    """Evaluation views of each file; an unreadable file gives an entry with ``error`` set."""
    transform = EvalTransform(size)
    for path in paths:
        try:
            with Image.open(path) as f:
                img = to_rgb(check_declared_size(f))
        except Exception as e:  # reported per file, never fatal
            yield ImageViews(path, None, error=f"{type(e).__name__}: {e}")
            continue
        views = ImageViews(path, transform(img))
        if detector is not None:
            views.detected = True
            found = detector(np.asarray(img))
            if found is not None:
                views.box = [round(v, 2) for v in found[0]]
                views.person = transform(crop_person(img, found[0]))
        yield views


@torch.no_grad()
def predict_views(score: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], views: List[ImageViews],
                  class_names: Sequence[str], top_k: int, batch_size: int = 32) -> List[Dict]:
    """``score(scene [B,3,S,S], person [B,3,S,S], has_person bool [B]) -> probabilities [B, C]``
    (a ``Scorer``'s; uint8 views, person = scene where no person was found) over ``views``; one
    result dict per file, in order."""
    results: List[Dict] = []
    ok = [v for v in views if v.scene is not None]
    probs: Dict[str, np.ndarray] = {}
    for i in range(0, len(ok), batch_size):
        chunk = ok[i:i + batch_size]
        scene = torch.stack([v.scene for v in chunk])
        person = torch.stack([v.person if v.person is not None else v.scene for v in chunk])
        has = torch.tensor([v.person is not None for v in chunk])
        p = score(scene, person, has).float().cpu().numpy()
        for v, row in zip(chunk, p):
            probs[v.path] = row
    for v in views:
        if v.scene is None:
            results.append({"path": v.path, "error": v.error})
            continue
        row = {"path": v.path, "top": top_k_rows(probs[v.path][None], class_names, top_k)[0]}
        if v.detected:
            row["person_box"] = v.box
        results.append(row)
    return results


def format_table(results: List[Dict]) -> str:
    lines = []
    for row in results:
        if "error" in row:
            lines.append(f"{row['path']}: error: {row['error']}")
            continue
        top = "  ".join(f"{t['label']} {t['prob']:.3f}" for t in row["top"])
        person = ""
        if "person_box" in row:
            person = "  [person " + (",".join(f"{v:.0f}" for v in row["person_box"]) if row["person_box"]
                                     else "none") + "]"
        lines.append(f"{row['path']}: {top}{person}")
    return "\n".join(lines)
