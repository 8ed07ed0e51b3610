"""The project's encoders under timm: registered names and timm's file layout.

Importing this module registers every name of ``uniemox.models.registry`` with timm
(nothing else imports it, so timm's registry is only touched on request)::

    import timm, uniemox.models.timm_models
    model = timm.create_model("uniemox_vit_base_patch16", pretrained=True, num_classes=8,
                              pretrained_cfg_overlay=dict(file="export/model.safetensors"))
    model = timm.create_model("local-dir:export", pretrained=True)  # config.json + model.safetensors

An export folder in timm's hub layout is written and read by ``uniemox.exports.hub``.

Weights are loaded through ``uniemox.models.state_dicts.load_encoder_state``: a head of another class
count is left out (fresh head, as fine-tuning from another task), a pretraining encoder's
decoder keys are ignored, and everything else must match (shape mismatch = error).
"""
import logging
import sys
from typing import Dict

import torch

from uniemox.data.transforms import IMAGENET_MEAN, IMAGENET_STD

from .registry import create_encoder, get_arch, list_models

logger = logging.getLogger(__name__)


def _pretrained_cfg(name: str, num_classes: int = 0) -> Dict:
    arch = get_arch(name)
    # not fixed: the entrypoints build dynamic_img_size encoders (any multiple of the patch size)
    return {"input_size": (3, arch.img_size, arch.img_size), "fixed_input_size": False,
            "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center", "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD, "num_classes": num_classes, "first_conv": "patch_embed.proj",
            "classifier": None,  # heads are matched by _filter below, not dropped by timm
            "license": "see the UniEmoX project"}


def _filter(state_dict: Dict[str, torch.Tensor], model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """timm's pretrained_filter_fn: load what fits into ``model`` and hand timm back the full
    state dict (so its strict load is a no-op re-load)."""
    from .state_dicts import load_encoder_state

    logger.info("timm load: %s", load_encoder_state(model, state_dict).summary())
    return model.state_dict()


def _make_entrypoint(name: str):
    from dataclasses import fields

    from timm.models import build_model_with_cfg

    from .vit import VisionTransformer

    arch_keys = {f.name for f in fields(get_arch(name))}

    def build(**kwargs) -> VisionTransformer:
        """timm's model kwargs: the architecture's fields are overrides of the registered size,
        the rest (dynamic_img_size, drop_path_rate, timm's own options) go to the class."""
        size = kwargs.pop("img_size", None)
        if isinstance(size, (tuple, list)):  # timm passes input_size[-2:]; a square one as the registry's int
            size = int(size[0]) if size[0] == size[1] else tuple(int(s) for s in size)
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "pretrained_model_args"):
            kwargs.pop(key, None)
        if kwargs.pop("in_chans", 3) != 3:
            raise ValueError(f"{name} takes RGB images (in_chans=3)")
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in arch_keys}
        # the registry checks one side at a time (an int): each side of a (h, w) size must fit
        sides = size if isinstance(size, tuple) else (size,)
        for side in sides:
            arch = get_arch(name, **overrides, **({} if side is None else {"img_size": side}))
        encoder = arch.encoder_kwargs()
        if isinstance(size, tuple):
            encoder["img_size"] = size
        return VisionTransformer(**encoder, **kwargs)

    def entrypoint(pretrained: bool = False, **kwargs):
        kwargs.setdefault("global_pool", "avg")
        kwargs.setdefault("dynamic_img_size", True)
        out_indices = kwargs.pop("out_indices", 3)  # features_only: the last 3 blocks, as timm's ViTs
        model = build_model_with_cfg(build, name, pretrained, pretrained_filter_fn=_filter,
                                     pretrained_strict=True,
                                     feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs)
        # the config says what this model takes: one size unless dynamic, and the size it was built
        # for is the one to preprocess to
        truth = {"fixed_input_size": not kwargs["dynamic_img_size"]}
        if kwargs.get("img_size") is not None:
            size = kwargs["img_size"]
            truth["input_size"] = (3, *(tuple(size) if isinstance(size, (tuple, list)) else (size, size)))
        model.pretrained_cfg = model.default_cfg = dict(model.pretrained_cfg, **truth)
        return model

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"UniEmoX encoder {name} ({get_arch(name)})."
    return entrypoint


def _register_all() -> None:
    from timm.models import generate_default_cfgs, register_model

    module = sys.modules[__name__]
    module.default_cfgs = generate_default_cfgs({n: _pretrained_cfg(n) for n in list_models()})
    for name in list_models():
        fn = _make_entrypoint(name)
        setattr(module, name, fn)
        register_model(fn)


_register_all()
