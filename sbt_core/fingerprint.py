"""What code a stage runs, found from the code itself: the `sbt_core` modules its entry function reaches.

A stage's cache key includes `code(entry)`, a hash per module of `sbt_core` that the entry can execute,
so an edit reruns exactly the stages whose code it touches: a comment in `report.py` reruns the
report, an edit of `train.py` reruns SFT (and, through their inputs' keys, the stages after it), and
neither reruns data generation. (Prefect's `TASK_SOURCE` policy hashes a task's own lines only, too
little; hashing every file of the package, as `io.code_version` does for provenance, is too much.)

How the modules are found, statically (`ast`, nothing is imported):
- the entry's own module: its module-level imports, plus the imports inside the entry function and
  inside every function or class of that module the entry names, followed transitively by name (so
  `study.run` does not pull in the study report's lazy `from sbt_core.report import png`);
- every other module reached: all its imports, module level and inside functions (conservative);
- a module's parent packages (`sbt_core/__init__.py`, `sbt_core/domains/__init__.py`), which Python
  runs before it.
Only modules inside `sbt_core` count; third-party code is pinned by the environment, not hashed here.

    python -m sbt_core.fingerprint sbt_core.train:train     # the modules SFT's key depends on
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import sys
from pathlib import Path

PACKAGE = "sbt_core"


def code(*entries: str) -> dict[str, str]:
    """`{module: sha256 of its source (12 hex)}` for every `sbt_core` module the entries ("module:function",
    or a module alone) can run; read afresh each call, so an edit shows in the same process."""
    found: set[str] = set()
    for entry in entries:
        module, _, function = entry.partition(":")
        found |= modules(module, function or None)
    return {m: _hash(m) for m in sorted(found)}


def modules(module: str, function: str | None = None) -> set[str]:
    """The `sbt_core` modules reached from `module` (from its function `function`, if given)."""
    first = _entry_imports(module, function) if function else _imports(_tree(module), module)
    seen = {module}
    todo = sorted(first | set(_parents(module)))
    while todo:
        name = todo.pop()
        if name in seen or not _source_path(name):
            continue
        seen.add(name)
        todo += sorted((_imports(_tree(name), name) | set(_parents(name))) - seen)
    return {m for m in seen if _source_path(m)}


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _entry_imports(module: str, function: str) -> set[str]:
    """Module-level imports of `module`, plus those inside `function` and inside every top-level
    definition (function, class, or assigned name such as a registry dict) it names, transitively."""
    tree = _tree(module)
    top: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            top[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Name):
                    top[target.id] = node
    if function not in top:
        raise ValueError(f"{module} has no top-level function or class {function!r}")
    found = {m for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)) for m in _names(n, module)}
    todo, visited = [function], set()
    while todo:
        name = todo.pop()
        if name in visited:
            continue
        visited.add(name)
        for node in ast.walk(top[name]):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found |= _names(node, module)
            elif isinstance(node, ast.Name) and node.id in top:
                todo.append(node.id)
    return {m for m in found if m.split(".")[0] == PACKAGE}


def _imports(tree: ast.Module, module: str) -> set[str]:
    return {m for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
            for m in _names(node, module) if m.split(".")[0] == PACKAGE}


def _names(node: ast.Import | ast.ImportFrom, module: str) -> set[str]:
    """The modules an import statement loads: `from a import b` is `a`, and `a.b` when b is a module."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    if node.level:  # relative: resolved against the importing module's package
        package = module if _is_package(module) else module.rpartition(".")[0]
        base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
        base = f"{base}.{node.module}" if node.module else base
    else:
        base = node.module or ""
    return {base} | {f"{base}.{a.name}" for a in node.names if _source_path(f"{base}.{a.name}")}


@functools.lru_cache(maxsize=None)
def _source_path(module: str) -> Path | None:
    """The source file of an `sbt_core` module (None for other packages or names that are not modules)."""
    if module.split(".")[0] != PACKAGE:
        return None
    root = Path(sys.modules[PACKAGE].__file__).parent if PACKAGE in sys.modules else _package_root()
    rel = module.split(".")[1:]
    for candidate in (root.joinpath(*rel).with_suffix(".py") if rel else None, root.joinpath(*rel, "__init__.py")):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _package_root() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    return Path(spec.origin).parent


def _is_package(module: str) -> bool:
    path = _source_path(module)
    return path is not None and path.name == "__init__.py"


def _tree(module: str) -> ast.Module:
    return ast.parse(_source_path(module).read_bytes())


def _hash(module: str) -> str:
    return hashlib.sha256(_source_path(module).read_bytes()).hexdigest()[:12]


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The modules whose hash differs between two `code()` results, added and removed ones included."""
    return sorted(m for m in set(before) | set(after) if before.get(m) != after.get(m))


if __name__ == "__main__":
    for target in sys.argv[1:]:
        print(target)
        for name, digest in code(target).items():
            print(f"  {digest}  {name}")
