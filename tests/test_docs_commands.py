"""The shell commands of README.md and docs/*.md, run as the docs write them.

Every command of a ```bash block is extracted from the page (backslash continuations joined), so a
command changed in the docs is tested as written. A command that needs what CI lacks carries a
``# needs: REASON`` comment (``needs: gpu``, ``needs: data``, ``needs: network`` ...), or its block
says so on the fence (```bash needs: cluster): such a command is not run, but its entry point must
accept every flag it uses (``--help``). Every other command runs, in the order of the pages (README
first), in one shared folder, so that a page's chain (pretrain -> export -> fine-tune -> predict)
is followed as a user would; a command that appears twice runs once; `a && b` is two commands
(`bash launch/install.sh` counts as needing the network). The folder links the
repository's launch/, configs/ and tests/; HOME is a fresh folder (the docs' ~/.cache paths).

What the test adds, and only this, to keep CI within its time:
* a training run (pretrain, fine-tune, teacher) gets tiny-size overrides appended
  (TINY below: a 32 px, 2-block ViT and small batches; the step counts the docs give are kept,
  since later commands name their checkpoints), the ablation grid a one-cell grid of 2-step runs,
  the step, checkpoint and loader benchmarks their smallest settings;
* ``deepspeed`` gets a free ``--master_port`` (two jobs on the default port join each other);
* ``pytest`` commands are collected (``--collect-only``), not run: CI runs the suite itself;
* photo.jpg and more_photos/, the docs' stand-ins for a user's photos, are real photos.
"""
import os
import re
import shlex
import subprocess
import sys
from functools import lru_cache

import pytest

from subprocesses import child_env, free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FENCE = re.compile(r"^( *)```bash([^\n]*)\n(.*?)^\1```", re.S | re.M)
NEEDS = re.compile(r"needs:\s*([^;#]*[^;#\s])")
AND = re.compile(r"\s+&&\s+")
LINKED = ("launch", "configs", "tests", "kernels", "setup.py", "README.md", "docs", ".git")
TIMEOUT = 600
# what a command may need that CI lacks: the first word of its "needs:" comment
REASONS = ("gpu", "cluster", "data", "network", "weights", "your", "time")

ARCH = "model.arch={img_size: 32, depth: 2, decoder_depth: 1}"
TINY = {
    "pretrain": [ARCH, "data.batch_size=8"],
    "finetune": ["data.batch_size=8", "optim.max_steps=2"],  # the architecture is the export's
    "train_teacher": ["data.batch_size=8", "optim.max_steps=2"],
    "ablation": ["--losses", "l3", "--fusions", "none", "--pretrain-steps", "2", "--finetune-steps", "2",
                 "--probe-steps", "2", "--pretrain", ARCH, "data.batch_size=8", "--downstream", "data.batch_size=8"],
    "benchmark step": ["--warmup", "1", "--steps", "2", "--rounds", "1"],
    "benchmark checkpoint": ["--model", "uniemox_vit_tiny_patch16", "--repeats", "1"],
    "benchmark loader": ["--workers", "0", "--batches", "2", "--rounds", "1"],
}
TRAINERS = ("pretrain", "finetune", "train_teacher")


class Command:
    def __init__(self, page, line, text, needs):
        self.page, self.line, self.text, self.needs = page, line, text, needs
        self.code, _, self.comment = split_comment(text)

    @property
    def id(self):
        return f"{self.page}:{self.line}"

    def tokens(self):
        return shlex.split(self.code)

    def entry(self):
        """(program, the launch/ script's name or None, the rest of the words after it)."""
        words = self.tokens()
        while words and re.match(r"^[A-Z_]+=", words[0]):  # VAR=value prefixes
            words = words[1:]
        program = words[0] if words else ""
        if program.startswith("uniemox-"):
            return program, program[len("uniemox-"):].replace("-", "_"), words[1:]
        for i, word in enumerate(words[1:], 1):
            if word.startswith("launch/") and word.endswith(".py"):
                return program, os.path.basename(word)[:-3], words[i + 1:]
            if program.startswith("python") and word == "-m" and i + 1 < len(words):
                return program, words[i + 1], words[i + 2:]
        return program, None, words[1:]


def split_comment(text):
    """(code, '#', comment) of a shell line: the first '#' that starts a word outside quotes."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip(), "#", text[i + 1:]
    return text.rstrip(), "", ""


def pages():
    return ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(REPO, "docs"))
                                  if f.endswith(".md"))


def doc_commands():
    """Every command of every ```bash block, in page order."""
    out = []
    for page in pages():
        text = open(os.path.join(REPO, page), encoding="utf-8").read()
        for block in FENCE.finditer(text):
            indent, info, body = block.group(1), block.group(2), block.group(3)
            block_needs = NEEDS.search(info)
            first = text[:block.start(3)].count("\n") + 1
            pending, start = "", None
            for n, raw in enumerate(body.splitlines()):
                line = raw[len(indent):] if raw.startswith(indent) else raw.lstrip()
                if not pending and (not line.strip() or line.lstrip().startswith("#")):
                    continue  # a blank line, a comment, the #! or #SBATCH lines of a script
                start = first + n if not pending else start
                code, _, _ = split_comment(line)
                if code.endswith("\\"):
                    pending += code[:-1] + " "
                    continue
                whole = pending + line
                pending = ""
                code, _, comment = split_comment(whole)
                needs = NEEDS.search(comment) or block_needs
                for part in AND.split(code):  # `a && b`: two commands, in order
                    part_needs = needs.group(1).strip() if needs else known_needs(part)
                    out.append(Command(page, start, part.strip() + (f"  # {comment.strip()}" if comment else ""),
                                       part_needs))
    return out


def known_needs(code):
    """What a command needs without saying so: the installer downloads (the test runs in the
    environment it made)."""
    return "network (the installer)" if re.match(r"^bash launch/install\.sh\b", code.strip()) else None


COMMANDS = doc_commands()
RUNNABLE, MARKED, seen = [], [], set()
for command in COMMANDS:
    if command.needs:
        MARKED.append(command)
    elif command.code not in seen:
        seen.add(command.code)
        RUNNABLE.append(command)


def as_run(command, port):
    """The command as the test runs it: the doc's words plus the additions listed in the module doc."""
    program, script, rest = command.entry()
    words = command.tokens()
    if program == "deepspeed":
        words.insert(words.index("deepspeed") + 1, f"--master_port={port}")
    if "--help" in words or "--export" in words:
        return words
    if script in TRAINERS:
        words += TINY[script]
    elif script == "ablation":
        words += TINY["ablation"] + [f"--launcher=--master_port {port}"]
    elif script == "benchmark" and rest and f"benchmark {rest[0]}" in TINY:
        words += TINY[f"benchmark {rest[0]}"]
    elif script == "pytest":
        words += ["--collect-only"]
    return words


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One folder for every command (the docs chain their runs), with the repository's parts linked."""
    root = tmp_path_factory.mktemp("docs-run")
    for name in LINKED:
        os.symlink(os.path.join(REPO, name), root / name)
    os.makedirs(root / "benchmarks" / "results")  # what the docs write there stays out of the repository
    os.symlink(os.path.join(REPO, "benchmarks", "gpu"), root / "benchmarks" / "gpu")
    home = tmp_path_factory.mktemp("home")
    photos(root)
    env = child_env({"HOME": str(home), "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]})
    for name in ("UNIEMOX_CACHE", "TRITON_INTERPRET"):  # as from a shell: the docs' own settings only
        env.pop(name, None)
    return root, env


def photos(root):
    import skimage.data
    from PIL import Image

    Image.fromarray(skimage.data.astronaut()).save(root / "photo.jpg")
    os.makedirs(root / "more_photos")
    Image.fromarray(skimage.data.chelsea()).save(root / "more_photos" / "cat.jpg")
    Image.fromarray(skimage.data.coffee()).save(root / "more_photos" / "coffee.png")


@pytest.mark.parametrize("command", RUNNABLE, ids=[c.id for c in RUNNABLE])
def test_documented_command_runs(command, workdir):
    root, env = workdir
    words = as_run(command, free_port())
    assert not set(words) & {"||", ";", "|"}, f"{command.id}: one command a line (or `a && b`), please: {command.text}"
    proc = subprocess.run(" ".join(shlex.quote(w) if not w.startswith("~/") else w for w in words), shell=True,
                          cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT,
                          executable="/bin/bash")
    assert proc.returncode == 0, f"{command.id}: {command.text}\n{(proc.stdout + proc.stderr)[-4000:]}"


@lru_cache(maxsize=None)
def help_text(program, script, sub):
    """``--help`` of an entry point (a launch/ script, a module, or DeepSpeed's launcher)."""
    if program == "deepspeed" and script is None:
        args = ["deepspeed", "--help"]
    elif script and os.path.isfile(os.path.join(REPO, "launch", script + ".py")):
        args = [sys.executable, os.path.join(REPO, "launch", script + ".py")] + ([sub] if sub else []) + ["--help"]
    else:
        args = [sys.executable, "-m", script, "--help"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, env=child_env(), cwd=REPO)
    assert proc.returncode == 0, f"{' '.join(args)}: {proc.stderr[-2000:]}"
    return proc.stdout


def flags(words):
    return {w.split("=", 1)[0] for w in words if w.startswith("--") and len(w) > 2}


@pytest.mark.parametrize("command", MARKED, ids=[c.id for c in MARKED])
def test_command_that_needs_more_uses_only_flags_its_entry_point_has(command):
    program, script, rest = command.entry()
    words = command.tokens()
    if script is None or script == "pytest" or (program.startswith("python") and script.startswith(("-", "pip"))):
        # not one of the project's entry points (pip, bash, srun, ...): the files it names exist
        for word in words:
            if re.match(r"^(launch|configs|benchmarks|tests)/[\w./-]+$", word):
                assert os.path.exists(os.path.join(REPO, word)), f"{command.id}: no {word}"
        return
    if program == "deepspeed":
        launcher = words[1:words.index(next(w for w in words if w.startswith("launch/")))]
        missing = flags(launcher) - set(re.findall(r"--[\w-]+", help_text("deepspeed", None, None)))
        assert not missing, f"{command.id}: DeepSpeed's launcher has no {sorted(missing)}"
    sub = rest[0] if script == "benchmark" and rest and not rest[0].startswith("-") else None
    known = set(re.findall(r"--[\w-]+", help_text("python", script, sub)))
    missing = flags(rest) - known
    assert not missing, f"{command.id}: {script} {sub or ''} has no {sorted(missing)}: {command.text}"


def test_every_marked_command_says_what_it_needs():
    assert RUNNABLE and MARKED
    for command in MARKED:
        assert command.needs.split()[0].strip(",") in REASONS, f"{command.id}: needs one of {REASONS}: {command.text}"
