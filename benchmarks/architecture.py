"""Structure of the package, measured: what the architecture page and the refactor notes quote.

Prints package cycles, imports of underscore names across modules, the public API's size, ``dir()``,
the import time of ``import lightning_reg`` (median of fresh processes, torch already imported), the
longest classes and functions and the module sizes. Static (``ast``) except the import-time and ``dir()``
rows. Run from the repository root::

    python -m benchmarks.architecture
"""

from __future__ import annotations

import ast
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "lightning_reg"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(importer: str, node: ast.ImportFrom, is_pkg: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<top>"


def code_lines(node: ast.AST, source_lines: list[str]) -> int:
    """Lines of a definition that are neither blank, comments nor its docstring."""
    body = getattr(node, "body", [])
    skip: set[int] = set()
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        skip = set(range(body[0].lineno, body[0].end_lineno + 1))
    n = 0
    for i in range(node.lineno, node.end_lineno + 1):
        text = source_lines[i - 1].strip()
        if text and not text.startswith("#") and i not in skip:
            n += 1
    return n


def static_metrics() -> dict[str, object]:
    """Import graph, private imports and sizes from the source."""
    graph: dict[str, set[str]] = defaultdict(set)
    private: list[str] = []
    sizes: dict[str, int] = {}
    classes: list[tuple[int, str]] = []
    functions: list[tuple[int, str]] = []
    for path in sorted(PKG.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        tree = ast.parse(source)
        name = _module_name(path)
        sizes[name] = len(lines)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(name, node, path.name == "__init__.py")
                if not target.startswith("lightning_reg"):
                    continue
                src_pkg, dst_pkg = _package_of(name), _package_of(target)
                if src_pkg != dst_pkg and dst_pkg not in ("<top>",):
                    graph[src_pkg].add(dst_pkg)
                for alias in node.names:
                    if alias.name.startswith("_") and target != name and not alias.name.startswith("__"):
                        private.append(f"{name} <- {target}.{alias.name}")
            elif isinstance(node, ast.ClassDef):
                classes.append((node.end_lineno - node.lineno + 1, f"{name}.{node.name}"))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((code_lines(node, lines), f"{name}:{node.name}"))
    cycles = _cycles(graph)
    # modules proper: package __init__ files (re-exports) are not counted
    module_sizes = [s for n, s in sizes.items() if (ROOT / (n.replace(".", "/") + ".py")).exists()]
    return {
        "package cycles": cycles,
        "cross-module private imports": private,
        "median module lines": statistics.median(module_sizes),
        "modules over 500 lines": sorted(n for n, s in sizes.items() if s > 500),
        "longest classes": sorted(classes, reverse=True)[:5],
        "functions over 60 code lines": sorted((f for f in functions if f[0] > 60), reverse=True),
        "modules": len(module_sizes),
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


_RUNTIME = """
import time, torch, lightning
t = time.perf_counter()
import lightning_reg
dt = time.perf_counter() - t
public = list(lightning_reg.__all__)
fresh = len(dir(lightning_reg))
for n in public:
    getattr(lightning_reg, n)
import importlib, pkgutil
hidden = len(set(dir(lightning_reg)) - set(public))
for info in pkgutil.iter_modules(lightning_reg.__path__):
    if info.ispkg and not info.name.startswith("_"):
        sub = importlib.import_module("lightning_reg." + info.name)
        for n in sub.__all__:
            getattr(sub, n)
        hidden += len({n for n in dir(sub) if not n.startswith("__")} - set(sub.__all__))
print(dt, len(public), fresh, len(dir(lightning_reg)), hidden)
"""


def runtime_metrics(repeats: int = 5) -> dict[str, object]:
    """Import time (median of fresh processes), public names and ``dir()`` sizes."""
    rows = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", _RUNTIME], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
        rows.append(out)
    return {
        "import lightning_reg (ms, torch+lightning already imported)": round(
            1000 * statistics.median(float(r[0]) for r in rows), 1),
        "public names (__all__)": int(rows[0][1]),
        "dir() names, fresh": int(rows[0][2]),
        "dir() names after every public name is used": int(rows[0][3]),
        "dir() names not in __all__ (top level + every package, after use)": int(rows[0][4]),
    }


def main() -> None:
    """Print every metric."""
    for key, value in {**static_metrics(), **runtime_metrics()}.items():
        if isinstance(value, list):
            print(f"{key}: {len(value)}")
            for item in value:
                print(f"    {item}")
        else:
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
