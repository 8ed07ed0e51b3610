"""What a training rank pays before its first step: no module it does not need (the benchmark,
the person detector, plotting) is imported, and DeepSpeed's JIT-built op has a folder per
environment, so that another environment's build never forces a rebuild."""
import os
import subprocess
import sys
import time

from subprocesses import child_env

HEAVY = ("matplotlib", "mediapipe", "cv2", "uniemox.bench", "uniemox.data.detector", "uniemox.eval.report",
         "sklearn", "scipy")


def test_training_entry_points_import_no_heavy_module_they_do_not_use():
    code = ("import sys, uniemox.launch.pretrain, uniemox.launch.finetune, uniemox.launch.train_teacher, "
            "uniemox.tasks.pretrain, uniemox.tasks.clip_teacher, uniemox.tasks.classify, uniemox.train.trainer; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=child_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_deepspeed_ops_have_a_folder_per_environment(monkeypatch, tmp_path):
    import deepspeed
    import torch

    from uniemox.train.extensions import extensions_dir
    monkeypatch.delenv("UNIEMOX_EXTENSIONS", raising=False)
    monkeypatch.setenv("UNIEMOX_CACHE", str(tmp_path))
    folder = extensions_dir()
    assert folder.startswith(str(tmp_path / "torch_extensions"))
    for part in (torch.__version__.replace("+", "_"), deepspeed.__version__, f"py{sys.version_info[0]}{sys.version_info[1]}"):
        assert part in folder


def test_an_inherited_op_folder_of_another_environment_is_replaced_and_a_users_kept(monkeypatch, tmp_path):
    """A parent process of the project (another torch: the lowest-versions venv's) leaves its folder
    in TORCH_EXTENSIONS_DIR; a child builds into its own. A folder the user chose stays."""
    from uniemox.train.extensions import extensions_dir, use_extensions_dir
    monkeypatch.setenv("UNIEMOX_EXTENSIONS", str(tmp_path / "ext"))
    ours = extensions_dir()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext" / "torch2.5.0_cu124-py311-ds0.16.6"))
    assert use_extensions_dir() == ours and os.environ["TORCH_EXTENSIONS_DIR"] == ours
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "mine"))
    assert use_extensions_dir() == str(tmp_path / "mine")


def test_the_lock_of_a_killed_build_is_removed_once_no_build_could_still_hold_it(monkeypatch, tmp_path):
    """torch's FileBaton lock is removed only by its builder: a build killed half-way left one, and
    the next run waited for it forever."""
    from uniemox.train import extensions
    op = tmp_path / "deepspeed_shm_comm"
    op.mkdir()
    (op / "lock").write_text("")
    extensions.remove_stale_locks(str(tmp_path), now=time.time() + 60)  # a build may be under way
    assert (op / "lock").exists()
    extensions.remove_stale_locks(str(tmp_path), now=time.time() + extensions.STALE_LOCK_S + 60)
    assert not (op / "lock").exists()
