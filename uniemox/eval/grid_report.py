"""The probe grid's report: every head's row (blr, lr, weight decay, best validation score and
step, test score) as ``probe_grid.json`` and ``.csv``, a Markdown table for the console and the
docs, and ``probe_grid.png``: validation (solid) and test (dashed) score against the lr, one line
per weight decay, the chosen head starred."""
import csv
import io
import os
from typing import Dict, List, Sequence

from uniemox.io import atomic_write_json, atomic_write_text

NAME = "probe_grid"


def markdown_table(rows: Sequence[Dict], metric: str) -> str:
    lines = [f"| blr | lr | weight decay | val {metric} | test {metric} | best step | |", "|---" * 7 + "|"]
    for r in rows:
        test = r.get(f"test_{metric}")
        val = r.get(f"val_{metric}")
        lines.append(f"| {r['blr']:g} | {r['lr']:.4g} | {r['weight_decay']:g} | "
                     f"{'-' if val is None else f'{val:.4f}'} | {'-' if test is None else f'{test:.4f}'} | "
                     f"{r.get('best_step') or '-'} | {'**chosen**' if r.get('chosen') else ''} |")
    return "\n".join(lines)


def _plot(rows: Sequence[Dict], metric: str, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, wd in enumerate(sorted({r["weight_decay"] for r in rows})):
        line = sorted((r for r in rows if r["weight_decay"] == wd), key=lambda r: r["lr"])
        colour = f"C{i}"
        for split, style in (("val", "-o"), ("test", "--x")):
            points = [(r["lr"], r[f"{split}_{metric}"]) for r in line if r.get(f"{split}_{metric}") is not None]
            if points:
                ax.plot(*zip(*points), style, color=colour, label=f"{split}, wd {wd:g}")
    for r in rows:
        if r.get("chosen"):
            ax.plot([r["lr"]], [r[f"val_{metric}"]], "*", color="black", markersize=14, label="chosen (best val)")
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate (blr x batch / 256)")
    ax.set_ylabel(metric)
    ax.set_title(f"linear probe grid: {metric} of each head")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_grid_report(rows: List[Dict], out_dir: str, metric: str, extra: Dict) -> Dict[str, str]:
    """``out_dir/probe_grid.{json,csv,png}``; ``extra`` goes into the JSON beside the rows."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {ext: os.path.join(out_dir, f"{NAME}.{ext}") for ext in ("json", "csv", "png")}
    atomic_write_json(paths["json"], dict(extra, metric=metric, heads=rows))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(paths["csv"], text.getvalue())
    _plot(rows, metric, paths["png"])
    return paths
