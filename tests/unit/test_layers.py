"""The import rules of STYLE.md, for every module of the relay: each imports only from layers
below its own (or from its own package), so the queue is the only path between inbound and
outbound, and the relay never depends on the board side or the laptop tools."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2] / "mta_lite"

# The layers, lowest first: a module's rank is its package's (or, for the top-level modules,
# its own); pure modules of any package (no I/O, no config) rank with the foundation.
RANKS = {
    "errors": 0, "reply": 0, "envelope": 0, "safeio": 0, "identity": 0, "passhash": 0, "text": 0,
    "config": 1,
    "maillog": 2, "status": 2, "history": 2,
    "queue": 3, "smarthost": 3, "smtpd": 3,
    "postscreen": 4, "qmgr": 4,
    "process": 5,
    "commands": 6,
    "cli": 7,
}
PURE = {"smtpd.dotreader", "qmgr.ratelimit", "qmgr.bounce", "postscreen.dnsbl",
        "postscreen.policy", "smarthost.result", "smarthost.oauth.sasl"}


def _module(path: pathlib.Path) -> str:
    """`queue.spool`; "" for mta_lite/__init__.py itself."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _rank(module: str) -> tuple[int, str]:
    """(rank, the package it belongs to) of a module name relative to mta_lite; the
    foundation counts as one package: its pure modules may use one another."""
    package = module.split(".")[0]
    rank = 0 if module in PURE or not module else RANKS[package]
    return rank, "foundation" if rank == 0 else package


def _imports(path: pathlib.Path) -> set[str]:
    """mta_lite modules imported by `path`, relative to mta_lite (absolute imports only)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                raise AssertionError(f"{path}: relative import of {node.module}")
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name.removeprefix("mta_lite.") for name in names if name.startswith("mta_lite.")}


def _known(name: str) -> str | None:
    """The module `name` refers to (it may end in an imported class or function)."""
    while name:
        if (ROOT / (name.replace(".", "/") + ".py")).exists() or (ROOT / name.replace(".", "/")).is_dir():
            return name
        name = name.rpartition(".")[0]
    return ""       # an attribute of mta_lite itself (__version__): the package root


MODULES = sorted(ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module(p) or "__init__")
def test_module_imports_only_from_lower_layers_or_its_own_package(path):
    module = _module(path)
    if not module:
        return
    rank, package = _rank(module)
    for name in _imports(path):
        target = _known(name)
        other_rank, other_package = _rank(target)
        assert other_package == package or other_rank < rank, \
            f"{module} (layer {rank}) imports {target} (layer {other_rank})"


def test_every_package_has_a_layer():
    for path in MODULES:
        module = _module(path)
        assert not module or module.split(".")[0] in RANKS, f"{module} has no layer in RANKS"


def test_mta_lite_never_imports_the_board_side_or_the_tools():
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                assert name.split(".")[0] not in ("mta_lite_board", "mta_lite_tools", "tools"), \
                    f"{path} imports {name}"


QMGR_TOP = {"qmgr.manager", "qmgr.QueueManager"}


def test_qmgr_modules_never_import_the_manager():
    """Within qmgr the manager is on top: what it drives (dispatch, delivery, notices, pickup,
    accounts, budget, clock, ...) never imports it back, so each can be tested without it."""
    for path in MODULES:
        module = _module(path)
        if module.startswith("qmgr.") and module != "qmgr.manager":
            assert not _imports(path) & QMGR_TOP, f"{module} imports the queue manager"
