"""Files written whole or not at all: a temp file beside the target, flushed and fsynced, then
renamed over it (atomic on POSIX). A reader, or a run killed mid-write, never sees half a file;
the record it replaces stays intact until the new one is complete. The one writer of the project,
and its one JSON reader (a missing or damaged file is a UserError naming it); `describe_write_error`
says in words why a write failed."""
import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional, Union

from uniemox.errors import UserError

PathLike = Union[str, "os.PathLike[str]"]


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_save(path: PathLike, write) -> Path:
    """``write(tmp_path)`` makes the file (``torch.save``, ``safetensors.save_file`` ...); it is
    renamed into place only once complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return atomic_save(path, write)


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any, indent: int = 1) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def read_json(path: PathLike, what: str = "file") -> Any:
    """A JSON file's content; missing or damaged: one line naming ``what`` and the path."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path} is not valid JSON ({exc})") from None
    except OSError as exc:  # permissions, a FIFO that errors, an I/O error
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def fsync_path(path: PathLike) -> None:
    """Flush a file's or a folder's entries to disk (a folder: the names in it, e.g. after a rename)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def aside_prefix(out_dir: PathLike) -> str:
    """How the folders that ``replace_dir`` sets aside are named: this, then the writer's process id."""
    return f".{Path(str(out_dir).rstrip('/')).name}.old-"


def replace_dir(tmp_dir: PathLike, out_dir: PathLike, between: Optional[Callable[[], None]] = None) -> Path:
    """Move a finished folder into place, its files flushed to disk first; an existing one is set
    aside first (``aside_prefix``) and removed after, so ``out_dir`` is always the old folder or the
    new one, or (killed between the two renames) the old one lies aside whole. ``between`` is called
    between the two renames (the fault hooks)."""
    tmp_dir, out_dir = Path(tmp_dir), Path(str(out_dir).rstrip("/"))
    for path in tmp_dir.iterdir():
        if path.is_file():
            fsync_path(path)
    fsync_path(tmp_dir)
    if out_dir.is_dir():
        old = out_dir.with_name(f"{aside_prefix(out_dir)}{os.getpid()}")
        os.replace(out_dir, old)
        if between:
            between()
        os.replace(tmp_dir, out_dir)
        fsync_path(out_dir.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp_dir, out_dir)
        fsync_path(out_dir.parent)
    return out_dir


def describe_write_error(exc: Exception, where: str) -> str:
    """Why a write failed, in words: a full disk, a read-only file system, no permission."""
    code = getattr(exc, "errno", None)
    full = code in (errno.ENOSPC, errno.EDQUOT) or "unexpected pos" in str(exc) or "No space left" in str(exc)
    try:
        full = full or shutil.disk_usage(where).free < 1 << 20
    except OSError:
        pass
    if full:
        return f"the disk is full ({where})"
    if code == errno.EROFS:
        return f"{where} is on a read-only file system"
    if code in (errno.EACCES, errno.EPERM):
        return f"no permission to write in {where}"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
