"""Checkpoint folders reached through links: the checks that guard the loaders see the files the
loaders will open, and ``--resume auto`` never goes back to a checkpoint kept outside its folder."""
import json
import logging
import os

import pytest
import torch

from uniemox.errors import UserError
from uniemox.safeload import check_checkpoint_dir
from uniemox.train.checkpoint import MARKER, find_resume

PWNED = "/tmp/uniemox-pwned-through-a-link"


class Payload:
    """Unpickling this runs a shell command (what a hostile checkpoint would do)."""

    def __reduce__(self):
        return (os.system, (f"touch {PWNED}",))


def test_a_hostile_file_in_a_linked_folder_of_a_checkpoint_is_refused(tmp_path):
    """A universal checkpoint holds one folder per tensor under zero/: made a link to a folder
    elsewhere, its files are still the loader's, so they are checked."""
    tag = tmp_path / "checkpoints" / "universal" / "step_00000002"
    (tag / "zero").parent.mkdir(parents=True)
    torch.save({"module": {"w": torch.zeros(2)}}, tag / "mp_rank_00_model_states.pt")
    elsewhere = tmp_path / "elsewhere" / "blocks.0.weight"
    elsewhere.mkdir(parents=True)
    torch.save({"param": torch.zeros(2), "x": Payload()}, elsewhere / "fp32.pt")
    os.symlink(elsewhere.parent, tag / "zero")
    os.symlink(tag, elsewhere / "back")  # a cycle: the walk must end
    if os.path.exists(PWNED):
        os.remove(PWNED)
    with pytest.raises(UserError, match=r"zero/blocks\.0\.weight/fp32\.pt.*posix\.system"):
        check_checkpoint_dir(str(tag))
    assert not os.path.exists(PWNED)


def _complete(folder, step):
    folder.mkdir(parents=True)
    (folder / MARKER).write_text(json.dumps({"step": step, "world_size": 1}))


def test_resume_auto_skips_a_checkpoint_whose_real_path_is_outside_the_run(tmp_path, caplog):
    root = tmp_path / "run" / "checkpoints"
    _complete(root / "step_00000002", 2)
    _complete(tmp_path / "other_run" / "checkpoints" / "step_00000009", 9)
    os.symlink(tmp_path / "other_run" / "checkpoints" / "step_00000009", root / "step_00000009")
    with caplog.at_level(logging.WARNING):
        assert find_resume(str(root), "auto") == str(root / "step_00000002")
    assert "skips" in caplog.text and "other_run" in caplog.text
    linked_home = tmp_path / "scratch"  # the whole checkpoints folder on another disk, linked: its own
    os.symlink(root, linked_home)
    assert find_resume(str(linked_home), "auto") == str(linked_home / "step_00000002")
    assert find_resume(str(root), str(root / "step_00000009")) == str(root / "step_00000009")  # asked for by name
