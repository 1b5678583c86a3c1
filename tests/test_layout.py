"""The package layout's import rules, read from each package's ``__init__`` docstring and checked here.

Every package of ``cores/`` and ``backend/`` says in its ``__init__`` docstring what it holds and, on a line
``May import: ...``, which other packages (or single modules) its modules may import. This test reads
every import statement of every module (function-level imports included: a lazy import is still a
dependency), and fails naming the file, the line and the rule. ``cores`` never imports ``backend``; the
modules at a root's top (``cli``, ``doctor``, ``bench``, ``errors``...) may import anything of their root.
The web process is also imported in a fresh interpreter to check that nothing pulls torch into it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.paths import REPO_ROOT as ROOT

ROOTS = ("cores", "backend")
NOTHING = "nothing of"
#: Heavy libraries the web process must never load.
HEAVY = ("torch", "transformers", "segment_anything", "sentencepiece", "cv2")


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    target: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.target}: {self.rule}"


def package_of(module: str, base: Path) -> str:
    """``backend.jobs`` for ``backend.jobs.queues``; the root itself for a top-level module."""
    parts = module.split(".")
    if len(parts) >= 2 and (base / parts[0] / parts[1]).is_dir():
        return ".".join(parts[:2])
    return parts[0]


def may_import(init: Path) -> tuple[str, ...] | None:
    """The ``May import:`` entries of a package's ``__init__`` docstring (None when it has no such line)."""
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    lines = doc.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("May import:"):
            text = line.removeprefix("May import:")
            for more in lines[i + 1 :]:
                if not more.strip():
                    break
                text += " " + more
            if text.strip().startswith(NOTHING):
                return ()
            return tuple(entry.strip() for entry in text.split(",") if entry.strip())
    return None


def imported_modules(path: Path, base: Path) -> list[tuple[str, int]]:
    """``(module, line)`` of every absolute import of ``cores``/``backend`` in a file; ``from a import b``
    gives ``a.b`` when ``b`` is a module of the tree, else ``a``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                as_path = base.joinpath(*candidate.split("."))
                is_module = as_path.with_suffix(".py").is_file() or as_path.is_dir()
                found.append((candidate if is_module else node.module, node.lineno))
    return [(module, line) for module, line in found if module.split(".")[0] in ROOTS]


def check_tree(base: Path) -> list[Violation]:
    """Every import of every module under ``base``'s roots against its package's rule."""
    violations: list[Violation] = []
    for root in ROOTS:
        for path in sorted((base / root).rglob("*.py")):
            rel = str(path.relative_to(base))
            module = ".".join(path.relative_to(base).with_suffix("").parts).removesuffix(".__init__")
            own = package_of(module, base)
            allowed = None if own == root else may_import(base / own.replace(".", "/") / "__init__.py")
            if own != root and allowed is None:
                violations.append(Violation(rel, 1, "-", f"{own} has no 'May import:' line"))
                continue
            for target, line in imported_modules(path, base):
                if root == "cores" and target.split(".")[0] == "backend":
                    violations.append(Violation(rel, line, target, "cores never imports backend"))
                elif allowed is None or package_of(target, base) == own:
                    continue  # a root's top-level modules may import anything of it; a package itself
                elif not any(_covers(entry, target) for entry in allowed):
                    violations.append(Violation(rel, line, target, f"{own} may import {list(allowed)}"))
    return violations


def _covers(entry: str, target: str) -> bool:
    return target == entry or target.startswith(entry + ".")


def test_every_package_states_what_it_holds_and_may_import() -> None:
    for root in ROOTS:
        for init in sorted((ROOT / root).glob("*/__init__.py")):
            doc = ast.get_docstring(ast.parse(init.read_text())) or ""
            assert len(doc.split("\n")[0]) > 20, f"{init}: say what the package holds"
            assert may_import(init) is not None, f"{init}: no 'May import:' line"


def test_imports_follow_the_packages_rules() -> None:
    violations = check_tree(ROOT)
    assert not violations, "import rules broken:\n" + "\n".join(map(str, violations))


def _write(base: Path, path: str, text: str) -> None:
    target = base / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def test_the_check_names_a_broken_rule(tmp_path: Path) -> None:
    """The checker itself: a Label Studio module importing the queues, a lazy import of the web, cores
    importing backend, and a package without its rule are each reported; allowed imports are not."""
    _write(tmp_path, "backend/__init__.py", '"""x"""\n')
    _write(tmp_path, "backend/jobs/__init__.py", '"""The queues.\n\nMay import: backend.label_studio\n"""\n')
    _write(tmp_path, "backend/jobs/queues.py", "from backend.label_studio import config\n")
    _write(
        tmp_path, "backend/label_studio/__init__.py", '"""Formats.\n\nMay import: nothing of backend\n"""\n'
    )
    _write(tmp_path, "backend/label_studio/config.py", "def f():\n    from backend.web import app\n")
    _write(tmp_path, "backend/label_studio/rle.py", "from backend.jobs.queues import enqueue\n")
    _write(tmp_path, "backend/web/__init__.py", '"""The web, with no rule line."""\n')
    _write(tmp_path, "backend/web/app.py", "")
    _write(tmp_path, "cores/__init__.py", '"""x"""\n')
    _write(tmp_path, "cores/modeling/__init__.py", '"""Parts.\n\nMay import: cores.errors\n"""\n')
    _write(tmp_path, "cores/modeling/model.py", "import backend.jobs.queues\nfrom cores import errors\n")
    _write(tmp_path, "cores/errors.py", "")
    found = {(v.path, v.target) for v in check_tree(tmp_path)}
    assert found == {
        ("backend/label_studio/config.py", "backend.web.app"),
        ("backend/label_studio/rle.py", "backend.jobs.queues"),
        ("backend/web/__init__.py", "-"),
        ("backend/web/app.py", "-"),
        ("cores/modeling/model.py", "backend.jobs.queues"),
    }


WEB_MODULES = (
    "backend.web.app",
    "backend.web.routes",
    "backend.web.wsgi",
    "backend.web.server",
    "backend.web.webhooks",
    "backend.web.dispatch",
)


def _loaded_after(modules: tuple[str, ...]) -> list[str]:
    code = (
        "import importlib, json, sys\n"
        f"for m in {list(modules)!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    loaded: list[str] = __import__("json").loads(done.stdout)
    return loaded


def test_the_web_process_loads_no_torch_and_only_torch_free_cores_helpers() -> None:
    loaded = _loaded_after(WEB_MODULES)
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY]
    assert not heavy, f"the web process imported {heavy[:10]}"
    helpers = [m for m in loaded if m.startswith("cores.") and m.count(".") == 2]
    for helper in helpers:  # each cores module the web reaches must itself be torch-free
        alone = _loaded_after((helper,))
        assert not [m for m in alone if m.split(".")[0] in HEAVY], f"{helper} pulls in a heavy library"


@pytest.mark.parametrize("root", ROOTS)
def test_no_module_is_over_400_lines(root: str) -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / root).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert not long, f"split these modules by concern: {long}"
