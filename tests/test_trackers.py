"""log.report_to: a real (teacher) training run writes the same scalars to TensorBoard,
metrics.jsonl, the CSVs of DeepSpeed's CSV monitor, an offline W&B run and an offline Comet
experiment, each with the run config; a resumed run logs no step twice in TensorBoard, the JSONL
and the CSVs, and continues the same W&B run / Comet experiment; a tracker whose library is
missing is one line and exit code 2, before anything starts."""
import csv
import glob
import json
import os
import subprocess
import sys
import zipfile

import pytest
import yaml

from subprocesses import child_env
from uniemox.config import resolve_config
from uniemox.config.clip_teacher import TeacherTrainConfig
from uniemox.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "launch", "train_teacher.py")
ALL = "log.report_to=[tensorboard,jsonl,csv,wandb,comet]"
ARGS = ["optim.max_steps=4", "log.every=1", "checkpoint.every=2", "checkpoint.keep=2", "log.progress=false",
        "eval.every=-1", "export.path=null", ALL]


def train(run_dir, *extra):
    proc = subprocess.run([sys.executable, TRAIN, "--run-dir", str(run_dir)] + ARGS + list(extra), cwd=REPO,
                          capture_output=True, text=True, timeout=600, env=child_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


# -- each tracker's record, read with its own reader: {tag: {step: value}} ------------------------
def tensorboard(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def jsonl(run_dir):
    out = {}
    for line in open(run_dir / "metrics.jsonl"):
        row = json.loads(line)
        for key, value in row.items():
            if key not in ("step", "batch_crc32"):
                assert row["step"] not in out.setdefault(key, {}), (key, row["step"])  # once per step
                out[key][row["step"]] = value
    return out


def csvs(run_dir):
    out = {}
    for path in glob.glob(str(run_dir / "csv" / "*.csv")):
        rows = list(csv.reader(open(path)))
        assert rows[0][0] == "step" and all(r[0] != "step" for r in rows[1:])  # one header
        steps = [int(r[0]) for r in rows[1:]]
        assert len(steps) == len(set(steps)), path  # once per step
        out[os.path.basename(path)[:-4]] = {int(r[0]): float(r[1]) for r in rows[1:]}
    return out


def wandb_runs(run_dir):
    """[(run id, config, {tag: {step: value}})] of each offline run directory, oldest first."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal.datastore import DataStore
    runs = []
    for path in sorted(glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))):
        store, run_id, config, history = DataStore(), None, {}, {}
        store.open_for_scan(path)
        while (data := store.scan_data()) is not None:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            if record.HasField("run"):
                run_id = record.run.run_id
                config.update({u.key or "/".join(u.nested_key): json.loads(u.value_json)
                               for u in record.run.config.update})
            elif record.HasField("history"):
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                for key, value in items.items():
                    if not key.startswith("_"):
                        history.setdefault(key, {})[items["_step"]] = value
        runs.append((run_id, config, history))
    return runs


def comet_experiments(run_dir):
    """[(experiment key, parameters, {tag: {step: value}})] of each offline archive."""
    out = []
    for path in sorted(glob.glob(str(run_dir / "comet" / "*.zip")), key=os.path.getmtime):
        with zipfile.ZipFile(path) as z:
            key = json.loads(z.read("experiment.json"))["offline_id"]
            messages = [json.loads(line) for line in z.read("messages.json").decode().splitlines() if line]
        params = {}
        for m in messages:
            if m["type"] == "parameter_msg":  # a list's value comes as "params"
                param = m["payload"].get("param") or m["payload"]["params"]
                if param["source"] == "manual":
                    params[param["paramName"]] = param["paramValue"]
        metrics = {}
        for m in messages:
            if m["type"] == "metric_msg" and m["payload"]["metric"]["step"] is not None:
                metric = m["payload"]["metric"]
                metrics.setdefault(metric["metricName"], {})[metric["step"]] = metric["metricValue"]
        metrics.pop("process duration", None)  # Comet's own, at the end
        out.append((key, params, metrics))
    return out


def same_scalars(a, b, name):
    assert sorted(a) == sorted(b), name
    for tag in a:
        assert sorted(a[tag]) == sorted(b[tag]), (name, tag)
        for step, value in a[tag].items():  # TensorBoard stores float32
            assert b[tag][step] == pytest.approx(value, rel=1e-6, abs=1e-12), (name, tag, step)


def test_every_tracker_holds_the_scalars_of_tensorboard_and_a_resume_logs_no_step_twice(tmp_path):
    pytest.importorskip("wandb", reason="pip install -e '.[trackers]'")
    pytest.importorskip("comet_ml", reason="pip install -e '.[trackers]'")
    run = tmp_path / "run"
    train(run)
    tb = tensorboard(run)
    assert {"loss/loss", "optim/lr", "train/logits_cols"} <= set(tb) and sorted(tb["loss/loss"]) == [1, 2, 3, 4]
    same_scalars(tb, jsonl(run), "jsonl")
    same_scalars({tag.replace("/", "_"): v for tag, v in tb.items()}, csvs(run), "csv")  # DeepSpeed's file names
    [(wandb_id, wandb_config, wandb_history)] = wandb_runs(run)
    same_scalars(tb, wandb_history, "wandb")
    [(comet_key, comet_params, comet_metrics)] = comet_experiments(run)
    same_scalars(tb, comet_metrics, "comet")

    # the run config is each tracker's run config
    config = yaml.safe_load(open(run / "config.yaml"))
    assert yaml.safe_load(open(run / "csv" / "config.yaml")) == config
    assert {k: wandb_config[k] for k in config} == config
    assert comet_params["optim|lr"] == config["optim"]["lr"] and comet_params["log|report_to"] == config["log"][
        "report_to"]
    assert json.load(open(run / "trackers.json")) == {"wandb": wandb_id, "comet": comet_key}

    # resumed from step 2 (the first attempt reached step 4): steps 3-4 are logged again, once
    first = {name: reader(run) for name, reader in (("tb", tensorboard), ("jsonl", jsonl), ("csv", csvs))}
    train(run, "--resume", str(run / "checkpoints" / "step_00000002"))
    for name, reader in (("tb", tensorboard), ("jsonl", jsonl), ("csv", csvs)):
        again = reader(run)  # the readers fail on a step logged twice
        loss = "loss_loss" if name == "csv" else "loss/loss"
        assert sorted(again[loss]) == [1, 2, 3, 4], name
        assert again[loss] == pytest.approx(first[name][loss], rel=1e-5), name  # the resumed losses
    runs = wandb_runs(run)  # offline: one directory per attempt, the same run id (wandb sync --append)
    assert [r[0] for r in runs] == [wandb_id] * 2 and sorted(runs[1][2]["loss/loss"]) == [3, 4]
    experiments = comet_experiments(run)  # one archive per attempt, the same experiment
    assert [e[0] for e in experiments] == [comet_key] * 2 and sorted(experiments[1][2]["loss/loss"]) == [3, 4]


def test_a_missing_tracker_library_is_one_line_and_exit_code_2(tmp_path):
    """``sys.modules[name] = None`` is Python's way of making a module unimportable."""
    code = ("import sys; sys.modules['wandb'] = None; from uniemox.launch.train_teacher import main; "
            f"main(['--run-dir', {str(tmp_path)!r}, 'log.report_to=[tensorboard,wandb]'])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=child_env())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == ("error: log.report_to names wandb, but wandb is not installed: "
                                                    "pip install wandb (or 'uniemox[trackers]')")
    assert not (tmp_path / "config.yaml").exists()  # stopped before the run started


def test_report_to_takes_known_trackers_only():
    cfg = resolve_config(TeacherTrainConfig)
    assert cfg.log.report_to == ["tensorboard", "jsonl"]  # the default: as before
    with pytest.raises(UserError, match="'log.report_to': each item must be one of tensorboard, jsonl, csv, "
                                        "wandb, comet, got 'mlflow'"):
        resolve_config(TeacherTrainConfig, overrides=["log.report_to=[csv,mlflow]"])
