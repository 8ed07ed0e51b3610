"""A classifier in timm's hub layout: RUN_DIR/best (the weights validation chose) and ``--export``.
``config.json`` carries the run's record in its ``uniemox`` section (step, which weights, recipe,
validation scores); ``README.md`` is the model card: the training config and the measured results
(validation when written, test added once the test split is scored)."""
import json
import os
from typing import Dict, Optional, Sequence

HEADLINE = ("top1", "top3", "macro_f1", "mAP")


def headline(metrics: Optional[Dict]) -> Optional[Dict]:
    return {k: metrics[k] for k in HEADLINE if k in metrics} if metrics else None


def classifier_card(cfg, classes: Sequence[str], meta: Dict, test: Optional[Dict] = None) -> Dict:
    """The model card (uniemox.exports.card) of a classifier written by a run with ``cfg``."""
    from uniemox.config import to_dict

    recipe = meta.get("recipe", "finetune")
    what = {"finetune": "fine-tuned end to end", "linear_probe": "a linear probe on the frozen encoder",
            "probe_grid": "the linear probe a grid of probes chose on validation"}.get(recipe, recipe)
    results = {split: m for split, m in (("val", meta.get("val")), ("test", headline(test))) if m}
    head = meta.get("probe_head")
    return {"name": f"uniemox-{os.path.basename(os.path.abspath(cfg.log.run_dir))}",
            "description": f"A UniEmoX emotion classifier ({cfg.model.name}), {what}; "
                           f"{'multi-label' if meta.get('task') == 'multi_label' else 'single-label'}, "
                           f"{len(classes)} classes.",
            "details": {"Model Type": "image classification (visual emotion)", "Recipe": recipe,
                        "Classes": ", ".join(classes), "Training data": cfg.data.path or "the embedded sample set",
                        "Initialised from": cfg.model.init or "random weights",
                        **({"Probe head": f"blr {head['blr']:g}, weight decay {head['weight_decay']:g}"}
                           if head else {})},
            "results": results,
            "results_note": f"Weights: {meta.get('weights', 'raw')} at step {meta.get('step')}, chosen on validation.",
            "config": to_dict(cfg)}


def write_classifier(state: Dict, out_dir: str, cfg, classes: Sequence[str], multi_label: bool, probe: bool,
                     step: int, metrics: Optional[Dict], **meta) -> None:
    """``out_dir`` in timm's hub layout; ``meta`` (recipe, weights, ...) goes into config.json's
    uniemox section beside the step, task, init and validation scores."""
    from uniemox.exports.hub import write_export

    meta = dict({"step": step, "task": "multi_label" if multi_label else "single_label", "init": cfg.model.init,
                 "val": headline(metrics)}, **meta)
    write_export(state, out_dir, cfg.model.name, dict(cfg.model.arch), len(classes),
                 "token" if probe else cfg.model.global_pool, classes, meta, card=classifier_card(cfg, classes, meta))


def add_test_to_card(out_dir: str, cfg, classes: Sequence[str], test: Dict) -> None:
    """The model card again, with the test split's scores of these very weights."""
    from uniemox.exports.card import write_model_card
    from uniemox.exports.hub import read_export_config

    meta = read_export_config(out_dir)["uniemox"]
    write_model_card(out_dir, cfg.model.name, classifier_card(cfg, classes, meta, test))


def export_classifier(source: str, out_dir: str) -> Dict[str, str]:
    """A timm export (model.safetensors + config.json + README.md) of a fine-tuning run dir (its
    best/, copied whole once read through the checked loader) or of a pretraining export folder
    (the headless encoder)."""
    from uniemox.exports.folder import locate
    from uniemox.exports.hub import copy_export, export_pretrained

    best = os.path.join(source, "best")
    if os.path.isfile(os.path.join(locate(best), "config.json")):  # a fine-tuning run dir
        paths = copy_export(best, out_dir)
    else:
        paths = export_pretrained(source, out_dir)
    print(json.dumps(paths, indent=1))
    return paths
