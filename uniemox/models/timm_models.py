"""The project's encoders under timm: registered names and timm's file layout.

Importing this module registers every name of ``uniemox.models.registry`` with timm
(nothing else imports it, so timm's registry is only touched on request)::

    import timm, uniemox.models.timm_models
    model = timm.create_model("uniemox_vit_base_patch16", pretrained=True, num_classes=8,
                              pretrained_cfg_overlay=dict(file="export/model.safetensors"))
    model = timm.create_model("local-dir:export", pretrained=True)  # config.json + model.safetensors

An export folder is what timm's own ``save_for_hf`` writes for the Hugging Face Hub:
``model.safetensors`` (timm/MAE key names) and ``config.json`` (architecture, num_classes,
global_pool, label_names, pretrained_cfg, model_args with the architecture overrides), plus a
``uniemox`` section, and a ``README.md`` model card (training config, measured results).
``timm.models.push_to_hf_hub`` or ``huggingface_hub.upload_folder`` publish it as it is.

Weights are loaded through ``uniemox.convert.load_encoder_state``: a head of another class
count is left out (fresh head, as fine-tuning from another task), a pretraining encoder's
decoder keys are ignored, and everything else must match (shape mismatch = error).
"""
import json
import logging
import os
import sys
from typing import Dict, Optional, Sequence, Tuple

import torch

from uniemox.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from uniemox.errors import UserError
from uniemox.io import replace_dir

from .registry import create_encoder, get_arch, list_models

logger = logging.getLogger(__name__)
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
EXPORT_FORMAT = "uniemox-timm-v1"


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
    from uniemox.convert import load_encoder_state

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
        size = kwargs.get("img_size")
        if isinstance(size, (tuple, list)):  # timm passes input_size[-2:]; a square one as the registry's int
            kwargs["img_size"] = int(size[0]) if size[0] == size[1] else tuple(size)
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "pretrained_model_args"):
            kwargs.pop(key, None)
        if kwargs.pop("in_chans", 3) != 3:
            raise ValueError(f"{name} takes RGB images (in_chans=3)")
        arch = get_arch(name, **{k: kwargs.pop(k) for k in list(kwargs) if k in arch_keys})
        return VisionTransformer(**arch.encoder_kwargs(), **kwargs)

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


# -- files in timm's layout ---------------------------------------------------------------------
def write_export(state_dict: Dict[str, torch.Tensor], out_dir: str, name: str, arch_overrides: Dict,
                 num_classes: int, global_pool: str, label_names: Optional[Sequence[str]] = None,
                 extra: Optional[Dict] = None, card: Optional[Dict] = None) -> Dict[str, str]:
    """The weights in timm's hub layout, written by timm's own ``save_for_hf``: ``model.safetensors``
    (fp32), ``config.json`` (architecture, num_classes, label_names, model_args, pretrained_cfg, plus
    a ``uniemox`` section with ``extra``), and ``README.md``, a model card (model_card.py: ``card``).
    Written to a temp folder and renamed into place, so a reader never sees half an export."""
    import timm
    from timm.models import save_for_hf

    from .model_card import write_model_card

    state = {k: v.detach().float().contiguous().cpu() for k, v in state_dict.items()}
    with torch.device("meta"):  # no random initialisation: every tensor comes from state_dict
        model = timm.create_model(name, num_classes=num_classes, global_pool=global_pool, **arch_overrides)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise UserError(f"the weights do not match {name} {arch_overrides}: {' '.join(str(exc).split())[:300]}") \
            from None
    model_config = {"uniemox": dict(extra or {}, format=EXPORT_FORMAT)}
    if label_names is not None:
        model_config["label_names"] = list(label_names)
    out_dir = out_dir.rstrip("/")
    tmp = f"{out_dir}.tmp{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    save_for_hf(model, tmp, model_config=model_config, safe_serialization=True)
    write_model_card(tmp, name, card, folder=out_dir)
    replace_dir(tmp, out_dir)
    return {"weights": os.path.join(out_dir, WEIGHTS), "config": os.path.join(out_dir, CONFIG),
            "card": os.path.join(out_dir, "README.md")}


def read_export_config(path: str) -> Dict:
    cfg_path = os.path.join(path, CONFIG) if os.path.isdir(path) else path
    try:
        with open(cfg_path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise UserError(f"no model export at {path} (expected {CONFIG} and {WEIGHTS}; a fine-tuning run "
                        f"writes one to RUN_DIR/best)") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg_path}: damaged config ({e})") from None
    if config.get("uniemox", {}).get("format") != EXPORT_FORMAT:
        raise UserError(f"{cfg_path} is not a UniEmoX timm export (a pretraining export? convert it with "
                        f"'uniemox-finetune --export PRETRAIN_EXPORT OUT')")
    return config


def create_from_export(path: str, **overrides) -> Tuple[torch.nn.Module, Dict]:
    """(model in eval mode, its config) from an export folder, built through timm.create_model."""
    import timm

    config = read_export_config(path)
    if not os.path.isfile(os.path.join(path, WEIGHTS)):
        raise UserError(f"{path}: {WEIGHTS} is missing")
    from safetensors import SafetensorError

    kwargs = dict(config["model_args"], num_classes=config["num_classes"], **overrides)
    weights = os.path.join(path, WEIGHTS)
    try:
        model = timm.create_model(config["architecture"], pretrained=True,
                                  pretrained_cfg_overlay=dict(file=weights, num_classes=config["num_classes"]),
                                  **kwargs)
    except SafetensorError as exc:  # a damaged or hostile file: safetensors reads no code, but refuses it
        raise UserError(f"cannot read {weights}: {' '.join(str(exc).split())}") from None
    return model.eval(), config


def export_pretrained(src: str, out_dir: str) -> Dict[str, str]:
    """A pretraining export (``launch/pretrain.py --export``) as a headless timm export: the
    encoder with its final norm, CLS-token pooling (the token pretraining distils), no head."""
    from uniemox.convert import load_encoder_checkpoint, read_pretrain_export

    _, weights, run_config = read_pretrain_export(src, need="encoder")
    model_cfg = run_config["model"]
    encoder = create_encoder(model_cfg["name"], num_classes=0, global_pool="token", **(model_cfg.get("arch") or {}))
    report = load_encoder_checkpoint(encoder, weights)
    if report.missing or report.unexpected:
        raise UserError(f"{weights} does not match {model_cfg['name']}: {report.summary()}")
    card = {"description": "A UniEmoX pretrained encoder (MAE + CLIP-teacher distillation), no head: its "
                           "output is the final-normed CLS token, the one pretraining distils.",
            "details": {"Model Type": "image feature backbone", "Source": os.path.abspath(src)},
            "results": _pretraining_losses(src), "results_note": "The pretraining run's losses at the exported "
                                                               "step (its metrics.jsonl).", "config": run_config}
    return write_export(encoder.state_dict(), out_dir, model_cfg["name"], model_cfg.get("arch") or {}, 0, "token",
                        extra={"source": os.path.abspath(src), "kind": "pretrained encoder"}, card=card)


def _pretraining_losses(src: str) -> Dict[str, Dict[str, float]]:
    """The losses the pretraining run logged at the exported checkpoint's step, when its run dir
    (RUN_DIR/checkpoints/step_N, the export's source) still holds metrics.jsonl; else nothing."""
    try:
        with open(os.path.join(src, CONFIG), encoding="utf-8") as f:
            source = json.load(f).get("source") or ""
        step = int(os.path.basename(source.rstrip("/")).rsplit("_", 1)[-1])
        with open(os.path.join(os.path.dirname(os.path.dirname(source.rstrip("/"))), "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError, AttributeError):
        return {}
    losses = {k: v for row in rows if row.get("step") == step for k, v in row.items() if k.startswith("loss/")}
    return {f"pretraining, step {step}": losses} if losses else {}
