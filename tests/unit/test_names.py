"""No file of common/ or cli/ outside the strategy modules compares a strategy, framework or launcher name as a
string: they ask the strategy's descriptor and hooks (common/strategies/) or compare the enums (Framework,
Launcher). A new `if impl.strategy == "..."` is the branch this rule exists to stop."""

import ast

from tests.helpers.cli import ROOT
from xfw.common.strategies import STRATEGY
from xfw.common.strategies.base import Framework, Launcher

NAMES = set(STRATEGY) | {f.value for f in Framework} | {launcher.value for launcher in Launcher}
# Where the names are defined: the strategy modules (each module's own name in its rows).
DEFINITIONS = ROOT / "common" / "strategies"


def _strings(node: ast.AST) -> list[str]:
    """The string constants a comparison operand is or holds (a tuple, list or set of them)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [s for element in node.elts for s in _strings(element)]
    return []


def name_compares(source: str) -> list[tuple[int, str]]:
    """(line, name) of every `==`, `!=`, `in` or `not in` with a strategy, framework or launcher name as an
    operand."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                found += [(node.lineno, s) for s in _strings(operand) if s in NAMES]
        elif isinstance(node, ast.MatchValue):
            found += [(node.lineno, s) for s in _strings(node.value) if s in NAMES]
    return found


def test_the_check_sees_a_name_compare():
    assert name_compares('if impl.strategy == "parameter-server": pass') == [(1, "parameter-server")]
    assert name_compares('ok = launcher in ("torchrun", "tf_config")') == [(1, "torchrun"), (1, "tf_config")]
    assert name_compares("if framework == Framework.TF: pass") == []
    assert name_compares('label = "single"') == []  # a name as data, not a branch


def test_no_name_compares_outside_the_strategy_modules():
    files = [p for d in ("common", "cli") for p in sorted((ROOT / d).rglob("*.py")) if DEFINITIONS not in p.parents]
    assert len(files) > 40
    found = [
        f"{path.relative_to(ROOT)}:{line}: {name!r}" for path in files for line, name in name_compares(path.read_text())
    ]
    assert found == [], "compare the descriptor or the enum instead:\n" + "\n".join(found)
