"""The import rule, read from the source (no third-party tool): layers import only downward.

Every ``import`` statement counts, wherever it stands: at module level, inside a function, under
``TYPE_CHECKING``. The rule (also in ``[tool.importlinter]`` of pyproject.toml, which
``make lint`` checks):

(a) no import cycle among steerlab's modules (a package ``__init__`` importing its own
    submodules does not count);
(b) nothing imports the package face, ``steerlab/__init__.py``;
(c) a module imports only its own top-level package or strictly lower layers (:data:`LAYERS`),
    and inside ``steerlab.pipelines`` the workflows and the other modules share only ``_shared``;
(d) a ``_private`` module or name is not imported from another top-level package.

Each violation reads ``module:line imports target (reason)``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
ROOT = "steerlab"

#: Top-level packages and modules of steerlab, low to high; one entry is one layer, whose members
#: are independent of each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("_util",),
    ("metrics", "judge", "execution", "runs", "tasks"),
    ("sites",),
    ("vectors", "sae"),
    ("interventions",),
    ("backends",),
    ("models",),
    ("engine",),
    ("directions", "sae_training"),
    ("analysis", "steering_config"),
    ("shortcuts",),
    ("pipelines",),
    ("cli",),
)
#: Inside ``steerlab.pipelines``: ``_shared`` below the workflows and the other modules, which
#: are independent of each other.
PIPELINE_LAYERS: tuple[tuple[str, ...], ...] = (
    ("_shared",),
    ("behaviours", "classify", "code", "questions", "reliability", "jobs", "demo"),
)


@dataclass(frozen=True)
class Import:
    importer: str
    line: int
    module: str  # the steerlab module imported (a package means its __init__)
    name: str | None  # the name taken from it, when it is not a submodule

    @property
    def target(self) -> str:
        return f"{self.module}.{self.name}" if self.name else self.module

    def violation(self, reason: str) -> str:
        return f"{self.importer}:{self.line} imports {self.target} ({reason})"


def modules(src: Path, root: str = ROOT) -> dict[str, Path]:
    """Every module of the package ``root`` under ``src``, by dotted name."""
    out = {}
    for path in sorted((src / root).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _known(name: str, known: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is a module (``import a.b.c`` imports ``a.b.c``)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in known:
            return prefix
    return None


def imports(src: Path, root: str = ROOT) -> list[Import]:
    """Every import of a module of ``root`` by a module of ``root``."""
    known = modules(src, root)
    out: list[Import] = []
    for importer, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        package = importer if _is_package(path) else importer.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    module = _known(alias.name, known)
                    if module is not None:
                        out.append(Import(importer, node.lineno, module, None))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                if stem != root and not stem.startswith(root + "."):
                    continue
                for alias in node.names:
                    sub = f"{stem}.{alias.name}"
                    if sub in known:
                        out.append(Import(importer, node.lineno, sub, None))
                        continue
                    module = _known(stem, known)
                    if module is not None:
                        # a name the module does not have still names where it was looked for
                        name = ".".join([*stem.split(".")[len(module.split(".")) :], alias.name])
                        out.append(Import(importer, node.lineno, module, name))
    return out


# ----------------------------------------------------------------------------- the checks


def _top(module: str) -> str:
    """The top-level package (or module) a module belongs to: ``steerlab.x.y`` -> ``x``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def cycles(found: Sequence[Import]) -> list[str]:
    """Imports that lie on a cycle, each with the cycle it closes."""
    edges: dict[str, dict[str, Import]] = {}
    for imp in found:
        src, dst = imp.importer, imp.module
        if dst == src or dst.startswith(src + "."):  # a package importing its own submodules
            continue
        edges.setdefault(src, {}).setdefault(dst, imp)
    out = []
    for component in _strongly_connected(edges):
        members = set(component)
        for src in sorted(members):
            for dst, imp in sorted(edges.get(src, {}).items()):
                if dst in members:
                    path = _path(edges, dst, src, members)
                    out.append(imp.violation("cycle: " + " -> ".join([src, *path])))
    return out


def _strongly_connected(edges: dict[str, dict[str, Import]]) -> Iterator[list[str]]:
    """Tarjan's strongly connected components of more than one module, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    nodes = sorted(set(edges) | {d for ds in edges.values() for d in ds})
    for start in nodes:
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(edges.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        yield sorted(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges.get(child, {})))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])


def _path(
    edges: dict[str, dict[str, Import]], start: str, goal: str, within: set[str]
) -> list[str]:
    """A shortest import path ``start -> ... -> goal`` inside ``within`` (breadth first)."""
    before: dict[str, str | None] = {start: None}
    queue = [start]
    while queue:
        node = queue.pop(0)
        if node == goal:
            break
        for nxt in sorted(edges.get(node, {})):
            if nxt in within and nxt not in before:
                before[nxt] = node
                queue.append(nxt)
    path: list[str] = []
    node_or_none: str | None = goal
    while node_or_none is not None:
        path.append(node_or_none)
        node_or_none = before[node_or_none]
    return path[::-1]


def face_imports(found: Sequence[Import], root: str = ROOT) -> list[str]:
    return [
        imp.violation("the package face: import from the module that defines it")
        for imp in found
        if imp.module == root and imp.importer != root
    ]


def _rank(layers: Sequence[Sequence[str]]) -> dict[str, int]:
    return {name: i for i, layer in enumerate(layers) for name in layer}


def layer_violations(found: Sequence[Import], root: str = ROOT) -> list[str]:
    out = []
    rank = _rank(LAYERS)
    inner = _rank(PIPELINE_LAYERS)
    for imp in found:
        if imp.importer == root or imp.module == root:
            continue  # the face is above every layer; importing it is check (b)
        a, b = _top(imp.importer), _top(imp.module)
        if a == b == "pipelines":
            a, b = imp.importer.split(".")[2:3], imp.module.split(".")[2:3]
            if a and b and a != b:
                reason = _against(a[0], b[0], inner, "pipelines.")
                if reason:
                    out.append(imp.violation(reason))
            continue
        if a == b:
            continue
        reason = _against(a, b, rank, "")
        if reason:
            out.append(imp.violation(reason))
    return out


def _against(a: str, b: str, rank: dict[str, int], prefix: str) -> str | None:
    """Why ``prefix + a`` may not import ``prefix + b``, or None when it may."""
    for name in (a, b):
        if name not in rank:
            return f"{prefix}{name} is in no layer: add it to the layer table"
    if rank[b] < rank[a]:
        return None
    if rank[b] == rank[a]:
        return f"{prefix}{a} and {prefix}{b} are independent, on layer {rank[a] + 1}"
    return f"upward: {prefix}{a} is on layer {rank[a] + 1}, {prefix}{b} on layer {rank[b] + 1}"


def private_imports(found: Sequence[Import], root: str = ROOT) -> list[str]:
    """``_private`` modules and names below a top-level package, imported from outside it."""
    out = []
    for imp in found:
        parts = imp.target.split(".")
        owner = ".".join(parts[:2])  # steerlab.<top>: a private part below it is its own
        hidden = [p for p in parts[2:] if _private(p)]
        inside = imp.importer == owner or imp.importer.startswith(owner + ".")
        if hidden and not inside:
            out.append(imp.violation(f"{hidden[0]} is private to {owner}"))
    return out


# ----------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def found() -> list[Import]:
    return imports(SRC)


def _fail(violations: list[str], what: str) -> None:
    if violations:
        pytest.fail(f"{len(violations)} {what}:\n" + "\n".join(violations), pytrace=False)


def test_no_import_cycles(found: list[Import]) -> None:
    _fail(cycles(found), "imports on a cycle")


def test_nothing_imports_the_package_face(found: list[Import]) -> None:
    _fail(face_imports(found), "imports of the package face")


def test_imports_follow_the_layers(found: list[Import]) -> None:
    _fail(layer_violations(found), "imports against the layer order")


def test_private_modules_and_names_stay_in_their_package(found: list[Import]) -> None:
    _fail(private_imports(found), "imports of another package's private module or name")


def test_every_top_level_module_is_in_a_layer() -> None:
    tops = {_top(m) for m in modules(SRC)} - {""}
    assert sorted(tops - set(_rank(LAYERS))) == []
    assert sorted(set(_rank(LAYERS)) - tops) == []


def test_the_checks_find_each_kind_of_violation(tmp_path: Path) -> None:
    """A small package breaking every rule once: each check names the import that does."""
    files = {
        "__init__.py": "from steerlab.errors import E\n",
        "errors.py": "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from steerlab.models import Model\n",
        "_util/__init__.py": "",
        "_util/io.py": "def f():\n    from steerlab import __version__\n",
        "runs/__init__.py": "from steerlab.runs import a\n",
        "runs/a.py": "from .b import g\n",
        "runs/b.py": "def g():\n    from steerlab.runs.a import x\n",
        "runs/_child.py": "",
        "tasks/__init__.py": "",
        "tasks/t.py": "import steerlab.runs.a\nfrom steerlab.runs._child import y\n"
        "from steerlab.models.load import _hidden\n",
        "models/__init__.py": "from steerlab._util.io import f\n",
        "models/load.py": "",
        "pipelines/__init__.py": "",
        "pipelines/_shared.py": "",
        "pipelines/code/__init__.py": "",
        "pipelines/code/run.py": "from steerlab.pipelines.questions.config import FileRef\n"
        "from steerlab.pipelines._shared import M\n",
        "pipelines/questions/__init__.py": "",
        "pipelines/questions/config.py": "",
    }
    for name, text in files.items():
        (tmp_path / "steerlab" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "steerlab" / name).write_text(text)
    found = imports(tmp_path)
    assert cycles(found) == [
        "steerlab.runs.a:1 imports steerlab.runs.b.g "
        "(cycle: steerlab.runs.a -> steerlab.runs.b -> steerlab.runs.a)",
        "steerlab.runs.b:2 imports steerlab.runs.a.x "
        "(cycle: steerlab.runs.b -> steerlab.runs.a -> steerlab.runs.b)",
    ]
    assert face_imports(found) == [
        "steerlab._util.io:2 imports steerlab.__version__ "
        "(the package face: import from the module that defines it)"
    ]
    assert layer_violations(found) == [
        "steerlab.errors:3 imports steerlab.models.Model (upward: errors is on layer 1, models "
        "on layer 8)",
        "steerlab.pipelines.code.run:1 imports steerlab.pipelines.questions.config.FileRef "
        "(pipelines.code and pipelines.questions are independent, on layer 2)",
        "steerlab.tasks.t:1 imports steerlab.runs.a (tasks and runs are independent, on layer 3)",
        "steerlab.tasks.t:2 imports steerlab.runs._child.y (tasks and runs are independent, on "
        "layer 3)",
        "steerlab.tasks.t:3 imports steerlab.models.load._hidden (upward: tasks is on layer 3, "
        "models on layer 8)",
    ]
    assert private_imports(found) == [
        "steerlab.tasks.t:2 imports steerlab.runs._child.y (_child is private to steerlab.runs)",
        "steerlab.tasks.t:3 imports steerlab.models.load._hidden (_hidden is private to "
        "steerlab.models)",
    ]
