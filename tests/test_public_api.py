"""The public API of ``ltu_lightning``: every name imports, is documented, and loads lazily."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from importlib.metadata import version

import lightning as L
import pytest

import ltu_lightning
import ltu_lightning.modules
from ltu_lightning import UnlearningData, UnlearningDataModule
from ltu_lightning.data.protocol import EVALUATE_ROLES, FIT_ROLES
from ltu_lightning.modules import baselines

NAMES = [name for name in ltu_lightning.__all__ if name != "__version__"]


@pytest.mark.parametrize("name", NAMES)
def test_public_name_imports_and_has_its_own_docstring(name):
    obj = getattr(ltu_lightning, name)  # what ``from ltu_lightning import name`` does
    # its own docstring: a class without one would otherwise show nothing useful in help()
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    assert doc and doc.strip(), f"{name} has no docstring"
    assert obj is getattr(importlib.import_module(ltu_lightning._SOURCES[name]), name)


def test_all_lazy_sources_and_type_checking_imports_agree():
    assert set(ltu_lightning.__all__) == {*ltu_lightning._SOURCES, "__version__"}
    assert len(ltu_lightning.__all__) == len(set(ltu_lightning.__all__))
    tree = ast.parse(inspect.getsource(ltu_lightning))
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
    )
    typed = {
        alias.name: node.module
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert typed == ltu_lightning._SOURCES


def test_version_is_the_installed_distributions():
    assert ltu_lightning.__version__ == version("ltu-lightning")


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        ltu_lightning.NoSuchThing  # noqa: B018
    assert not hasattr(ltu_lightning, "NoSuchThing")
    assert set(ltu_lightning.__all__) <= set(dir(ltu_lightning))


def test_importing_the_package_loads_neither_torch_nor_lightning():
    """``ltu_lightning/__init__.py`` runs before every submodule import: it must stay cheap."""
    code = (
        "import sys, ltu_lightning, ltu_lightning.errors; "
        "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_modules_package_exports_every_baseline():
    """``ltu_lightning.modules`` is what the CLI imports to resolve ``class_path: FineTune``."""
    assert set(baselines.__all__) <= set(ltu_lightning.modules.__all__)
    for name in baselines.__all__:
        assert getattr(ltu_lightning.modules, name) is getattr(baselines, name)


def test_the_project_datamodule_follows_the_unlearning_data_protocol(tmp_path):
    data = UnlearningDataModule(
        dataset="digits", holdout=0.2, manifest_path=str(tmp_path / "split.json")
    )
    assert isinstance(data, UnlearningData)
    assert not isinstance(L.LightningDataModule(), UnlearningData)
    data.setup("fit")
    for role in (*FIT_ROLES, *EVALUATE_ROLES):  # the role names the protocol promises
        x, y = next(iter(data.role_dataloader(role)))
        assert len(x) == len(y) > 0
