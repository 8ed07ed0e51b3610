"""A model in timm's hub layout: a fine-tuning run's ``best/``, ``uniemox-finetune --export`` and a
pretraining export made headless. Written and read here.

``model.safetensors`` (timm/MAE key names), ``config.json`` (timm's own ``save_config_for_hf``:
architecture, num_classes, global_pool, label_names, pretrained_cfg, model_args, plus a ``uniemox``
section: the run's record, the format, the export id) and ``README.md``, the model card (card.py).
``timm.create_model("local-dir:FOLDER", pretrained=True)`` loads it as it is;
``timm.models.push_to_hf_hub`` or ``huggingface_hub.upload_folder`` publish it. The folder appears
whole or not at all and the weights carry the config's export id (folder.py).
"""
import json
import os
import shutil
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch

import uniemox.models.timm_models  # noqa: F401  (registers the uniemox_* architectures with timm)
from uniemox.errors import UserError
from uniemox.io import read_json
from uniemox.models import create_encoder
from uniemox.safeload import read_safetensors

from .card import README, write_model_card
from .folder import ID_KEY, check_belonging, locate, new_export_id, write_whole
from .release import load_encoder_checkpoint

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
EXPORT_FORMAT = "uniemox-timm-v2"  # v2: the weights stamped with the export id


def _is_hub_export(folder) -> bool:
    try:
        return str(read_json(os.path.join(folder, CONFIG)).get("uniemox", {}).get("format", "")).startswith(
            "uniemox-timm-")
    except (UserError, AttributeError):
        return False


def _save_weights(state: Dict[str, torch.Tensor], folder: Path, export_id: str) -> None:
    from safetensors.torch import save_file

    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt", ID_KEY: export_id})


def write_export(state_dict: Dict[str, torch.Tensor], out_dir: str, name: str, arch_overrides: Dict,
                 num_classes: int, global_pool: str, label_names: Optional[Sequence[str]] = None,
                 extra: Optional[Dict] = None, card: Optional[Dict] = None) -> Dict[str, str]:
    """The weights (fp32) in timm's hub layout, the ``uniemox`` section holding ``extra``, the card
    from ``card``; the weights must fit ``name`` with ``arch_overrides`` exactly."""
    import timm
    from timm.models._hub import save_config_for_hf

    state = {k: v.detach().float().contiguous().cpu() for k, v in state_dict.items()}
    with torch.device("meta"):  # no random initialisation: every tensor comes from state_dict
        model = timm.create_model(name, num_classes=num_classes, global_pool=global_pool, **arch_overrides)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise UserError(f"the weights do not match {name} {arch_overrides}: {' '.join(str(exc).split())[:300]}") \
            from None
    export_id = new_export_id()
    model_config = {"uniemox": dict(extra or {}, format=EXPORT_FORMAT, export_id=export_id)}
    if label_names is not None:
        model_config["label_names"] = list(label_names)
    out_dir = os.path.abspath(out_dir)
    out = write_whole(out_dir, [(WEIGHTS, lambda d: _save_weights(model.state_dict(), d, export_id)),
                                (CONFIG, lambda d: save_config_for_hf(model, d / CONFIG, model_config=model_config)),
                                (README, lambda d: write_model_card(str(d), name, card, folder=out_dir))],
                      _is_hub_export)
    return {"weights": str(out / WEIGHTS), "config": str(out / CONFIG), "card": str(out / README)}


def _read(path: str) -> Tuple[str, Dict]:
    """(the folder to read, its config), the weights checked to belong to the config."""
    folder = locate(path)
    cfg_path = os.path.join(folder, CONFIG) if os.path.isdir(folder) else folder
    if not os.path.isfile(cfg_path):
        raise UserError(f"no model export at {path} (expected {CONFIG} and {WEIGHTS}; a fine-tuning run "
                        f"writes one to RUN_DIR/best)")
    config = read_json(cfg_path, "export config")
    section = config.get("uniemox") if isinstance(config, dict) else None
    if not (isinstance(section, dict) and str(section.get("format", "")).startswith("uniemox-timm-")):
        raise UserError(f"{cfg_path} is not a UniEmoX timm export (a pretraining export? convert it with "
                        f"'uniemox-finetune --export PRETRAIN_EXPORT OUT')")
    check_belonging(os.path.dirname(cfg_path), section.get("export_id"), [WEIGHTS], "model export")
    return os.path.dirname(cfg_path), config


def read_export_config(path: str) -> Dict:
    return _read(path)[1]


def create_from_export(path: str, **overrides) -> Tuple[torch.nn.Module, Dict]:
    """(model in eval mode, its config) from an export folder, built through timm.create_model."""
    import timm
    from safetensors import SafetensorError

    folder, config = _read(path)
    weights = os.path.join(folder, WEIGHTS)
    kwargs = dict(config["model_args"], num_classes=config["num_classes"], **overrides)
    try:
        model = timm.create_model(config["architecture"], pretrained=True,
                                  pretrained_cfg_overlay=dict(file=weights, num_classes=config["num_classes"]),
                                  **kwargs)
    except SafetensorError as exc:  # a damaged file: safetensors reads no code, but refuses it
        raise UserError(f"cannot read {weights}: {' '.join(str(exc).split())}") from None
    return model.eval(), config


def copy_export(src: str, out_dir: str) -> Dict[str, str]:
    """An export copied elsewhere, whole: its weights read through the checked loader first (a
    pickle or a damaged file under the name is refused, never passed on) and written as read."""
    folder, config = _read(src)
    state, metadata = read_safetensors(os.path.join(folder, WEIGHTS), "model weights")

    def copy(name):
        return lambda d: shutil.copyfile(os.path.join(folder, name), d / name)
    parts = [(WEIGHTS, lambda d: _save_weights(state, d, metadata[ID_KEY])), (CONFIG, copy(CONFIG))]
    if os.path.isfile(os.path.join(folder, README)):
        parts.append((README, copy(README)))
    out = write_whole(out_dir, parts, _is_hub_export)
    return {"weights": str(out / WEIGHTS), "config": str(out / CONFIG), "card": str(out / README)}


def export_pretrained(src: str, out_dir: str) -> Dict[str, str]:
    """A pretraining export (``launch/pretrain.py --export``) as a headless timm export: the
    encoder with its final norm, CLS-token pooling (the token pretraining distils), no head."""
    from .pretrain import read_pretrain_export

    _, weights, run_config = read_pretrain_export(src, need="encoder")
    model_cfg = run_config["model"]
    encoder = create_encoder(model_cfg["name"], num_classes=0, global_pool="token", **(model_cfg.get("arch") or {}))
    report = load_encoder_checkpoint(encoder, weights)
    if report.missing or report.unexpected:
        raise UserError(f"{weights} does not match {model_cfg['name']}: {report.summary()}")
    card = {"description": "A UniEmoX pretrained encoder (MAE + CLIP-teacher distillation), no head: its "
                           "output is the final-normed CLS token, the one pretraining distils.",
            "details": {"Model Type": "image feature backbone", "Source": os.path.abspath(src)},
            "results": _pretraining_losses(os.path.dirname(weights)), "results_note": "The pretraining run's "
                                                                                      "losses at the exported step "
                                                                                      "(its metrics.jsonl).",
            "config": run_config}
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
