"""The paper's ablation grid as one command, end to end on the embedded sample set: a 2 x 2 subset
(L3 alone and all losses x no fusion and easy), each cell pretrained, exported, fine-tuned, probed
and scored zero-shot; one table (CSV + Markdown) and one plot; a second run continues, keeping
what was measured; a grid cut inside a cell (a training rank killed after the cell's pretraining)
continues inside that cell, every training stage under DeepSpeed's launcher."""
import csv
import json
import os
import subprocess
import sys

from subprocesses import child_env, free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--pretrain-steps", "3", "--finetune-steps", "2", "--probe-steps", "2",
        "--pretrain", "model.arch={img_size: 32, depth: 2, decoder_depth: 1}", "data.batch_size=16",
        "--downstream", "data.batch_size=16"]


def ablation(out, *args, env=None):
    # the training stages' launcher on a port of its own: two grids on the default port join each other
    launcher = ["--launcher", f"--master_port {free_port()}"]
    return subprocess.run([sys.executable, os.path.join(REPO, "launch", "ablation.py"), "--out", str(out)] + launcher
                          + list(args), capture_output=True, text=True, timeout=1800, env=child_env(env), cwd=REPO)


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


def test_a_cell_cut_after_its_pretraining_continues_inside_the_cell(tmp_path):
    out, cell = tmp_path / "grid", tmp_path / "grid" / "l3__none"
    tiny = ["--losses", "l3", "--fusions", "none", *TINY[:2], "--finetune-steps", "5", *TINY[4:]]
    # the fine-tuning rank is killed (SIGKILL) at its step 4; the 3-step pretraining never reaches it
    cut = ablation(out, *tiny, env={"UNIEMOX_FAULT": "kill@step:4"})
    assert cut.returncode == 2, cut.stderr[-3000:]
    assert "uniemox.launch.finetune failed" in cut.stderr.strip().splitlines()[-1]
    marker = cell / "pretrain" / "checkpoints" / "step_00000003" / "COMPLETE"
    assert marker.is_file() and (cell / "export" / "config.json").is_file() and not (cell / "result.json").exists()
    pretrained, pretrain_log = marker.stat().st_mtime_ns, (cell / "pretrain.log").read_text()
    again = ablation(out, *tiny)
    assert again.returncode == 0, again.stderr[-3000:]
    # the finished stages were not run again: the pretraining's checkpoint and log are as they were
    assert marker.stat().st_mtime_ns == pretrained and (cell / "pretrain.log").read_text() == pretrain_log
    assert (cell / "export.log").read_text().count("\n$ ") == 0
    # the cut stage ran again, continuing its run dir (refused before: "already holds a run")
    finetune = [x for x in (cell / "finetune.log").read_text().splitlines() if x.startswith("$ ")]
    assert len(finetune) == 2 and json.loads((cell / "result.json").read_text())["finetune_top1"] >= 0.0
    # the training stages run under DeepSpeed's launcher, one rank on a CPU, continued with --resume auto
    for stage in ("pretrain", "finetune", "probe"):
        command = (cell / f"{stage}.log").read_text().splitlines()[0]
        assert " -m deepspeed.launcher.runner --num_gpus 1 --master_port " in command, command
        assert command.endswith("--resume auto"), command
    assert " -m uniemox.launch.predict " in (cell / "zero_shot.log").read_text().splitlines()[0]
