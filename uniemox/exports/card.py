"""The README.md model card of an export folder: timm's own card (``generate_readme``: the Hub's
metadata header, details, usage) plus what a reader of the card needs to trust the weights: the
measured results and the training config they came from.

``card`` (a dict, all keys optional)::

    name          the card's title and the Hub name in its usage lines (default: the folder's name)
    description   one paragraph
    details       {name: value} shown under "Model Details" (timm's layout)
    results       {row: {metric: value}}, e.g. {"val": {"top1": 0.98}, "test": {...}}
    results_note  one line under the results table (which weights, which step)
    config        the run config (a dict) the weights were trained with, shown as YAML
"""
import os
from typing import Dict, Optional

import yaml

from uniemox.io import atomic_write_text

README = "README.md"
_COLUMNS = ("top1", "top3", "macro_f1", "balanced_accuracy", "mAP", "num_samples")


def _results_table(results: Dict[str, Dict]) -> str:
    seen = [k for row in results.values() for k in row]
    columns = [c for c in _COLUMNS if c in seen] + [k for k in dict.fromkeys(seen) if k not in _COLUMNS]
    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for split, row in results.items():
        cells = [row.get(c) for c in columns]
        lines.append(f"| {split} | " + " | ".join("-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
                                                 for v in cells) + " |")
    return "\n".join(lines)


def card_text(folder: str, architecture: str, card: Optional[Dict] = None) -> str:
    """The card's text; ``folder``: the export's path, as the usage lines load it."""
    from timm.models._hub import generate_readme

    card = dict(card or {})
    name = card.get("name") or os.path.basename(os.path.abspath(folder))
    usage = ("```python\nimport timm\nimport uniemox.models.timm_models  # registers the uniemox_* architectures\n\n"
             f"model = timm.create_model(\"local-dir:{folder}\", pretrained=True).eval()\n"
             f"# or, once pushed to the Hub: timm.create_model(\"hf-hub:USER/{name}\", pretrained=True)\n"
             "data_config = timm.data.resolve_data_config({}, model=model)\n"
             "transform = timm.data.create_transform(**data_config, is_training=False)\n```\n")
    timm_card = {"description": card.get("description", f"UniEmoX {architecture}."),
                 "details": dict({"Architecture": architecture}, **(card.get("details") or {})),
                 "usage": usage, "tags": ["image-classification", "timm", "uniemox", "emotion-recognition"],
                 "license": "other", "license_name": "uniemox"}
    if card.get("results"):
        note = f"\n\n{card['results_note']}" if card.get("results_note") else ""
        timm_card["comparison"] = "Measured by the run that wrote these weights.\n\n" + \
            _results_table(card["results"]) + note + "\n"
    text = generate_readme(timm_card, name)
    if card.get("config"):
        text += "\n## Training config\n\n```yaml\n" + yaml.safe_dump(card["config"], sort_keys=False) + "```\n"
    return text


def write_model_card(out_dir: str, architecture: str, card: Optional[Dict] = None,
                     folder: Optional[str] = None) -> str:
    """``out_dir/README.md`` (atomic); ``folder``: the path the usage lines load (default out_dir;
    an export written into a temp folder names its final one)."""
    path = os.path.join(out_dir, README)
    atomic_write_text(path, card_text(folder or out_dir, architecture, card))
    return path
