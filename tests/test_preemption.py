"""Preemption for real: SIGTERM sent to a running pretraining (its whole process group, DataLoader
workers included), to one of two DeepSpeed ranks, during an evaluation and during a stalled data
wait. Each run stops with a checkpoint at the step reached and exit code 4; the resume gives the
losses of an uninterrupted run and logs every step once."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from subprocesses import child_env, deepspeed_launcher

from uniemox.train.preemption import EXIT_CODE, Interrupted, PreemptionWatch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = os.path.join(REPO, "launch", "pretrain.py")
FINETUNE = os.path.join(REPO, "launch", "finetune.py")
TINY = ["model.arch={img_size: 32, depth: 2, decoder_depth: 1}", "data.batch_size=8", "log.every=1",
        "log.progress=false", "log.image_every=0", "checkpoint.every=100", "--deepspeed", "zero2"]
STEPS = 12


def pretrain_cmd(run_dir, *args, launcher=None):
    return (launcher or [sys.executable]) + [PRETRAIN, "--run-dir", str(run_dir)] + TINY + list(args)


def run(cmd, env=None, timeout=600):
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=child_env(env))


def ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def preempted(proc, step, run_dir):
    """Exit code 4, the line saying so, a complete checkpoint at ``step`` and none after it."""
    assert proc.returncode == EXIT_CODE, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"at step {step} (checkpoint" in proc.stderr.strip().splitlines()[-1]
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / f"step_{step:08d}" / "COMPLETE").is_file()
    assert (checkpoints / "latest").read_text().strip() == f"step_{step:08d}"
    assert not (run_dir.parent / (run_dir.name + ".claim")).exists()  # the run dir's claim was given back


def rows(run_dir):
    return [json.loads(line) for line in open(run_dir / "metrics.jsonl")]


def same_losses(straight, resumed, steps):
    """Each step logged exactly once, with the uninterrupted run's batches and losses."""
    a = {r["step"]: r for r in rows(straight) if "loss/loss" in r}
    b = [r for r in rows(resumed) if "loss/loss" in r]
    assert [r["step"] for r in b] == list(steps)
    for r in b:
        assert r["batch_crc32"] == a[r["step"]]["batch_crc32"], r["step"]
        assert r["loss/loss"] == pytest.approx(a[r["step"]]["loss/loss"], rel=1e-5, abs=1e-6), r["step"]


def start(cmd, env=None):
    """A run in a process group of its own (as a job step is), its output in files."""
    out = open(os.devnull, "w")
    err = open(f"/tmp/uniemox-preempt-{os.getpid()}-{time.monotonic_ns()}.err", "w+")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err, text=True, env=child_env(env),
                            start_new_session=True)
    proc.err = err
    return proc


def wait_for_step(proc, run_dir, step, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run_dir / "metrics.jsonl").is_file() and any(r["step"] >= step for r in rows(run_dir)):
            return
        assert proc.poll() is None, "the run ended before it was signalled"
        time.sleep(0.05)
    raise AssertionError(f"step {step} not logged in {timeout} s")


def finish(proc, timeout=300):
    proc.wait(timeout=timeout)
    proc.err.seek(0)
    stderr = proc.err.read()
    proc.err.close()
    os.unlink(proc.err.name)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    ok(run(pretrain_cmd(run_dir, f"optim.max_steps={STEPS}", "data.num_workers=2")))
    return run_dir


def test_sigterm_to_the_whole_process_group_mid_run(straight, tmp_path):
    """SIGTERM to the trainer and its two DataLoader workers at once (what a job step gets): the
    workers neither save nor die before their parent, the step reached is saved, the resume
    continues to the uninterrupted losses."""
    run_dir = tmp_path / "run"
    proc = start(pretrain_cmd(run_dir, f"optim.max_steps={STEPS}", "data.num_workers=2"))
    wait_for_step(proc, run_dir, 3)
    os.killpg(proc.pid, signal.SIGTERM)
    stopped = finish(proc)
    step = max(r["step"] for r in rows(run_dir))
    assert 3 <= step < STEPS
    preempted(stopped, step, run_dir)
    ok(run(pretrain_cmd(run_dir, f"optim.max_steps={STEPS}", "data.num_workers=2", "--resume", "auto")))
    same_losses(straight, run_dir, range(1, STEPS + 1))


def test_a_stalled_data_wait_is_cut_short(straight, tmp_path):
    """The first batch of step 4 takes 120 s to come: SIGTERM during the wait stops the run within
    seconds, at step 3, with the data position of step 3 (the batch under way is not lost)."""
    run_dir = tmp_path / "run"
    proc = start(pretrain_cmd(run_dir, f"optim.max_steps={STEPS}", "data.num_workers=2"),
                 env={"UNIEMOX_FAULT": "slow_data@step:4"})
    wait_for_step(proc, run_dir, 3)
    time.sleep(1.0)  # well into the wait
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    stopped = finish(proc, timeout=100)
    assert time.monotonic() - signalled < 100
    preempted(stopped, 3, run_dir)
    ok(run(pretrain_cmd(run_dir, f"optim.max_steps={STEPS}", "data.num_workers=2", "--resume", "auto")))
    same_losses(straight, run_dir, range(1, STEPS + 1))


def test_a_signal_to_one_of_two_ranks_stops_both_at_one_step(tmp_path):
    """SIGTERM to rank 1 alone when step 3 ends: both ranks save step 3 (one trainer state and one
    ZeRO-2 partition each) and exit 4; the resume on two ranks equals an uninterrupted run."""
    args = ["optim.max_steps=6", "data.num_workers=1"]
    ok(run(pretrain_cmd(tmp_path / "straight", *args, launcher=deepspeed_launcher(2))))
    run_dir = tmp_path / "run"
    stopped = run(pretrain_cmd(run_dir, *args, launcher=deepspeed_launcher(2)), env={"UNIEMOX_FAULT": "sigterm@step:3"})
    preempted(stopped, 3, run_dir)
    assert "stopped by a signal to another rank at step 3" in stopped.stderr  # rank 0 was not signalled
    tag = run_dir / "checkpoints" / "step_00000003"
    assert {p.name for p in tag.glob("trainer_rank*.pt")} == {"trainer_rank0.pt", "trainer_rank1.pt"}
    assert len(list(tag.glob("*optim_states.pt"))) == 2
    ok(run(pretrain_cmd(run_dir, *args, "--resume", "auto", launcher=deepspeed_launcher(2))))
    same_losses(tmp_path / "straight", run_dir, range(1, 7))


def test_sigkill_during_the_preemption_save_keeps_the_previous_checkpoint(tmp_path):
    """The grace period ran out while the preemption's checkpoint was written: the checkpoint
    before it stays the newest complete one and the run resumes from it."""
    run_dir = tmp_path / "run"
    args = ["optim.max_steps=6", "data.num_workers=1", "checkpoint.every=2"]
    killed = run(pretrain_cmd(run_dir, *args), env={"UNIEMOX_FAULT": "sigterm@step:3,kill@save:3"})
    assert killed.returncode == -9
    assert not (run_dir / "checkpoints" / "step_00000003" / "COMPLETE").exists()
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    resumed = ok(run(pretrain_cmd(run_dir, *args, "--resume", "auto")))
    assert "took over" in resumed.stderr  # the killed run's claim (its process is gone)
    assert [r["step"] for r in rows(run_dir)] == [1, 2, 3, 4, 5, 6]


FINETUNE_TINY = ["model.name=uniemox_vit_tiny_patch16", "model.arch={img_size: 32, depth: 2}", "data.batch_size=8",
                 "data.eval_batch_size=64", "data.num_workers=1", "log.every=1", "log.progress=false",
                 "optim.max_steps=6", "eval.every=2", "checkpoint.every=100", "--deepspeed", "zero2"]


def test_a_signal_during_an_evaluation_cuts_it_short_and_the_resume_redoes_it(tmp_path):
    """SIGTERM as step 4's validation starts: the run stops at once with a checkpoint at step 4 and
    nothing of that validation logged; the resume validates step 4 first, and every step's
    training loss and validation are logged once, as in an uninterrupted run."""
    ok(run([sys.executable, FINETUNE, "--run-dir", str(tmp_path / "straight")] + FINETUNE_TINY))
    run_dir = tmp_path / "run"
    cmd = [sys.executable, FINETUNE, "--run-dir", str(run_dir)] + FINETUNE_TINY
    stopped = run(cmd, env={"UNIEMOX_FAULT": "sigterm@eval:4"})
    preempted(stopped, 4, run_dir)
    assert not any(r["step"] == 4 and "val/top1" in r for r in rows(run_dir))
    ok(run(cmd + ["--resume", "auto"]))

    def logged(run_dir):
        return [(r["step"], sorted(k for k in r if k.startswith(("val/", "loss/")))) for r in rows(run_dir)]
    assert logged(run_dir) == logged(tmp_path / "straight")
    val = {r["step"]: r["val/top1"] for r in rows(tmp_path / "straight") if "val/top1" in r}
    assert sorted(val) == [2, 4, 6]
    assert {r["step"]: r["val/top1"] for r in rows(run_dir) if "val/top1" in r} == pytest.approx(val)


# ---- the handler itself, with real signals -------------------------------------------------------------
def test_a_second_signal_is_ignored_and_a_region_is_cut_short():
    watch = PreemptionWatch()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert watch.signal == "SIGUSR1"
        os.kill(os.getpid(), signal.SIGTERM)  # noted and ignored: the process lives on
        assert watch.signal == "SIGUSR1" and watch.agreed()
        with pytest.raises(Interrupted):
            with watch.interruptible():
                pass
    finally:
        watch.close()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_forked_worker_ignores_the_signal():
    """A DataLoader worker is a fork: it inherits the handler, and neither stops the run nor dies."""
    watch = PreemptionWatch()
    try:
        pid = os.fork()
        if pid == 0:  # the child: SIGTERM to itself, then report whether it took the signal as its own
            os.kill(os.getpid(), signal.SIGTERM)
            os._exit(0 if watch.signal is None else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert watch.signal is None
    finally:
        watch.close()


class _StalledSource(torch.utils.data.IterableDataset):
    """A data source that hangs (a stalled network file system, a dead object store)."""

    def __iter__(self):
        time.sleep(600)
        yield torch.zeros(1)


def test_a_wait_on_a_stalled_dataloader_worker_is_cut_short():
    """The trainer's real wait: the main process blocked on a DataLoader worker's queue. The job's
    SIGTERM to the worker is ignored (it stays alive for its parent to end); SIGTERM to the main
    process ends the wait at once; the parent's own SIGTERM (its shutdown) ends the worker."""
    from torch.utils.data import DataLoader

    from uniemox.data.loader import leave_stop_signals_to_parent
    watch = PreemptionWatch()
    try:
        batches = iter(DataLoader(_StalledSource(), batch_size=None, num_workers=1,
                                  worker_init_fn=leave_stop_signals_to_parent))
        worker = batches._workers[0]

        def signal_both():
            time.sleep(1.0)
            subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)  # the job's signal, not the parent's
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGTERM)
        threading.Thread(target=signal_both, daemon=True).start()
        began = time.monotonic()
        with pytest.raises(Interrupted):
            with watch.interruptible():
                next(batches)
        assert time.monotonic() - began < 30 and watch.signal == "SIGTERM"
        assert worker.is_alive()
        worker.terminate()  # SIGTERM from its parent, as at the parent's exit
        worker.join(timeout=30)
        assert worker.exitcode == 0
        del batches
    finally:
        watch.close()
