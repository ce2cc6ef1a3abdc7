"""Write the body of each API reference page from the package's ``__init__.pyi``: what users call first.

Each page keeps its own title, introduction and method-card line (everything above the marker line) and
gets, below it: the package's public names, one section each, in the order users meet them (Lightning
callbacks and mixins, then classes, then functions and constants); then a table of the package's modules
(core or Lightning shell, from the import-linter contract); then each module's other public names, the
building blocks other packages and advanced users import from the module itself.

    python docs/_ext/reference_pages.py          # rewrite docs/reference/<package>.md
    python docs/_ext/reference_pages.py --check  # exit 1 if a page is not current (run by the tests)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "lightning_reg"
MARKER = "<!-- generated below: python docs/_ext/reference_pages.py -->"


def _all(path: Path) -> list[str]:
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == "__all__" and node.value is not None:
            return [str(n) for n in ast.literal_eval(node.value)]
    return []


def _kinds(path: Path) -> dict[str, str]:
    """``{name: kind}`` for the module's top-level definitions: shell class, class, function, constant."""
    out: dict[str, str] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ClassDef):
            bases = " ".join(ast.unparse(b) for b in node.bases)
            shell = any(w in bases for w in ("Callback", "LightningModule", "Mixin", "EarlyStopping"))
            out[node.name] = "0 shell" if shell or node.name.endswith("Mixin") else "1 class"
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[node.name] = "2 function"
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            if isinstance(target, ast.Name):
                out[target.id] = "3 constant"
    return out


def _core_modules() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "forbidden"]
    return set(contract["source_modules"])


def _is_core(module: str, core: set[str]) -> bool:
    return any(module == c or module.startswith(c + ".") for c in core)


def _options(heading_level: int) -> list[str]:
    return ["    options:", f"      heading_level: {heading_level}"]


def body(package: str) -> str:
    """Return the generated part of ``docs/reference/<package>.md``."""
    pkg_dir = PKG / package
    public = _all(pkg_dir / "__init__.pyi")
    flat = set(_all(PKG / "__init__.pyi"))
    modules = sorted(p for p in pkg_dir.glob("*.py") if not p.stem.startswith("_"))
    home = {n: m.stem for m in modules for n in _all(m)}
    kind = {n: k for m in modules for n, k in _kinds(m).items()}
    core = _core_modules()
    lines = [MARKER, "", "## What you import", ""]
    names = ", ".join(f"`{n}`" + (" (also flat)" if n in flat else "") for n in public)
    lines += [f"`from lightning_reg.{package} import ...`: {names}.", ""]
    for name in sorted(public, key=lambda n: (kind.get(n, "9"), public.index(n))):
        lines += [f"::: lightning_reg.{package}.{home[name]}.{name}", *_options(3), ""]
    lines += ["## Modules", "", "| module | kind | other public names (building blocks) |", "|---|---|---|"]
    rest: dict[str, list[str]] = {}
    for m in modules:
        others = [n for n in _all(m) if n not in public]
        rest[m.stem] = others
        is_core = _is_core(f"lightning_reg.{package}.{m.stem}", core)
        where = "core (no Lightning)" if is_core else "Lightning shell"
        if m.stem == "__main__":
            where = "command line"
        listed = ", ".join(f"`{n}`" for n in others) or "none"
        lines.append(f"| `{m.stem}` | {where} | {listed} |")
    lines.append("")
    blocks = [(m, ns) for m, ns in rest.items() if ns]
    if blocks:
        lines += ["## Building blocks", ""]
        lines += ["Public in their module (other packages and advanced users import them from there), "
                  "not in the package's list above.", ""]
        for m, ns in blocks:
            lines += [f"::: lightning_reg.{package}.{m}", *_options(3), "      members:"]
            lines += [f"        - {n}" for n in ns]
            lines.append("")
    return "\n".join(lines)


def main(check: bool) -> int:
    """Rewrite (or check) every reference page; return the exit code."""
    stale = []
    for stub in sorted(PKG.glob("*/__init__.pyi")):
        package = stub.parent.name
        page = ROOT / "docs" / "reference" / f"{package}.md"
        text = page.read_text(encoding="utf-8") if page.exists() else f"# `lightning_reg.{package}`\n\n"
        head = text.split(MARKER)[0].rstrip() + "\n\n"
        new = head + body(package)
        if new != text:
            stale.append(page.name)
            if not check:
                page.write_text(new, encoding="utf-8")
    if check and stale:
        print("not current (run python docs/_ext/reference_pages.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv))
