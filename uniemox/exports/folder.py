"""An export folder appears whole or not at all, and its files are known to belong together.

Writing: every file goes into a temporary sibling (``.NAME.partial-PID``), is fsynced, and the
folder is renamed into place. An older export is first renamed aside (``.NAME.old-PID``), the new
one renamed in, the old one removed: a writer killed at any point leaves the old export or the new
one whole, and leftovers that the next writer settles (a set-aside export whose replacement never
arrived is put back; partial folders are removed). Readers never change anything: they read the
set-aside export where the folder itself is missing.

Belonging: the writer draws one export id and records it in the folder's JSON config and in the
metadata of each of its safetensors files; a reader refuses (one line) a folder whose files carry
different ids, e.g. a weights file copied in from another export.
"""
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Tuple

from uniemox.errors import UserError
from uniemox.io import aside_prefix, replace_dir
from uniemox.safeload import read_safetensors

logger = logging.getLogger(__name__)
ID_KEY = "uniemox_export_id"  # the safetensors metadata key
Part = Tuple[str, Callable[[Path], None]]  # (what it writes, write(folder))
Progress = Optional[Callable[[str], None]]


def new_export_id() -> str:
    return uuid.uuid4().hex


def _partial_prefix(out: Path) -> str:
    return f".{out.name}.partial-"


def _leftovers(out: Path, prefix: str):
    """Siblings of ``out`` named ``prefix``PID, oldest first."""
    if not out.parent.is_dir():
        return []
    return sorted((p for p in out.parent.iterdir() if p.name.startswith(prefix)), key=lambda p: p.stat().st_mtime)


def settle(out: Path) -> None:
    """What a killed writer left beside ``out``: its set-aside export is put back when ``out``
    never arrived, every other leftover is removed. Writers only (they hold the folder's claim)."""
    olds = _leftovers(out, aside_prefix(out))
    if olds and not out.exists():
        os.replace(olds.pop(), out)
        logger.warning("%s: put back the export an interrupted writer had set aside", out)
    for path in olds + _leftovers(out, _partial_prefix(out)):
        shutil.rmtree(path, ignore_errors=True)


def write_whole(out_dir: str, parts: Sequence[Part], replaceable: Callable[[Path], bool],
                progress: Progress = None) -> Path:
    """``out_dir`` made by ``parts`` (each writes its files into the folder it is given), whole or
    not at all. An existing ``out_dir`` is replaced only when empty or ``replaceable`` (an export of
    the same kind): any other folder or file is refused, never deleted. ``progress(label)`` is
    called after each part and once the old export is set aside (label "swap": the fault hooks)."""
    out = Path(os.path.abspath(str(out_dir)))
    settle(out)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or replaceable(out))):
        raise UserError(f"{out} exists and is not an export of this kind: refusing to replace it (name a new "
                        f"or an empty folder)")
    tmp = out.with_name(f"{_partial_prefix(out)}{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for label, write in parts:
            write(tmp)
            if progress:
                progress(label)
        replace_dir(tmp, out, between=progress and (lambda: progress("swap")))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def locate(path: str) -> str:
    """The folder a reader reads: ``path``, or, where a writer was killed between its two renames,
    the whole export it had set aside."""
    out = Path(os.path.abspath(str(path)))
    if not out.exists():
        olds = _leftovers(out, aside_prefix(out))
        if olds:
            logger.warning("%s is missing: reading the previous export, set aside by an interrupted writer (%s)",
                           path, olds[-1].name)
            return str(olds[-1])
    return str(path)


def check_belonging(folder: str, export_id: Optional[str], files: Iterable[str], what: str) -> None:
    """Every safetensors file of ``files`` (names in ``folder``) carries ``export_id``, the id the
    folder's config records; else one line naming the file that does not belong."""
    if not export_id:
        raise UserError(f"{folder}: its config records no export id: not a complete {what} (written by hand or "
                        f"by an older version?): export it again")
    for name in files:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise UserError(f"{folder}: {name} is missing: an incomplete {what}")
        found = read_safetensors(path, what, tensors=False)[1].get(ID_KEY)
        if found != export_id:
            raise UserError(f"{folder}: {name} belongs to another export ({found or 'no export id'}) than its "
                            f"config.json ({export_id}): the folder mixes the files of two exports; export again")
