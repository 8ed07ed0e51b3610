"""PNG plots of benchmark results (matplotlib, Agg backend: no display needed).

``plot_step``: samples/s of ``ours`` and ``reference`` side by side for every configuration,
the speed-up written above each pair. ``plot_loader``: samples/s per worker count, ours and plain, with their ratio.
"""
from pathlib import Path
from typing import Dict, List


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def config_label(row: Dict) -> str:
    model = row["model"].replace("uniemox_vit_", "").replace("_patch", "/")
    compiled = " compiled" if row.get("compile") == "compiled" else ""
    return (f"{model} b{row['batch']} m{row['mask_ratio']:g}\n{row['attn']}/{row['kernels']}"
            f" z{row['zero']}{compiled}")


def plot_step(payload: Dict, path: Path) -> Path:
    plt = _pyplot()
    ours = [r for r in payload["rows"] if r["variant"] == "ours"]
    refs = [r for r in payload["rows"] if r["variant"] == "reference"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(ours) + 2), 4.5))
    xs = list(range(len(ours)))
    width = 0.38
    ax.bar([x - width / 2 for x in xs], [r["samples_per_s"] for r in ours], width, label="ours")
    ax.bar([x + width / 2 for x in xs], [r["samples_per_s"] for r in refs], width, label="reference")
    for x, r in zip(xs, ours):
        mfu = "" if r["mfu"] is None else f"\nMFU {100 * r['mfu']:.0f}%"
        ax.annotate(f"{r['speedup_vs_reference']:.2f}x{mfu}", (x - width / 2, r["samples_per_s"]),
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs)
    ax.set_xticklabels([config_label(r) for r in ours], fontsize=8)
    ax.set_ylabel("samples/s")
    cpu = " (CPU figures: smoke run)" if payload.get("smoke") else ""
    ax.set_title(f"UniEmoX training step, {payload['device']['name']}{cpu}", fontsize=10)
    ax.legend()
    ax.margins(y=0.2)
    return _save(fig, plt, path)


def plot_loader(payload: Dict, path: Path) -> Path:
    plt = _pyplot()
    rows: List[Dict] = payload["rows"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        ax.errorbar([r["workers"] for r in mine], [r["samples_per_s"] for r in mine], marker="o", capsize=3,
                    yerr=[[r["samples_per_s"] - r["samples_per_s_min"] for r in mine],
                          [r["samples_per_s_max"] - r["samples_per_s"] for r in mine]], label=variant)
    for r in rows:
        if r["variant"] == "ours":
            ax.annotate(f"{r['ratio_vs_plain']:.2f}x", (r["workers"], r["samples_per_s"]),
                        textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    ax.set_xlabel("loader workers (0: in the main process)")
    ax.set_ylabel("decoded two-view samples/s (median slot)")
    ax.set_title(f"loader: ours vs plain, {payload['host']['cpus']} CPUs, image {payload['run']['image_size']}",
                 fontsize=10)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
