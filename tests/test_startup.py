"""What a training rank pays before its first step: no module it does not need (the benchmark,
the person detector, plotting) is imported, and DeepSpeed's JIT-built op has a folder per
environment, so that another environment's build never forces a rebuild."""
import subprocess
import sys

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

    from uniemox.train.engine import extensions_dir
    monkeypatch.delenv("UNIEMOX_EXTENSIONS", raising=False)
    monkeypatch.setenv("UNIEMOX_CACHE", str(tmp_path))
    folder = extensions_dir()
    assert folder.startswith(str(tmp_path / "torch_extensions"))
    for part in (torch.__version__.replace("+", "_"), deepspeed.__version__, f"py{sys.version_info[0]}{sys.version_info[1]}"):
        assert part in folder
