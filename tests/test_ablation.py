"""The paper's ablation grid as one command, end to end on the embedded sample set: a 2 x 2 subset
(L3 alone and all losses x no fusion and easy), each cell pretrained, exported, fine-tuned, probed
and scored zero-shot; one table (CSV + Markdown) and one plot; a second run continues, keeping
what was measured."""
import csv
import json
import os
import subprocess
import sys

from subprocesses import child_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--pretrain-steps", "3", "--finetune-steps", "2", "--probe-steps", "2",
        "--pretrain", "model.arch={img_size: 32, depth: 2, decoder_depth: 1}", "data.batch_size=16",
        "--downstream", "data.batch_size=16"]


def ablation(out, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, "launch", "ablation.py"), "--out", str(out)] + list(args),
                          capture_output=True, text=True, timeout=1800, env=child_env(), cwd=REPO)


def test_a_2x2_grid_end_to_end_then_continued(tmp_path):
    out = tmp_path / "grid"
    first = ablation(out, "--losses", "l3,l3+l2+l1", "--fusions", "none,easy", *TINY)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "ablation.csv")))
    assert [(r["losses"], r["fusion"]) for r in rows] == [("l3", "none"), ("l3", "easy"), ("l3+l2+l1", "none"),
                                                          ("l3+l2+l1", "easy")]
    for r in rows:
        for score in ("finetune_top1", "probe_top1", "zero_shot_top1"):
            assert 0.0 <= float(r[score]) <= 1.0
    assert (out / "ablation.md").read_text().count("\n") == 6 and (out / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    # every cell's own runs: the losses it was asked for, its fusion
    config = (out / "l3__none" / "pretrain" / "config.yaml").read_text()
    assert "losses: reconstruction" in config and "fusion: none" in config
    cell = json.loads((out / "l3_l2_l1__easy" / "result.json").read_text())
    assert cell["losses"] == "l3+l2+l1" and cell["fusion"] == "easy"
    # continued: measured cells are kept (not run again), a new one is added
    before = (out / "l3__none" / "result.json").stat().st_mtime
    again = ablation(out, "--losses", "l3", "--fusions", "none,easy,weighted_sum", *TINY)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "l3__none" / "result.json").stat().st_mtime == before
    assert [r["fusion"] for r in csv.DictReader(open(out / "ablation.csv"))] == ["none", "easy", "weighted_sum"]


def test_bad_grid_is_one_line(tmp_path):
    proc = ablation(tmp_path, "--losses", "l4")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: unknown loss subset")
