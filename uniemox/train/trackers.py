"""Where the report's scalars go (``log.report_to``), each a thin adapter over the library's own
client, on rank 0, acting only when a report is written:

    tensorboard  RUN/tb/            torch's SummaryWriter (images too)
    jsonl        RUN/metrics.jsonl  one JSON object per report (with the batches' key checksums)
    csv          RUN/csv/           DeepSpeed's CSV monitor: NAME.csv (step, value) per scalar, and
                                    config.yaml, the run config
    wandb        RUN/wandb/         wandb.init(config=the run config), offline unless log.online
    comet        RUN/comet/         comet_ml.start(...), log_parameters(the run config); offline
                                    unless log.online (a .zip per attempt for ``comet upload``)

A resumed run (``start_step`` > 0) logs no step twice where the format allows it: TensorBoard
purges what an earlier attempt wrote beyond the checkpoint, the JSONL and the CSVs are cut back to
it. W&B and Comet continue the same run (its id is kept in RUN/trackers.json); neither can take
steps back: W&B keeps the first value of a step it holds (offline: each attempt is its own
directory, `wandb sync` the first, then `wandb sync --append` the others), Comet shows both
points of a step an attempt repeated.
"""
import importlib.util
import json
import os
import uuid
from typing import Callable, Dict, List, Optional

from uniemox.errors import UserError
from uniemox.io import atomic_write_json, atomic_write_text, read_json

LIBRARIES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
             "comet": ("comet_ml", "comet_ml")}  # tracker: (module, pip package)


def check_trackers(names: List[str]) -> None:
    """Every requested tracker's library is installed (checked on every rank, before anything starts)."""
    for name in names:
        module, package = LIBRARIES.get(name, (None, None))
        if module and importlib.util.find_spec(module) is None:
            raise UserError(f"log.report_to names {name}, but {package} is not installed: "
                            f"pip install {package} (or 'uniemox[trackers]')")


def cut_after(path: str, last_step: int, step_of: Callable[[str], Optional[int]]) -> None:
    """Keep the lines of ``path`` up to step ``last_step``. ``step_of(line)``: its step, None for a
    line kept as it is (a header); a line it cannot read (cut by a kill mid-write) is dropped."""
    if not os.path.isfile(path):
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                step = step_of(line)
            except (ValueError, KeyError, TypeError, IndexError):
                continue
            if step is None or step <= last_step:
                kept.append(line if line.endswith("\n") else line + "\n")
    atomic_write_text(path, "".join(kept))


def jsonl_step(line: str) -> int:
    return json.loads(line)["step"]


def _csv_step(line: str) -> Optional[int]:
    if not line.endswith("\n"):
        raise ValueError("a row cut mid-write")
    first = line.split(",", 1)[0]
    return None if first == "step" else int(first)


class TensorBoard:
    def __init__(self, run_dir: str, start_step: int, **_):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(os.path.join(run_dir, "tb"), purge_step=start_step + 1)
        self.where = f"TensorBoard: tensorboard --logdir {os.path.join(run_dir, 'tb')}"

    def log(self, values: Dict[str, float], step: int, extra: Dict) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def image(self, tag: str, chw, step: int) -> None:
        self.writer.add_image(tag, chw, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class Jsonl:
    def __init__(self, run_dir: str, start_step: int, **_):
        path = os.path.join(run_dir, "metrics.jsonl")
        cut_after(path, start_step, jsonl_step)
        self.file = open(path, "a", encoding="utf-8")
        self.where = f"JSONL: {path}"

    def log(self, values: Dict[str, float], step: int, extra: Dict) -> None:
        self.file.write(json.dumps(dict(values, **extra, step=step)) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class Csv:
    """DeepSpeed's CSV monitor (the files of a DeepSpeed ``csv_monitor``: csv/loss_loss.csv ...)."""

    def __init__(self, run_dir: str, start_step: int, run_config: Dict, **_):
        from deepspeed.monitor.config import CSVConfig
        from deepspeed.monitor.csv_monitor import csvMonitor

        folder = os.path.join(run_dir, "csv")
        kept = [f for f in sorted(os.listdir(folder)) if f.endswith(".csv")] if os.path.isdir(folder) else []
        for name in kept:
            cut_after(os.path.join(folder, name), start_step, _csv_step)
        self.monitor = csvMonitor(CSVConfig(enabled=True, output_path=run_dir, job_name="csv"))
        # the monitor writes a header row into a file the first time it sees a name: not again into
        # the files an earlier attempt began
        self.monitor.filenames = [name[:-len(".csv")] for name in kept]
        import yaml
        atomic_write_text(os.path.join(folder, "config.yaml"), yaml.safe_dump(run_config, sort_keys=False))
        self.where = f"CSV: {folder}"

    def log(self, values: Dict[str, float], step: int, extra: Dict) -> None:
        self.monitor.write_events([(key, value, step) for key, value in values.items()])

    def close(self) -> None:
        pass  # the monitor opens and closes its files at every write


def run_ids(run_dir: str) -> Dict[str, str]:
    """The W&B run id and Comet experiment key of this run dir (made on its first start)."""
    path = os.path.join(run_dir, "trackers.json")
    ids = read_json(path) if os.path.isfile(path) else {}
    if "wandb" not in ids or "comet" not in ids:
        ids = dict({"wandb": uuid.uuid4().hex[:12], "comet": uuid.uuid4().hex}, **ids)
        atomic_write_json(path, ids)
    return ids


class Wandb:
    """Weights & Biases through its own client: one run per run dir (its id kept), the run config as
    the run's config, console capture off (the run's own log stays as it is)."""

    def __init__(self, run_dir: str, start_step: int, run_config: Dict, log, **_):
        import wandb

        mode = "online" if log.online else "offline"
        self.run = wandb.init(project=log.project, name=log.run_name or os.path.basename(os.path.abspath(run_dir)),
                              id=run_ids(run_dir)["wandb"], resume="allow" if log.online else None, dir=run_dir,
                              mode=mode, config=run_config, settings=wandb.Settings(console="off", quiet=True))
        where = os.path.dirname(self.run.dir)  # RUN/wandb/<mode>-run-<time>-<id>
        self.where = f"W&B {mode}: {where}" + ("" if log.online else f" (upload: wandb sync {where})")

    def log(self, values: Dict[str, float], step: int, extra: Dict) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class Comet:
    """Comet through its own client: one experiment per run dir (its key kept), the run config as
    its parameters; Comet's automatic logging is off (it would log TensorBoard's scalars again)."""

    def __init__(self, run_dir: str, start_step: int, run_config: Dict, log, **_):
        # comet_ml reads these when imported: no import hooks (we log explicitly), and offline no
        # error reports to sentry.io (an offline run reaches no network)
        os.environ.setdefault("COMET_DISABLE_AUTO_LOGGING", "1")
        if not log.online:
            os.environ.setdefault("COMET_ERROR_TRACKING_ENABLE", "false")
        import comet_ml

        folder = os.path.join(run_dir, "comet")
        settings = comet_ml.ExperimentConfig(
            name=log.run_name or os.path.basename(os.path.abspath(run_dir)), offline_directory=folder,
            auto_metric_logging=False, auto_param_logging=False, auto_histogram_weight_logging=False,
            auto_output_logging=False, parse_args=False, log_git_metadata=False, log_git_patch=False,
            log_env_host=log.online, display_summary_level=0)  # env_host looks up the server's address
        self.experiment = comet_ml.start(project_name=log.project, experiment_key=run_ids(run_dir)["comet"],
                                         online=log.online, experiment_config=settings)
        self.experiment.log_parameters(run_config)
        self.where = "Comet online" if log.online else f"Comet offline: {folder} (upload: comet upload {folder}/*.zip)"

    def log(self, values: Dict[str, float], step: int, extra: Dict) -> None:
        self.experiment.log_metrics(values, step=step)

    def close(self) -> None:
        self.experiment.end()


TRACKERS = {"tensorboard": TensorBoard, "jsonl": Jsonl, "csv": Csv, "wandb": Wandb, "comet": Comet}


def open_trackers(names: List[str], run_dir: str, start_step: int, run_config: Dict, log) -> List:
    """The trackers ``names`` on ``run_dir``, in order. One that cannot start (no login for an
    online run, a broken install) is one line naming it."""
    check_trackers(names)
    opened = []
    for name in names:
        try:
            opened.append(TRACKERS[name](run_dir=run_dir, start_step=start_step, run_config=run_config, log=log))
        except Exception as exc:
            for tracker in opened:
                tracker.close()
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"log.report_to: {name} could not start: {detail}") from exc
    return opened
