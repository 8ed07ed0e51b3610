"""One writer per output: a training run's directory, a shard folder, an export.

    with hold("runs/x", "training run"):
        ...                                  # a second holder is refused with one line (UserError)

The claim is a JSON file beside the output (``runs/x.claim``: host, process id, the process's
start time, boot id, since when, the command), made with ``os.link`` of a private temp file: the
create-if-absent that is atomic on NFS and Lustre too, where ``flock`` is not to be trusted. A
thread touches the file every ``HEARTBEAT_S`` seconds while it is held; it is removed on release
(and at exit). A claim whose holder died is taken over:

* same host: its process is gone, or its pid now belongs to a younger process (pid reuse), or
  the host has rebooted since (another boot id);
* another host: its heartbeat (the file's modification time) stopped ``STALE_AFTER_S`` ago.

Takeover renames the stale file away first (one rename wins) and checks that what it moved is
the claim it judged, so two newcomers never both take one stale claim.
"""
import atexit
import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from typing import Dict, Iterator, Optional

from uniemox.errors import UserError

logger = logging.getLogger(__name__)
HEARTBEAT_S = 15.0
STALE_AFTER_S = 120.0   # a live claim on a shared file system is touched well within this, even with NFS caching
SUFFIX = ".claim"


def claim_path(target: str) -> str:
    """Where the claim of ``target`` (a folder or a file, existing or not) lives: beside it, so
    that whatever replaces the target (an export renamed into place) leaves the claim alone."""
    return os.path.realpath(target).rstrip(os.sep) + SUFFIX


def _proc_start(pid: int) -> Optional[int]:
    """The process's start time in clock ticks since boot (Linux /proc), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return int(f.read().rpartition(")")[2].split()[19])  # field 22; the name may hold spaces
    except (OSError, ValueError, IndexError):
        return None


def _boot_id() -> Optional[str]:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _this_process(what: str) -> Dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": _proc_start(pid), "boot_id": _boot_id(),
            "since": time.time(), "what": what, "command": " ".join(sys.argv)[:500]}


def _read(path: str):
    """(claim dict, its raw bytes, seconds since its last heartbeat); None when there is none.
    Opening the file revalidates NFS's cached attributes (close-to-open), so the age is fresh."""
    try:
        with open(path, "rb") as f:
            raw, age = f.read(), time.time() - os.fstat(f.fileno()).st_mtime
    except FileNotFoundError:
        return None
    try:
        info = json.loads(raw.decode("utf-8"))
        if not isinstance(info, dict):
            raise ValueError
    except ValueError:
        info = {}  # a claim cut short by a crash while it was written: its heartbeat decides
    return info, raw, age


def stale_reason(info: Dict, age: float) -> Optional[str]:
    """Why a claim no longer holds (its holder is gone), or None while it may be alive."""
    here = socket.gethostname()
    if info.get("host") == here and isinstance(info.get("pid"), int):
        if info.get("boot_id") and _boot_id() and info["boot_id"] != _boot_id():
            return "its host has rebooted since"
        if not _pid_alive(info["pid"]):
            return f"process {info['pid']} is gone"
        start = _proc_start(info["pid"])
        if info.get("pid_start") is not None and start is not None and start != info["pid_start"]:
            return f"process {info['pid']} is gone (its pid belongs to another process now)"
        return None
    if age > STALE_AFTER_S:
        return f"its heartbeat stopped {age:.0f} s ago"
    return None


def describe(info: Dict, age: float) -> str:
    since = info.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since)) if isinstance(since, (int, float)) else "?"
    return (f"host {info.get('host', '?')}, process {info.get('pid', '?')}, since {when}, "
            f"last heartbeat {age:.0f} s ago")


class Claim:
    """A held claim: its heartbeat thread runs until ``release``."""

    def __init__(self, path: str, raw: bytes):
        self.path, self.raw = path, raw
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="uniemox-claim-heartbeat", daemon=True)
        self._thread.start()
        atexit.register(self.release)

    def held(self) -> bool:
        current = _read(self.path)
        return current is not None and current[1] == self.raw

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            if not self.held():
                logger.warning("the claim %s is no longer this process's: another holder took it over", self.path)
                return
            try:
                os.utime(self.path)
            except OSError as exc:  # a file system hiccup: the next beat tries again
                logger.warning("cannot refresh the claim %s: %s", self.path, exc)

    def release(self) -> None:
        """Ends the heartbeat and removes the claim if it is still this process's."""
        self._stop.set()
        atexit.unregister(self.release)
        if self.held():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def acquire(target: str, what: str) -> Claim:
    """Claim ``target`` for this process, or refuse (UserError) naming the live holder. A claim
    of this very process (an earlier run in the same interpreter) is taken as released."""
    path = claim_path(target)
    mine = json.dumps(_this_process(what)).encode("utf-8")
    tmp = f"{path}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(mine)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise UserError(f"cannot claim {target} for this {what}: cannot write {path}: "
                        f"{exc.strerror or exc}") from None
    try:
        for _ in range(5):  # each pass either takes the claim or removes one stale claim
            try:
                os.link(tmp, path)
                return Claim(path, mine)
            except FileExistsError:
                pass
            current = _read(path)
            if current is None:
                continue  # released meanwhile
            info, raw, age = current
            own = info.get("host") == socket.gethostname() and info.get("pid") == os.getpid()
            reason = "it is this process's own" if own else stale_reason(info, age)
            if reason is None:
                raise UserError(f"{target} is in use by another {info.get('what', 'writer')} ({describe(info, age)}; "
                                f"claim {path}): wait for it to end, or remove the claim file if that process "
                                f"is gone for good")
            if _remove_stale(path, raw):
                logger.warning("took over %s: the previous claim (%s) was stale: %s", path, describe(info, age),
                               reason)
        raise UserError(f"cannot claim {target}: its claim {path} keeps changing; another writer is starting")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _remove_stale(path: str, judged: bytes) -> bool:
    """Move the claim away (one rename wins); put it back if it is not the claim that was
    judged stale (a newcomer's fresh claim made in between)."""
    moved = f"{path}.stale.{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, moved)
    except FileNotFoundError:
        return False
    with open(moved, "rb") as f:
        same = f.read() == judged
    if not same:
        with contextlib.suppress(FileExistsError):
            os.link(moved, path)
    os.unlink(moved)
    return same


@contextlib.contextmanager
def hold(target: str, what: str) -> Iterator[Claim]:
    """``target`` held by this process for the block (see the module's docstring)."""
    claim = acquire(target, what)
    try:
        yield claim
    finally:
        claim.release()
