"""One writer per output, for real: two pretraining processes on one run dir, claims of SIGKILLed
processes, of a process whose pid was reused, of another host (its heartbeat alive or stopped),
and the same for make_shards' output folder and --export's folder."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from subprocesses import child_env

from uniemox.claim import _proc_start, acquire, claim_path
from uniemox.errors import UserError
from uniemox.launch.make_shards import main as make_shards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = os.path.join(REPO, "launch", "pretrain.py")
TINY = ["model.arch={img_size: 32, depth: 2, decoder_depth: 1}", "data.batch_size=8", "data.num_workers=1",
        "log.every=1", "log.progress=false", "log.image_every=0", "checkpoint.every=100", "optim.max_steps=4"]


def one_line_error(stderr, *needles):
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(n in last for n in needles), last
    return last


def foreign_claim(target, heartbeat_age, host="node-elsewhere", pid=4242, what="training run"):
    """The claim another machine's process would have written, its last heartbeat ``heartbeat_age`` ago."""
    path = claim_path(str(target))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"host": host, "pid": pid, "pid_start": 1234, "boot_id": "elsewhere", "since": time.time() - 3600,
                   "what": what, "command": "launch/pretrain.py"}, f)
    os.utime(path, (time.time() - heartbeat_age,) * 2)
    return path


def test_a_second_run_on_one_run_dir_is_refused_naming_the_holder(tmp_path):
    """The first run waits for data at step 2; the identical second command is refused in one line
    (exit 2) and the first goes on: a signal then stops it with its checkpoint, as any run."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, PRETRAIN, "--run-dir", str(run_dir)] + TINY
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=child_env({"UNIEMOX_FAULT": "slow_data@step:2"}))
    try:
        deadline = time.monotonic() + 300
        while not ((run_dir / "metrics.jsonl").is_file() and (run_dir / "metrics.jsonl").read_text()):
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.1)
        second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=child_env())
        assert second.returncode == 2
        one_line_error(second.stderr, f"{run_dir} is in use by another training run", f"host {socket.gethostname()}",
                       f"process {first.pid}", "since 20")
        assert first.poll() is None
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 4, stderr[-3000:]
    assert (run_dir / "checkpoints" / "step_00000001" / "COMPLETE").is_file()
    assert [json.loads(line)["step"] for line in open(run_dir / "metrics.jsonl")] == [1]
    assert not os.path.exists(claim_path(str(run_dir)))


def test_a_sigkilled_holder_is_taken_over_a_live_one_refused(tmp_path):
    target = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from uniemox.claim import acquire; "
                               "acquire(sys.argv[1], 'make_shards'); print('held', flush=True); time.sleep(600)",
                               str(target)], stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"in use by another make_shards .*process {holder.pid}"):
            acquire(str(target), "make_shards")
    finally:
        holder.kill()
        holder.wait()
    claim = acquire(str(target), "make_shards")  # its process is gone
    assert json.load(open(claim.path))["pid"] == os.getpid()
    claim.release()
    assert not os.path.exists(claim.path)


def test_a_reused_pid_does_not_keep_a_claim(tmp_path):
    """Same host, the pid alive but a younger process than the claim's: the holder is gone."""
    other = subprocess.Popen(["sleep", "600"])
    try:
        path = foreign_claim(tmp_path / "out", heartbeat_age=0, host=socket.gethostname(), pid=other.pid)
        info = json.load(open(path))
        info.update(pid_start=_proc_start(other.pid), boot_id=None)  # this very process: alive
        json.dump(info, open(path, "w"))
        with pytest.raises(UserError, match=f"process {other.pid}"):
            acquire(str(tmp_path / "out"), "export")
        info.update(pid_start=_proc_start(other.pid) - 1)  # an older process had that pid
        json.dump(info, open(path, "w"))
        acquire(str(tmp_path / "out"), "export").release()
    finally:
        other.kill()
        other.wait()


def test_another_hosts_claim_holds_while_its_heartbeat_lives(tmp_path):
    foreign_claim(tmp_path / "run", heartbeat_age=5)
    with pytest.raises(UserError, match="host node-elsewhere, process 4242, since .* last heartbeat 5 s ago"):
        acquire(str(tmp_path / "run"), "training run")
    foreign_claim(tmp_path / "run", heartbeat_age=600)  # the node was lost ten minutes ago
    claim = acquire(str(tmp_path / "run"), "training run")
    assert json.load(open(claim.path))["host"] == socket.gethostname()
    claim.release()


def test_make_shards_and_export_hold_their_output(tmp_path, capsys):
    shards = tmp_path / "shards"
    foreign_claim(shards, heartbeat_age=5, what="make_shards")
    args = ["--sample", str(tmp_path / "sample"), str(shards), "--sample-per-class", "2", "--detector", "none",
            "--workers", "0", "--no-progress"]
    assert make_shards(args) == 2
    one_line_error(capsys.readouterr().err, f"{shards} is in use by another make_shards", "node-elsewhere")
    assert not shards.exists()
    foreign_claim(shards, heartbeat_age=600)
    assert make_shards(args) == 0
    assert (shards / "manifest.json").is_file() and not os.path.exists(claim_path(str(shards)))

    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, PRETRAIN, "--run-dir", str(run_dir)] + TINY[:-1] + ["optim.max_steps=1"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=child_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    export = [sys.executable, PRETRAIN, "--export", str(run_dir / "checkpoints" / "step_00000001"),
              str(tmp_path / "export")]
    foreign_claim(tmp_path / "export", heartbeat_age=5, what="export")
    refused = subprocess.run(export, cwd=REPO, capture_output=True, text=True, timeout=300, env=child_env())
    assert refused.returncode == 2
    one_line_error(refused.stderr, "export is in use by another export", "node-elsewhere")
    assert not (tmp_path / "export").exists()
    foreign_claim(tmp_path / "export", heartbeat_age=600)
    done = subprocess.run(export, cwd=REPO, capture_output=True, text=True, timeout=300, env=child_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "export" / "encoder.safetensors").is_file()
