"""The tiers hold: the unit tier imports no framework (so `make test-fast` stays seconds), and no test module
imports another test module or conftest.py (what they share is in tests/helpers/)."""

import ast
import json
import subprocess
import sys

from tests.helpers.cli import ROOT

TESTS = ROOT / "tests"
FRAMEWORKS = ("tensorflow", "torch", "keras", "horovod", "jax")


def test_unit_tier_imports_no_framework():
    """Every module of tests/unit (and conftest.py, which every run loads), and every module of xfw.common and
    xfw.cli, imported in one fresh interpreter: none of them brings in a framework."""
    units = sorted(f"tests.unit.{p.stem}" for p in (TESTS / "unit").glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, json, pkgutil, sys\n"
        "import xfw.common, xfw.cli\n"
        f"names = ['tests.conftest', *{units!r}]\n"
        "for pkg in (xfw.common, xfw.cli):\n"
        "    names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.')]\n"
        f"frameworks, brought = {FRAMEWORKS!r}, {{}}\n"
        "for name in names:\n"
        "    before = {f for f in frameworks if f in sys.modules}\n"
        "    importlib.import_module(name)\n"
        "    new = sorted(f for f in frameworks if f in sys.modules and f not in before)\n"
        "    if new:\n"
        "        brought[name] = new\n"
        "print(json.dumps({'imported': len(names), 'brought': brought}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["imported"] > len(units), out  # the xfw modules were found too
    assert out["brought"] == {}, f"framework modules imported by (module: frameworks): {out['brought']}"


def _imports(tree: ast.AST):
    """The module names an import statement may load: `import a.b` -> a.b; `from a import b` -> a, and a.b where
    a is a package of tests/ or relative (where b may be a module)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            yield module
            if node.level or (node.module or "").split(".")[0] == "tests":
                yield from (f"{module}.{alias.name}" for alias in node.names)


def test_no_test_module_imports_another_test_module_or_conftest():
    bad = []
    for path in sorted(TESTS.rglob("*.py")):
        for name in _imports(ast.parse(path.read_text(), filename=str(path))):
            parts = [p for p in name.split(".") if p]
            if any(p == "conftest" or p.startswith("test_") for p in parts):
                bad.append(f"{path.relative_to(ROOT)}: {name}")
    assert bad == [], "import what is shared from tests.helpers instead:\n" + "\n".join(bad)
