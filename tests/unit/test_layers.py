"""The import rules of STYLE.md: the queue is the only path between inbound and outbound."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2] / "mta_lite"


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def _files(package: str):
    return sorted((ROOT / package).glob("*.py"))


@pytest.mark.parametrize("package, forbidden", [
    ("smtpd", ("smarthost", "qmgr")),
    ("qmgr", ("smtpd",)),
    ("smarthost", ("smtpd", "qmgr")),
    ("queue", ("smtpd", "qmgr", "smarthost")),
])
def test_package_does_not_import_forbidden_layers(package, forbidden):
    assert _files(package), f"no modules in mta_lite/{package}"
    for path in _files(package):
        for name in _imports(path):
            assert not any(part in forbidden for part in name.strip(".").split(".")), f"{path.name} imports {name}"


def test_mta_lite_never_imports_board_or_tools():
    for path in ROOT.rglob("*.py"):
        for name in _imports(path):
            assert name.split(".")[0] not in ("board", "tools"), f"{path} imports {name}"
