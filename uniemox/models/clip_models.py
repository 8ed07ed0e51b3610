"""This project's open_clip architectures (uniemox/assets/uniemox-clip-*.json), known by name once
this module is imported, and an open_clip model built with exactly the weights it is given: any
missing or unexpected key or other shape is refused in one line. Where the weights come from
(files, packaged weights, open_clip tags) is ``uniemox.exports.teacher``.
"""
import contextlib
import logging
from pathlib import Path
from typing import Iterator, Mapping, Optional

import open_clip
import torch
from torch import nn

from uniemox.errors import UserError

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def register_model_configs() -> None:
    """Make this project's open_clip configs (uniemox/assets/uniemox-clip-*.json) known by name."""
    for path in sorted(ASSETS.glob("uniemox-clip-*.json")):
        if path.stem not in open_clip.list_models():
            open_clip.add_model_config(path)


register_model_configs()


def few(names, n: int = 3) -> str:
    names = list(names)
    more = f", ... (+{len(names) - n})" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def load_checked(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str, model_name: str) -> None:
    """Load `sd` into `model`, refusing (with one line) anything but an exact key and shape match."""
    expected = model.state_dict()
    # TorchScript archives also store non-persistent buffers (open_clip's attn_mask): derived, not learned
    derived = {name for name, _ in model.named_buffers()} - set(expected)
    sd = {k: v for k, v in sd.items() if k not in derived}
    if "logit_scale" in sd and "logit_scale" in expected:  # scalar in some files, [1] in others
        sd["logit_scale"] = sd["logit_scale"].reshape(expected["logit_scale"].shape)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}"
              for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
    problems = [f"{len(lst)} {what} ({few(lst)})" for lst, what in
                ((missing, "missing keys"), (unexpected, "unexpected keys"), (shapes, "shape mismatches"))
                if lst]
    if problems:
        raise UserError(f"teacher weights {source} do not fit the open_clip model '{model_name}': "
                        + "; ".join(problems) + " - is the teacher model name right?")
    model.load_state_dict(sd, strict=True)


@contextlib.contextmanager
def quiet_random_init_warning() -> Iterator[None]:
    """open_clip warns 'initialized randomly' for every pretrained=None build; we load weights
    right after (or warn ourselves), so that line would only mislead."""
    root = logging.getLogger()
    drop = lambda record: "initialized randomly" not in record.getMessage()  # noqa: E731
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def check_model_name(model_name: str) -> None:
    if open_clip.get_model_config(model_name) is None:
        names = open_clip.list_models()
        raise UserError(f"unknown open_clip model '{model_name}' for the teacher "
                        f"(e.g. ViT-B-16, ViT-B-16-quickgelu, uniemox-clip-tiny; {len(names)} known, "
                        "see open_clip.list_models())")


def create_clip(model_name: str, state: Optional[Mapping[str, torch.Tensor]] = None, source: str = "",
                quick_gelu: bool = False) -> nn.Module:
    """The open_clip model ``model_name`` (fp32, CPU) with ``state`` loaded exactly (random weights
    where ``state`` is None: the caller says so)."""
    check_model_name(model_name)
    with quiet_random_init_warning():
        model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu)
    if state is not None:
        load_checked(model, state, source, model_name)
    return model
