"""Results files of the step and loader benchmarks: one JSON (everything, rows included) and one
CSV (the rows, flat, one line per configuration and variant) per run, written atomically and
rewritten after every configuration, so a run cut short still leaves what it measured."""
import csv
import io
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from uniemox.io import atomic_write_text

from . import timing


def library_versions() -> Dict[str, str]:
    """timing.versions() plus the libraries the training step runs through."""
    out = timing.versions()
    for name, module in (("deepspeed", "deepspeed"), ("xformers", "xformers"), ("open_clip", "open_clip"),
                         ("timm", "timm")):
        try:
            out[name] = __import__(module).__version__
        except Exception:  # absent or broken: the row still says which torch ran it
            out[name] = None
    return out


def results_paths(benchmark: str, device_name: str, out: str = None) -> Tuple[Path, Path]:
    """(JSON, CSV): ``out`` (either suffix) or benchmarks/results/<benchmark>-<device>-<utc>."""
    json_path = Path(out) if out else timing.default_results_path(benchmark, device_name)
    if json_path.suffix == ".csv":
        json_path = json_path.with_suffix(".json")
    elif json_path.suffix != ".json":
        json_path = json_path.with_name(json_path.name + ".json")
    return json_path, json_path.with_suffix(".csv")


def write_csv(path: Path, rows: List[Dict], columns: Sequence[str]) -> Path:
    """Atomic, like timing.write_json; columns in the given order, unknown keys dropped."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return atomic_write_text(path, buf.getvalue())


def write_results(json_path: Path, csv_path: Path, payload: Dict, columns: Sequence[str]) -> None:
    """The CSV gets every row flattened with the run's date, device and versions."""
    flat = {"date": payload["date"], "device": payload["device"]["name"],
            **{f"v_{k}": v for k, v in payload["versions"].items()}}
    write_csv(csv_path, [dict(flat, **row) for row in payload["rows"]],
              ["date", "device"] + [f"v_{k}" for k in payload["versions"]] + list(columns))
    timing.write_json(json_path, dict(payload, csv=str(csv_path)))
