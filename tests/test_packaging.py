"""The package list in pyproject.toml names every package folder (it is kept by hand because
backends/ installs as cnncompiler.backends)."""

import tomllib

from conftest import ROOT


def test_every_package_folder_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for init in (ROOT / "cnncompiler").rglob("__init__.py"):
        found.add(".".join(init.parent.relative_to(ROOT).parts))
    for init in (ROOT / "backends").rglob("__init__.py"):
        found.add(".".join(("cnncompiler", "backends") + init.parent.relative_to(ROOT / "backends").parts))
    assert found == listed
