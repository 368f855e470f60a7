"""The layers of docs/architecture.md hold: import-linter's contracts pass, a violation fails
them by name, and no module imports itself through a cycle."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"},
    )


def _copy_project(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "serving", tmp_path / "serving", ignore=shutil.ignore_patterns("web"))
    return tmp_path


def test_import_contracts_are_kept() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("serving/store/bad.py", "from serving.runtime import loader\n", "Layers:"),
        ("serving/store/bad.py", "from serving.api import state\n", "Layers:"),
        ("serving/runtime/bad.py", "import flask\n", "Flask only in the web layer"),
        ("serving/monitoring/bad.py", "from serving.protocols import v2\n", "Layers:"),
    ],
    ids=["store-imports-runtime", "store-imports-api", "flask-in-runtime", "siblings-import"],
)
def test_a_forbidden_import_fails_with_the_contracts_name(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    project = _copy_project(tmp_path)
    (project / module).write_text(f'"""A deliberate violation."""\n\n{line}')
    result = _lint_imports(project)
    assert result.returncode == 1, result.stdout
    broken = result.stdout.split("Broken contracts", 1)[1]
    assert contract in broken
    assert module.removesuffix(".py").replace("/", ".") in broken


_FIND_CYCLES = """
import json, grimp
graph = grimp.build_graph("serving", cache_dir=None)
found = []
for module in sorted(graph.modules):
    for imported in sorted(graph.find_modules_directly_imported_by(module)):
        chain = graph.find_shortest_chain(importer=imported, imported=module)
        if chain:
            found.append([module, *chain])
print(json.dumps(found))
"""


def _cycles(path: Path) -> list[list[str]]:
    """Every import chain that comes back to where it started (in its own interpreter, so the
    `serving` under `path` is the one analysed)."""
    result = subprocess.run(
        [sys.executable, "-c", _FIND_CYCLES],
        cwd=path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(path), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_no_module_imports_itself_through_a_cycle() -> None:
    assert _cycles(ROOT) == []


def test_the_cycle_check_finds_a_cycle(tmp_path: Path) -> None:
    project = _copy_project(tmp_path)
    (project / "serving" / "features" / "loop.py").write_text(
        '"""A deliberate cycle."""\n\nfrom serving.features import schema  # noqa: F401\n'
    )
    schema = project / "serving" / "features" / "schema.py"
    schema.write_text(schema.read_text() + "\nfrom serving.features import loop  # noqa: E402\n")
    assert ["serving.features.loop", "serving.features.schema", "serving.features.loop"] in (
        _cycles(project)
    )
