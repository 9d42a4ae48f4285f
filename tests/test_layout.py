"""Architecture rules: common/ and cli/ import no framework; the registry is complete and points at
functions that exist; tf_impl/ and torch_impl/ have the same files."""

import ast
import subprocess
import sys

from xfw.common.registry import FRAMEWORKS, REGISTRY, STRATEGIES

from conftest import ROOT


def test_common_and_cli_import_no_framework():
    code = (
        "import sys, pkgutil, importlib, xfw.common, xfw.cli\n"
        "for pkg in (xfw.common, xfw.cli):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__):\n"
        "        importlib.import_module(f'{pkg.__name__}.{m.name}')\n"
        "bad = [m for m in ('tensorflow', 'torch', 'horovod', 'keras') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"framework modules imported: {out.stdout}"


def test_every_strategy_has_an_implementation_on_each_side():
    for strategy in STRATEGIES:
        for fw in FRAMEWORKS:
            assert any(i.framework == fw and i.strategy == strategy for i in REGISTRY), (fw, strategy)


def test_registry_points_at_existing_functions():
    for impl in REGISTRY:
        folder, module = impl.module.split(".")[1:]
        tree = ast.parse((ROOT / folder / f"{module}.py").read_text())
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert impl.function in names, impl


def test_ids_are_unique():
    ids = [i.id for i in REGISTRY]
    assert len(ids) == len(set(ids))


def test_tf_and_torch_folders_mirror_each_other():
    tf_files = {p.name for p in (ROOT / "tf_impl").glob("*.py")}
    torch_files = {p.name for p in (ROOT / "torch_impl").glob("*.py")}
    assert tf_files == torch_files
