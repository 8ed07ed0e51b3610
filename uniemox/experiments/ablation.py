"""The paper's ablation grid as one command: loss subsets (L3; L3+L2; L3+L1; L3+L2+L1) x fusion
variants (none and the five), each cell pretrained, exported, then scored by fine-tuning, the
probe grid (the head chosen on val, scored on test) and zero-shot, on a shard set (the embedded sample set by default, at tiny sizes).

Every stage is the project's own entry point, run as a process of its own (its own process group,
its own failure); the training stages (pretraining, fine-tuning, the probe grid) run under
DeepSpeed's launcher with the grid's launcher arguments (ranks per node, nodes, port). A stage is
finished once the file it writes last exists (the final checkpoint's marker, the export's config,
the test scores); a cell's result (``CELL/result.json``) is written only once all of it is
measured, and the table (``ablation.csv``, ``ablation.md``) and plot (``ablation.png``) are
rewritten after every cell. A run cut short keeps what it measured: run the same command again and
it skips finished cells and stages, and a training stage cut short continues from its last
checkpoint (``--resume auto``).
"""
import csv
import io
import json
import os
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from uniemox.errors import UserError
from uniemox.io import atomic_write_json, atomic_write_text
from uniemox.train.checkpoint import MARKER

LOSSES = {"l3": "reconstruction", "l3+l2": "reconstruction,similarity", "l3+l1": "reconstruction,contrastive",
          "l3+l2+l1": "all"}
FUSIONS = ("none", "easy", "weighted_sum", "dual_attention", "mlp_glu", "bilinear")
SCORES = ("finetune_top1", "probe_top1", "zero_shot_top1")


@dataclass
class Settings:
    data: Optional[str] = None     # a shard-set folder with train / val / test; None: the embedded sample set
    pretrain_steps: int = 60
    finetune_steps: int = 40
    probe_steps: int = 40
    pretrain: Sequence[str] = ()   # section.key=value overrides of every pretraining run
    downstream: Sequence[str] = ()  # ... of every fine-tuning and probe run
    launcher: Sequence[str] = ("--num_gpus", "1")  # DeepSpeed launcher arguments of every training stage


@dataclass
class Cell:
    losses: str                    # a key of LOSSES
    fusion: str

    @property
    def name(self) -> str:
        return f"{self.losses}__{self.fusion}".replace("+", "_")


def grid(losses: Sequence[str], fusions: Sequence[str]) -> List[Cell]:
    bad = [x for x in losses if x not in LOSSES] + [x for x in fusions if x not in FUSIONS]
    if bad:
        raise UserError(f"unknown loss subset or fusion: {', '.join(bad)} (loss subsets: {', '.join(LOSSES)}; "
                        f"fusions: {', '.join(FUSIONS)})")
    return [Cell(loss, fusion) for loss in losses for fusion in fusions]


@dataclass
class Stage:
    """One step of a cell: an entry point run as a process of its own, finished once ``done`` exists."""
    name: str                      # its log: CELL/<name>.log
    args: List[str]                # python -m <module> <flags>
    done: Path                     # the file the stage writes last; a stage that has it is not run again
    trains: bool = False           # a training run: under DeepSpeed's launcher, continued with --resume auto


def visible_gpus() -> int:
    """The launcher's default rank count: every visible GPU, one rank on a machine without."""
    import torch
    return torch.cuda.device_count() or 1


def stage_command(stage: Stage, launcher: Sequence[str]) -> List[str]:
    """A training stage runs under DeepSpeed's launcher (its ranks, nodes and port from ``launcher``)
    and continues its own checkpoints; the others are one plain process."""
    if stage.trains:
        return [sys.executable, "-m", "deepspeed.launcher.runner", *launcher, "--module", stage.args[0],
                *stage.args[1:], "--resume", "auto"]
    return [sys.executable, "-m", *stage.args]


def _last_error(text: str) -> str:
    """The stage's own ``error:`` line when it wrote one (the launcher prints its exit status after)."""
    lines = text.strip().splitlines() or ["(no output)"]
    return next((x for x in reversed(lines) if x.startswith("error:")), lines[-1])


def _run(stage: Stage, where: Path, launcher: Sequence[str]) -> None:
    """Run ``stage`` unless it is finished; its output is appended to its log; a failure is one line."""
    if stage.done.is_file():
        return
    command = stage_command(stage, launcher)
    log = where / f"{stage.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as out:
        out.write("$ " + " ".join(shlex.quote(x) for x in command) + "\n")
        out.flush()
        start = out.tell()
        proc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        with open(log, encoding="utf-8", errors="replace") as f:
            f.seek(start)
            last = _last_error(f.read())
        raise UserError(f"{stage.args[0]} failed (exit {proc.returncode}, log {log}): {last}")
    if not stage.done.is_file():
        raise UserError(f"{stage.args[0]} ended without writing {stage.done} (log {log})")


def _top1(path: Path) -> float:
    metrics = json.loads(path.read_text(encoding="utf-8"))
    return float(metrics.get("top1", metrics.get("mAP")))


def eval_data(settings: Settings) -> str:
    if settings.data:
        return settings.data
    from uniemox.data import ensure_sample_shards
    return ensure_sample_shards()


def cell_stages(cell: Cell, where: Path, settings: Settings) -> List[Stage]:
    """Pretrain, export, fine-tune, probe and score zero-shot: each stage's command and the file that
    says it is finished."""
    quiet = ["log.progress=false"]
    pre, export, zero_shot = where / "pretrain", where / "export", where / "zero_shot"
    data = ["--data", settings.data] if settings.data else []  # none: each entry point's sample recipe
    checkpoint = pre / "checkpoints" / f"step_{settings.pretrain_steps:08d}"
    stages = [
        Stage("pretrain", ["uniemox.launch.pretrain", "--run-dir", str(pre)]
              + ([f"data.shards={settings.data}"] if settings.data else [])
              + [f"model.losses={LOSSES[cell.losses]}", f"model.fusion={cell.fusion}",
                 f"optim.max_steps={settings.pretrain_steps}", "log.image_every=0", "checkpoint.every=0"]
              + quiet + list(settings.pretrain), checkpoint / MARKER, trains=True),
        Stage("export", ["uniemox.launch.pretrain", "--export", str(checkpoint), str(export)],
              export / "config.json")]
    for name, steps, extra in (("finetune", settings.finetune_steps, []),
                               ("probe", settings.probe_steps, ["--probe-grid"])):
        stages.append(Stage(name, ["uniemox.launch.finetune", *data, "--init", str(export), "--run-dir",
                                   str(where / name), f"optim.max_steps={steps}", *extra] + quiet
                            + list(settings.downstream), where / name / "eval" / "test.json", trains=True))
    stages.append(Stage("zero_shot", ["uniemox.launch.predict", "--zero-shot", str(export), "--eval",
                                      eval_data(settings), "--split", "test", "--out", str(zero_shot), "--format",
                                      "json"], zero_shot / "test.json"))
    return stages


def run_cell(cell: Cell, out: Path, settings: Settings) -> Dict:
    """Every stage of one cell that is not finished yet; the cell's result (cached)."""
    where = out / cell.name
    done = where / "result.json"
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    for stage in cell_stages(cell, where, settings):
        _run(stage, where, settings.launcher)
    losses = [json.loads(line) for line in open(where / "pretrain" / "metrics.jsonl", encoding="utf-8")]
    result = dict(asdict(cell), pretrain_loss=losses[-1].get("loss/loss"),
                  finetune_top1=_top1(where / "finetune" / "eval" / "test.json"),
                  probe_top1=_top1(where / "probe" / "eval" / "test.json"),
                  zero_shot_top1=_top1(where / "zero_shot" / "test.json"))
    atomic_write_json(done, result)
    return result


def write_table(results: List[Dict], out: Path) -> None:
    """ablation.csv, ablation.md and ablation.png from the results measured so far."""
    columns = ["losses", "fusion", "pretrain_loss"] + list(SCORES)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(results)
    atomic_write_text(out / "ablation.csv", buf.getvalue())
    rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in results:
        rows.append("| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in columns) + " |")
    atomic_write_text(out / "ablation.md", "\n".join(rows) + "\n")
    _plot(results, out / "ablation.png")


def _plot(results: List[Dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    losses = [x for x in LOSSES if any(r["losses"] == x for r in results)]
    fusions = [x for x in FUSIONS if any(r["fusion"] == x for r in results)]
    fig, axes = plt.subplots(1, len(SCORES), figsize=(4.2 * len(SCORES), 1.2 + 0.55 * len(losses)), squeeze=False)
    for k, (ax, score) in enumerate(zip(axes[0], SCORES)):
        table = [[next((r[score] for r in results if r["losses"] == lo and r["fusion"] == fu), float("nan"))
                  for fu in fusions] for lo in losses]
        im = ax.imshow(table, vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_xticks(range(len(fusions)), fusions, rotation=40, ha="right")
        ax.set_yticks(range(len(losses)), [x.upper() for x in losses] if k == 0 else [])  # rows shared
        for i, row in enumerate(table):
            for j, v in enumerate(row):
                ax.text(j, i, "-" if v != v else f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="k" if v > 0.6 else "w")  # readable on viridis' light and dark ends
        ax.set_title(score.replace("_", " "))
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.02)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def run_grid(cells: List[Cell], out: Path, settings: Settings, progress: Optional[callable] = None) -> List[Dict]:
    """Every cell in turn (cells with a result are not run again); the table after each."""
    if settings.data and not os.path.isfile(os.path.join(settings.data, "manifest.json")):
        raise UserError(f"--data {settings.data}: a shard-set folder with a manifest (train, val, test) is needed")
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for i, cell in enumerate(cells):
        if progress:
            progress(i, cell)
        results.append(run_cell(cell, out, settings))
        write_table(results, out)
    return results
