"""Every test checks something: a test function with no assert, no pytest.raises/fail/warns,
and no call of a helper that asserts cannot fail, and that is a defect (STYLE.md, Tests).

The check reads tests/ with ast. A helper counts as checking when its body has an `assert`
or a pytest.raises/fail/warns, or when it calls such a helper; helpers are matched by name
across tests/ (lenient: a name shared with a checking helper counts), so what it reports is
certainly unchecked. A `raise` alone does not count: a helper that only raises on a timeout
(tests/support/waiting.py) proves that something happened, not that it was right.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
CHECKS = {"raises", "fail", "warns", "deprecated_call"}


def _calls_and_checks(function: ast.AST) -> tuple[bool, set[str]]:
    """(does the body check by itself, the names it calls)."""
    checks, called = False, set()
    for node in ast.walk(function):
        if isinstance(node, ast.Assert):
            checks = True
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            checks = checks or (isinstance(func, ast.Attribute) and name in CHECKS)
            if name:
                called.add(name)
    return checks, called


def unchecked_tests(root: Path = TESTS) -> list[str]:
    """`path:line: name` of every test function under `root` that checks nothing."""
    functions: dict[str, list[tuple[bool, set[str]]]] = {}
    tests = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                info = _calls_and_checks(node)
                functions.setdefault(node.name, []).append(info)
                if node.name.startswith("test") and path.name.startswith("test_"):
                    tests.append((path, node, info))
    checking = {name for name, infos in functions.items() if any(direct for direct, _ in infos)}
    grown = True
    while grown:
        before = len(checking)
        checking |= {name for name, infos in functions.items() if any(called & checking for _, called in infos)}
        grown = len(checking) > before
    return [f"{path.relative_to(root.parent)}:{node.lineno}: {node.name}"
            for path, node, (direct, called) in tests if not direct and not called & checking]


def test_every_test_function_checks_something():
    assert unchecked_tests() == []


def test_a_test_without_a_check_is_found(tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "def helper(x):\n    assert x\n\n"
        "def test_checks():\n    helper(1)\n\n"
        "def test_only_runs():\n    print('ran')\n\n"
        "def test_only_raises_on_timeout():\n    raise TimeoutError\n")
    assert unchecked_tests(tmp_path) == [f"{tmp_path.name}/test_sample.py:7: test_only_runs",
                                         f"{tmp_path.name}/test_sample.py:10: test_only_raises_on_timeout"]
