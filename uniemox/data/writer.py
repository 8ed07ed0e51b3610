"""Write a `SourceSet` as WebDataset tar shards plus a manifest.

Per sample (docs/data.md, "Sample format"): ``__key__``, ``jpg`` (the original bytes unless the
image was resized or was not a JPEG) and ``json`` with label, label_name, dataset,
attributes, person_box ([x0, y0, x1, y1] in pixels of the STORED image, or null),
box_source, size and, where the dataset has them, its own ``annotations`` (EMOTIC's
valence/arousal/dominance, Emotion6's ground truth). Decoding, resizing and person detection run in worker processes
(spawned: mediapipe's threads do not survive fork); the main process only writes.
"""
import errno
import io
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from .. import __version__
from ..errors import UserError
from ..io import describe_write_error
from .detector import build_detector
from .images import check_declared_size, skip_kind, to_rgb
from .sample_meta import check_meta
from .manifest import FORMAT, VERSION, describe_shards, write_manifest
from .shard_output import SplitShardWriter, finish_output, prepare_output, remove_partials
from .sources import Record, SourceSet, assign_unique_keys
from .splits import SPLITS

JPEG_QUALITY = 95
_DETECTOR = None  # one per worker process


def prepare_image(path: str, max_side: int) -> Tuple[bytes, Image.Image, float]:
    """(stored JPEG bytes, decoded RGB image, scale original->stored).

    Resized (bicubic) so the SHORT side is max_side when it is longer; max_side=0 keeps
    the original size. The original bytes are kept when the file is a JPEG and no resize
    is needed; anything else is re-encoded as JPEG.
    """
    with open(path, "rb") as f:
        raw = f.read()
    img = check_declared_size(Image.open(io.BytesIO(raw)))  # judged before any pixel is decoded
    fmt = img.format
    w, h = img.size
    scale = 1.0
    if max_side and min(w, h) > max_side:
        scale = max_side / min(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img.draft("RGB", size)  # JPEG: decode at a reduced DCT scale that is still >= size
        img = to_rgb(img).resize(size, Image.BICUBIC, reducing_gap=3.0)
    else:
        img = to_rgb(img)  # full decode: a corrupt file fails here, not in training
    if scale == 1.0 and fmt == "JPEG":
        return raw, img, scale
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue(), img, scale


def _scale_box(box: Optional[Sequence[float]], scale: float, size: Tuple[int, int]) -> Optional[List[float]]:
    if box is None:
        return None
    w, h = size
    x0, y0, x1, y1 = (min(max(v * scale, 0.0), lim) for v, lim in zip(box, (w, h, w, h)))
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return [round(x0, 2), round(y0, 2), round(x1, 2), round(y1, 2)]


def _init_worker(detector: str, weights: Optional[str]) -> None:
    global _DETECTOR
    try:
        import torch
        torch.set_num_threads(1)  # one process per core already
    except ImportError:
        pass
    _DETECTOR = build_detector(detector, weights)


def process_record(rec: Record, max_side: int) -> Dict:
    """Decode, resize, find the person box; an unreadable image gives {'error': ...}."""
    try:
        data, img, scale = prepare_image(rec.path, max_side)
    except Exception as e:  # unreadable and oversized images are skipped and counted, never fatal
        return {"key": rec.key, "error": f"{rec.path}: {type(e).__name__}: {e}", "kind": skip_kind(e)}
    score = None
    if rec.box_from_annotation:
        box, source = _scale_box(rec.person_box, scale, img.size), "annotation"
    elif _DETECTOR is not None:
        found = _DETECTOR(np.asarray(img))
        box, source = (_scale_box(found[0], 1.0, img.size), _DETECTOR.name) if found else (None, _DETECTOR.name)
        score = round(found[1], 4) if found else None
    else:
        box, source = None, "none"
    meta = {"label": rec.label, "label_name": rec.label_name, "attributes": rec.attributes,
            "person_box": box, "box_source": source, "box_score": score, "size": list(img.size)}
    if rec.labels is not None:
        meta.update(labels=rec.labels, label_names=rec.label_names)
    if rec.annotations:
        meta["annotations"] = rec.annotations
    return {"key": rec.key, "jpg": data, "meta": meta}


def _results(records: List[Record], max_side: int, detector: str, weights: Optional[str], workers: int):
    args = [(r, max_side) for r in records]
    if workers <= 0:
        _init_worker(detector, weights)
        yield from (process_record(*a) for a in args)
        return
    # ProcessPoolExecutor, not Pool: a worker that dies raises BrokenProcessPool instead of hanging
    chunk = max(1, min(16, len(args) // (4 * workers)))
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                               initargs=(detector, weights))
    try:
        yield from pool.map(_star, args, chunksize=chunk)
    except BrokenProcessPool as e:
        raise UserError(f"a shard-writing worker process died ({e}); try --workers 0") from None
    finally:  # a failed write stops here too: the images not yet processed are dropped, not awaited
        pool.shutdown(wait=True, cancel_futures=True)


def _star(args: Tuple[Record, int]) -> Dict:
    return process_record(*args)


_WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)


def write_shards(source: SourceSet, out_dir: str, shard_size: int = 1000, max_side: int = 256,
                 detector: str = "mediapipe", detector_weights: Optional[str] = None,
                 num_workers: Optional[int] = None, progress: bool = True) -> Dict:
    """Write `source` to OUT/{split}-NNNNNN.tar and OUT/manifest.json; returns the manifest.
    A rerun into the folder of a run that stopped before its manifest writes the set again
    (shard_output.py); a full disk ends in one line, with no manifest."""
    if shard_size < 1:
        raise UserError(f"--shard-size must be >= 1, got {shard_size}")
    if max_side < 0:
        raise UserError(f"--max-side must be >= 0, got {max_side}")
    assign_unique_keys(source.records)  # whatever a source made of the names: one key per image
    needs_detector = any(not r.box_from_annotation for r in source.records)
    det = build_detector(detector if needs_detector else "none", detector_weights)  # fail here, not in a worker
    det_info = {"name": det.name, "version": det.version} if det else {"name": "none"}
    if det:
        det.close()
    command = {"source": source.source, "options": {"shard_size": shard_size, "max_side": max_side}}
    try:
        redone = prepare_output(out_dir, command)
        if redone and progress:
            print(f"{out_dir}: an earlier make_shards stopped before its manifest; writing the set again "
                  f"({len(redone)} file(s) of it removed)", file=sys.stderr)
        manifest = _write_all(source, out_dir, shard_size, max_side, det_info, detector_weights, num_workers,
                              progress)
        finish_output(out_dir)
    except OSError as exc:
        if exc.errno not in _WRITE_ERRORS:
            raise
        if os.path.isdir(out_dir):
            remove_partials(out_dir)
        raise UserError(f"cannot write shards to {out_dir}: {describe_write_error(exc, out_dir)}; no manifest "
                        "was written (rerun the same command to write the set again)") from None
    return manifest


def _write_all(source: SourceSet, out_dir: str, shard_size: int, max_side: int, det_info: Dict,
               detector_weights: Optional[str], num_workers: Optional[int], progress: bool) -> Dict:
    workers = min(os.cpu_count() or 1, 8) if num_workers is None else num_workers
    order = {s: i for i, s in enumerate(SPLITS)}
    records = sorted(source.records, key=lambda r: (order.get(r.split, 9), r.split, r.key))

    writers: Dict[str, SplitShardWriter] = {}
    count, boxed, box_sources = Counter(), Counter(), Counter()
    per_class = {s: Counter() for s in SPLITS}
    errors: List[str] = []
    error_kinds: Counter = Counter()
    t0 = time.time()
    bar = tqdm(total=len(records), desc="writing shards", unit="img", disable=not progress, file=sys.stderr)
    results = _results(records, max_side, det_info["name"], detector_weights, workers)
    try:
        for rec, res in zip(records, results):  # results come back in record order
            bar.update(1)
            if "error" in res:
                errors.append(res["error"])
                error_kinds[res["kind"]] += 1
                continue
            meta = dict(res["meta"], dataset=source.dataset)
            problem = check_meta(meta, len(source.classes))
            if problem is not None:  # a sample the readers would skip is never written
                raise UserError(f"{rec.path}: {problem}")
            if rec.split not in writers:
                writers[rec.split] = SplitShardWriter(out_dir, rec.split, shard_size)
            writers[rec.split].write({"__key__": rec.key, "jpg": res["jpg"], "json": meta})
            count[rec.split] += 1
            per_class[rec.split][rec.label_name] += 1
            boxed[rec.split] += meta["person_box"] is not None
            box_sources[meta["box_source"]] += 1
        for w in writers.values():
            w.close()
    except BaseException:
        for w in writers.values():
            w.abandon()
        raise
    finally:
        bar.close()
        results.close()
    if not count:
        raise UserError(f"no readable image in {source.source['path']} ({len(errors)} unreadable, "
                        f"first: {errors[0] if errors else '-'})")
    splits = {}
    for split in sorted(count, key=lambda s: SPLITS.index(s)):
        n = count[split]
        sizes = [min(shard_size, n - i) for i in range(0, n, shard_size)]
        splits[split] = {"count": n, "per_class": {c: per_class[split][c] for c in source.classes},
                         "with_person_box": boxed[split], "shards": describe_shards(out_dir, split, sizes)}
    manifest = {
        "format": FORMAT, "version": VERSION, "dataset": source.dataset, "source": source.source,
        "classes": list(source.classes), "label_order": source.label_order,
        "multi_label": any(r.labels for r in source.records),
        "options": {"shard_size": shard_size, "max_side": max_side},
        "tool": {"uniemox": __version__, "webdataset": getattr(wds, "__version__", "?"),
                 "python": sys.version.split()[0], "detector": det_info},
        "total": sum(count.values()), "with_person_box": sum(boxed.values()),
        "box_sources": dict(box_sources),
        "skipped": {"unreadable": error_kinds["corrupt_image"], "oversized_image": error_kinds["oversized_image"],
                    "examples": errors[:10], **source.skipped},
        "splits": splits,
    }
    write_manifest(out_dir, manifest)
    if progress:
        counted = {"unreadable": error_kinds["corrupt_image"], "oversized image": error_kinds["oversized_image"],
                   **{reason.replace("_", " "): n for reason, n in source.skipped.items()}}
        print(f"wrote {manifest['total']} images in {sum(len(s['shards']) for s in splits.values())} shards to "
              f"{out_dir} in {time.time() - t0:.1f}s: persons found {manifest['with_person_box']}, skipped " +
              ", ".join(f"{n} {what}" for what, n in counted.items()) + "; " +
              ", ".join(f"{k} {v['count']}" for k, v in splits.items()), file=sys.stderr)
        for error in errors[:3]:
            print(f"  skipped: {error}", file=sys.stderr)
    return manifest
