"""AST scans of the library and the stages (``eds/``, ``pipelines/``) for the reliability tests:
every call with its dotted name, the function it sits in, and whether it writes through the
atomic helpers of :mod:`eds.records`."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import REPO

SOURCE_DIRS = ("eds", "pipelines")
ATOMIC_CONTEXTS = {"atomic_output", "atomic_dir"}  # ``with atomic_output(path) as tmp`` writes to a temp path
IN_MEMORY = {"io.BytesIO", "io.StringIO", "BytesIO", "StringIO"}
WRITE_MODE_CHARS = set("wax+")


def sources() -> list[Path]:
    return sorted(p for folder in SOURCE_DIRS for p in (REPO / folder).rglob("*.py"))


def dotted(expr: ast.AST) -> str:
    """``np.save`` for ``np.save(...)``'s func; ``?`` stands for anything that is not a plain name."""
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Attribute):
        return f"{dotted(expr.value)}.{expr.attr}"
    if isinstance(expr, ast.Call):
        return f"{dotted(expr.func)}()"
    return "?"


@dataclass(frozen=True)
class CallSite:
    path: str  # relative to the repository
    line: int
    function: str  # qualified name of the enclosing function ("<module>" at top level)
    name: str  # dotted name of the called expression
    node: ast.Call
    atomic: bool  # inside ``with atomic_output(...)`` / ``with atomic_dir(...)``
    memory: bool  # its first argument is a name bound to an in-memory buffer (io.BytesIO) in this function

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line} ({self.function})"


def keyword(node: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in node.keywords if k.arg == name), None)


def constant(expr: ast.expr | None, default: Any = None) -> Any:
    return expr.value if isinstance(expr, ast.Constant) else default


def _memory_names(function: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and dotted(node.value.func) in IN_MEMORY:
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


class _Visitor(ast.NodeVisitor):
    def __init__(self, path: str) -> None:
        self.path = path
        self.scope: list[str] = []
        self.memory: list[set[str]] = [set()]
        self.atomic = 0
        self.sites: list[CallSite] = []

    def _scoped(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef, memory: set[str]) -> None:
        self.scope.append(node.name)
        self.memory.append(memory)
        self.generic_visit(node)
        self.scope.pop()
        self.memory.pop()

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._scoped(node, set())

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._scoped(node, _memory_names(node))

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_With(self, node: ast.With) -> None:
        atomic = any(
            isinstance(item.context_expr, ast.Call) and dotted(item.context_expr.func).split(".")[-1] in ATOMIC_CONTEXTS
            for item in node.items
        )
        self.atomic += atomic
        self.generic_visit(node)
        self.atomic -= atomic

    def visit_Call(self, node: ast.Call) -> None:
        first = node.args[0] if node.args else None
        self.sites.append(CallSite(
            self.path, node.lineno, ".".join(self.scope) or "<module>", dotted(node.func), node, self.atomic > 0,
            isinstance(first, ast.Name) and first.id in self.memory[-1],
        ))  # fmt: skip
        self.generic_visit(node)


def call_sites_in(source: str, path: str = "<sample>") -> list[CallSite]:
    visitor = _Visitor(path)
    visitor.visit(ast.parse(source, filename=path))
    return visitor.sites


def call_sites(path: Path) -> list[CallSite]:
    return call_sites_in(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))


def all_call_sites() -> list[CallSite]:
    return [site for path in sources() for site in call_sites(path)]


def _mode(site: CallSite, position: int) -> str:
    mode = keyword(site.node, "mode")
    if mode is None and len(site.node.args) > position:
        mode = site.node.args[position]
    return str(constant(mode, "?")) if mode is not None else "r"


FILE_WRITERS = {  # method names that write a file wherever they are called
    "write_text", "write_bytes", "to_parquet", "to_csv", "to_json", "to_pickle", "to_feather", "to_hdf",
    "write_table", "savefig", "save_pretrained", "savez", "savez_compressed", "save_file",
}  # fmt: skip


def write_kind(site: CallSite) -> str | None:
    """What file write a call performs (``None`` when it writes no file)."""
    tail = site.name.split(".")[-1]
    if tail == "open":
        mode = _mode(site, 1 if site.name == "open" else 0)
        return f"open({mode!r})" if set(mode) & WRITE_MODE_CHARS else None
    if tail == "File" and "h5py" in site.name:
        mode = _mode(site, 1)
        return f"h5py.File({mode!r})" if set(mode) & WRITE_MODE_CHARS else None
    if tail in FILE_WRITERS:
        return tail
    if site.name in {"np.save", "numpy.save", "torch.save", "json.dump", "pickle.dump"}:
        return site.name
    if site.name in {"yaml.dump", "yaml.safe_dump"} and (len(site.node.args) > 1 or keyword(site.node, "stream")):
        return site.name
    if site.name.startswith("shutil.") and tail in {"copy", "copy2", "copyfile", "copytree", "move"}:
        return site.name
    return None
