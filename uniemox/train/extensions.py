"""Where DeepSpeed's JIT-built ops go, and what a killed build left behind.

One folder per torch, Python and DeepSpeed version under the project's cache, so that another
environment's build never forces a rebuild here (torch's default folder is shared by every torch
version of a Python: one run paid 23.6 s for that). ``TORCH_EXTENSIONS_DIR`` set by the project in
a parent process is inherited by its children, which may run another torch (a test's venv with the
lowest versions did, and rebuilt the op into the parent's folder): a folder of the project's own
that names another environment is replaced by this one's; a folder the user chose is kept.

torch guards a build with a ``lock`` file that only the builder removes (``FileBaton``): a build
killed half-way leaves it, and every later run of that environment waits for it forever. A lock
older than any build (`STALE_LOCK_S`) is removed with a line.
"""
import logging
import os
import sys
import time

import torch

logger = logging.getLogger(__name__)

VARIABLE = "TORCH_EXTENSIONS_DIR"
STALE_LOCK_S = 20 * 60  # the shared-memory op builds in about 2-3 minutes on a 2-core machine


def extensions_dir() -> str:
    """The folder of this environment: ``UNIEMOX_EXTENSIONS`` (or the project's cache) / version."""
    import deepspeed

    base = os.environ.get("UNIEMOX_EXTENSIONS") or os.path.join(
        os.environ.get("UNIEMOX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "uniemox"), "torch_extensions")
    version = f"torch{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}-ds{deepspeed.__version__}"
    return os.path.join(base, version.replace("+", "_"))


def use_extensions_dir() -> str:
    """Point torch's JIT builds at this environment's folder (unless the user chose another one)
    and clear the locks killed builds left there; the folder in use."""
    ours = extensions_dir()
    current = os.environ.get(VARIABLE)
    if not current or os.path.dirname(os.path.abspath(current)) == os.path.dirname(ours):
        os.environ[VARIABLE] = current = ours
    remove_stale_locks(current)
    return current


def remove_stale_locks(folder: str, now: float = None) -> None:
    now = time.time() if now is None else now
    if not os.path.isdir(folder):
        return
    for op in os.listdir(folder):
        lock = os.path.join(folder, op, "lock")
        try:
            age = now - os.stat(lock).st_mtime
        except OSError:
            continue
        if age > STALE_LOCK_S:
            try:
                os.remove(lock)
            except OSError:
                continue
            logger.warning("removed the lock of a %s build that stopped %.0f min ago (%s)", op, age / 60, lock)
