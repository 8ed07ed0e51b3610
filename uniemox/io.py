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
from typing import Any, Union

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


def replace_dir(tmp_dir: PathLike, out_dir: PathLike) -> Path:
    """Move a finished folder into place; an existing one is swapped out first and removed
    after, so ``out_dir`` is always either the old folder or the new one."""
    tmp_dir, out_dir = Path(tmp_dir), Path(str(out_dir).rstrip("/"))
    if out_dir.is_dir():
        old = out_dir.with_name(f".{out_dir.name}.old{os.getpid()}")
        os.replace(out_dir, old)
        os.replace(tmp_dir, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp_dir, out_dir)
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
