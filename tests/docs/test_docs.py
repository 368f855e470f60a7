"""The documentation stays true: the site builds strictly, the settings table matches the code,
the README stays short and every relative link in it and in docs/ resolves."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from serving.settings import Settings
from tests.recording_env import RecordingEnv

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
CONFIGURATION = DOCS / "configuration.md"
GUNICORN_CONF = ROOT / "gunicorn.conf.py"
README_MAX_LINES = 330

_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_CODE = re.compile(r"`([^`]+)`")
_VARIABLE = re.compile(r"^[A-Z][A-Z0-9_]*$")
# os.environ.get("NAME"[, "default"]) and os.environ["NAME"] in gunicorn.conf.py.
_GUNICORN_READ = re.compile(
    r"""os\.environ(?:\.get\(\s*(["'])(?P<name>[A-Z][A-Z0-9_]*)\1\s*"""
    r"""(?:,\s*(["'])(?P<default>[^"']*)\3)?|\[\s*(["'])(?P<item>[A-Z][A-Z0-9_]*)\5\s*\])"""
)
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _settings_variables() -> set[str]:
    env = RecordingEnv()
    Settings.from_env(env)
    return env.asked


def _gunicorn_reads() -> dict[str, str | None]:
    """Each variable gunicorn.conf.py reads, with its literal default where it has one."""
    reads: dict[str, str | None] = {}
    for match in _GUNICORN_READ.finditer(GUNICORN_CONF.read_text()):
        name = match.group("name") or match.group("item")
        default = match.group("default")
        if default or name not in reads:
            reads[name] = default or reads.get(name)
    return reads


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in _CELL_SPLIT.split(line.strip())[1:-1]]


def _settings_table() -> dict[str, str | None]:
    """variable -> its default as the table writes it: the first `code` in the default cell,
    None where the cell has none (`unset`, `number of cores`)."""
    lines = CONFIGURATION.read_text().splitlines()
    header = next(
        (i for i, line in enumerate(lines) if _cells(line)[:2] == ["variable", "default"]), None
    )
    assert header is not None, f"no | variable | default | ... table in {CONFIGURATION}"
    rows: dict[str, str | None] = {}
    for line in lines[header + 2 :]:  # after the header and its | --- | line
        if not line.startswith("|"):
            break
        name_cell, default_cell = _cells(line)[:2]
        names = _CODE.findall(name_cell)
        assert len(names) == 1 and _VARIABLE.match(names[0]), f"one variable per row: {line}"
        assert names[0] not in rows, f"{names[0]} is listed twice"
        literal = _CODE.findall(default_cell)
        rows[names[0]] = literal[0] if literal else None
    return rows


def _same_default(written: str, code: str) -> bool:
    def norm(text: str) -> str:
        text = text.strip()
        return text[2:] if text.startswith("./") else text

    try:
        return float(norm(written)) == float(norm(code))
    except ValueError:
        return norm(written) == norm(code)


def test_mkdocs_builds_strictly(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "index.html").is_file()


def test_settings_table_lists_exactly_the_variables_the_code_reads() -> None:
    table = set(_settings_table())
    settings, gunicorn = _settings_variables(), set(_gunicorn_reads())
    assert {"SERVING_MODEL_STORE", "SERVING_POLL_INTERVAL"} <= settings  # the recorder works
    assert {"PORT", "WEB_CONCURRENCY"} <= gunicorn  # the regex works
    code = settings | gunicorn
    assert sorted(code - table) == [], "read by the code, missing from docs/configuration.md"
    assert sorted(table - code) == [], "in docs/configuration.md, read by no code"


def test_settings_table_defaults_are_the_code_defaults() -> None:
    """Setting a variable to the default the table states gives the same Settings as leaving
    it unset; where the table writes no value (`unset`), an empty value does."""
    table = _settings_table()
    unset = Settings.from_env({})
    wrong = {}
    for name in sorted(_settings_variables()):
        written = table.get(name)
        value = "" if written is None else written
        if Settings.from_env({name: value}) != unset:
            wrong[name] = written
    assert wrong == {}, "docs/configuration.md states another default than the code"


def test_gunicorn_defaults_in_the_table_match_gunicorn_conf() -> None:
    table = _settings_table()
    wrong = {
        name: (table.get(name), default)
        for name, default in _gunicorn_reads().items()
        if default and table.get(name) is not None and not _same_default(table[name], default)
    }
    assert wrong == {}, "(table, gunicorn.conf.py) defaults differ"


def test_readme_is_short() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move depth to docs/"


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_existing_files(path: Path) -> None:
    text = _FENCE.sub("", path.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http:, https:, mailto: ... and anchors within the page
        relative = target.split("#", 1)[0]
        if not (path.parent / relative).exists():
            broken.append(target)
    assert broken == [], f"{path.name}: links to missing files"


_REPO_PATH = re.compile(r"\b((?:serving|tests|bench|deploy)/[\w./-]*\w/?)")


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_paths_of_the_repo_named_in_the_docs_exist(path: Path) -> None:
    """A module or folder the docs name (`serving/runtime/`, `bench/run.py`) is really there."""
    named = set(_REPO_PATH.findall(path.read_text()))
    written_by_runs = ("YYYY", ".json", ".png")  # outputs a benchmark run writes (git-ignored)
    missing = sorted(
        p
        for p in named
        if not (ROOT / p.rstrip("/")).exists() and not any(w in p for w in written_by_runs)
    )
    assert missing == []
