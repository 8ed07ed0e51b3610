"""The house's rules, checked on the source: imports point down the layers and form no circle,
the training entry points stay thin, and there is one training loop."""
import ast
import os
from collections import defaultdict

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# where each installed package lives in the repository (setup.py's package_dir)
ROOTS = {"uniemox": "uniemox", "uniemox.kernels": "kernels", "uniemox.launch": "launch"}
# who may import whom: a layer imports only the layers below it (and itself)
LAYERS = ["uniemox.errors", "uniemox.io", "uniemox.claim", "uniemox.safeload", "uniemox.config", "uniemox.kernels", "uniemox.data", "uniemox.losses",
          "uniemox.models", "uniemox.exports", "uniemox.train", "uniemox.eval", "uniemox.finetune", "uniemox.tasks",
          "uniemox.bench", "uniemox.experiments", "uniemox.launch"]


def _modules():
    """{module name: path} of every Python file of the installed packages."""
    out = {}
    for package, folder in ROOTS.items():
        for dirpath, _, files in os.walk(os.path.join(REPO, folder)):
            for name in files:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, name), os.path.join(REPO, folder))
                    parts = rel[:-3].split(os.sep)
                    if parts[-1] == "__init__":
                        parts = parts[:-1]
                    out[".".join([package] + parts)] = os.path.join(dirpath, name)
    return out


def _imports(module: str, path: str, known) -> set:
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:  # the module itself, not a name inside it
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


@pytest.fixture(scope="module")
def graph():
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def _layer(module: str) -> str:
    return max((layer for layer in LAYERS if module == layer or module.startswith(layer + ".")), key=len,
               default=module)


def test_no_import_circle(graph):
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                circles.append(sorted(part))

    for v in graph:
        if v not in index:
            visit(v)
    packages = {m for m in graph if os.path.basename(_modules()[m]) == "__init__.py"}
    # a package importing its own submodules (its face) is no circle of logic
    circles = [c for c in circles if not any(m in packages for m in c)]
    assert circles == []


def test_no_circle_between_packages(graph):
    """Folded onto their layers (uniemox.models, uniemox.exports ...), imports form no circle either:
    no two packages import each other, at module level or inside a function."""
    edges = {(_layer(m), _layer(t)) for m, targets in graph.items() for t in targets if _layer(m) != _layer(t)}
    assert sorted((a, b) for a, b in edges if (b, a) in edges) == []


def test_imports_point_down_the_layers(graph):
    order = {layer: i for i, layer in enumerate(LAYERS)}
    upward = defaultdict(list)
    for module, targets in graph.items():
        src = _layer(module)
        for target in targets:
            dst = _layer(target)
            if dst in order and src in order and order[dst] > order[src]:
                upward[module].append(target)
    assert dict(upward) == {}


def test_kernels_know_only_torch_and_triton(graph):
    for module, targets in graph.items():
        if module.startswith("uniemox.kernels"):
            assert all(t.startswith("uniemox.kernels") for t in targets), (module, targets)


@pytest.mark.parametrize("script", ["pretrain.py", "finetune.py", "train_teacher.py"])
def test_training_entry_points_are_thin(script):
    lines = open(os.path.join(REPO, "launch", script), encoding="utf-8").read().splitlines()
    code = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    assert len(code) <= 70, f"{script}: {len(code)} lines"


def test_the_graph_is_read(graph):
    """The checks above see real edges (relative and absolute imports alike)."""
    assert "uniemox.train.checkpoint" in graph["uniemox.tasks.pretrain"]
    assert "uniemox.train.step" in graph["uniemox.train.trainer"]
    assert "uniemox.kernels.constants" in graph["uniemox.kernels.distillation"]
    assert "uniemox.exports.pretrain" in graph["uniemox.tasks.pretrain"]  # imported inside a function


def test_one_training_loop():
    """Only the trainer's guarded micro-step calls ``engine.backward`` / ``engine.step``."""
    callers = set()
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("step", "backward") and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "engine"):
                callers.add(module)
    assert callers == {"uniemox.train.step"}
