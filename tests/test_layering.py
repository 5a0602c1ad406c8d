"""The layering in pyproject.toml's import-linter contracts is live: each forbidden arrow, added to a copy of the
package, breaks its contract (a contract whose module names drifted would pass for ever). `lint-imports` itself
runs on the real package in the README's test command. Import-linter reads imports statically, so one runtime
check stays: importing all of core and session loads no Qt."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import medgemma_desktop

PACKAGE = Path(medgemma_desktop.__file__).parent
PYPROJECT = PACKAGE.parent / "pyproject.toml"
QT_MODULES = ("PySide6", "shiboken6", "PyQt5", "PyQt6")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter on the package under `root` with the project's contracts."""
    return subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                           "lint_imports_command()", str(PYPROJECT), "--no-cache"],
                          cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("layering")
    shutil.copytree(PACKAGE, root / "medgemma_desktop", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_the_contracts_pass_on_the_package(package_copy: Path) -> None:
    result = lint_imports(package_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "forbidden_import", "contract"), [
    ("core/errors.py", "import PySide6.QtCore", "core is the Qt-free base"),
    ("core/store.py", "from medgemma_desktop.session import anything", "core is the Qt-free base"),
    ("core/demo.py", "import medgemma_desktop.cli", "core is the Qt-free base"),
    ("core/engine.py", "from medgemma_desktop.server import app", "core is the Qt-free base"),
    ("session/__init__.py", "from medgemma_desktop.ui import theme", "session serves every front end"),
    ("session/__init__.py", "import shiboken6", "session serves every front end"),
    ("server/__init__.py", "from medgemma_desktop.ui.app import run_app", "the HTTP server runs without the window"),
    ("core/doctor.py", "from tests.conftest import write_ct_series", "no module (ui included) imports tests"),
    ("ui/theme.py", "import benchmarks.bench_decode", "no module (ui included) imports tests"),
])
def test_each_forbidden_arrow_breaks_its_contract(package_copy: Path, module: str, forbidden_import: str,
                                                  contract: str) -> None:
    path = package_copy / "medgemma_desktop" / module
    original = path.read_text(encoding="utf-8")
    path.write_text(original + f"\n\ndef _late() -> None:\n    {forbidden_import}\n", encoding="utf-8")
    try:
        result = lint_imports(package_copy)
    finally:
        path.write_text(original, encoding="utf-8")
    assert result.returncode == 1, result.stdout + result.stderr
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    # An arrow out of core also breaks the session's contract when session imports that core module (indirectly).
    assert any(contract in line for line in broken), result.stdout


def test_the_readme_test_command_that_ci_runs_checks_the_contracts() -> None:
    sys.path.insert(0, str(PYPROJECT.parent / ".ci"))
    from readme_commands import section_commands

    (command,) = section_commands("Tests", (PYPROJECT.parent / "README.md").read_text(encoding="utf-8"))
    assert " && .venv/bin/lint-imports && " in command and "'.[test]'" in command
    assert '"import-linter' in PYPROJECT.read_text(encoding="utf-8")  # the test extra installs it


def test_importing_all_of_core_and_session_loads_no_qt() -> None:
    modules = [f"medgemma_desktop.{layer}.{path.stem}" for layer in ("core", "session")
               for path in (PACKAGE / layer).glob("*.py") if path.stem != "__init__"]
    modules += ["medgemma_desktop.session"]
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + (
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {QT_MODULES!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "[]"
