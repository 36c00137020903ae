"""The installed layout: every package directory of the source tree is in
pyproject.toml's explicit package list (arches/ and cli/ are mapped into
kvmcore, so setuptools cannot discover them), or a non-editable install (CI's
lint step, a wheel) would silently lack it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.fast
def test_every_package_directory_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = config["package-dir"]  # package name -> source directory
    listed = set(config["packages"])
    found = set()
    for package, source in mapping.items():
        for init in (ROOT / source).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / source)
            found.add(".".join([package, *rel.parts]) if rel.parts else package)
    found |= set(config.get("package-data", {}))  # data-only packages (the JSON schema)
    assert found - listed == set(), "add these to [tool.setuptools] packages"
    assert listed - found == set(), "listed packages with no directory"
