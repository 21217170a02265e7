"""The layout tells the architecture: schemas <- brokers <- worldlm, and schemas stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# package -> packages of this project it must never import
FORBIDDEN = {"schemas": {"brokers", "worldlm"}, "brokers": {"worldlm"}}


def imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_never_imports_packages_above_it(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_top_levels(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_dependency_checker_detects_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from worldlm.strategies import fedavg\nimport brokers.kafka\n")
    assert imported_top_levels(bad) >= {"worldlm", "brokers"}


def test_schemas_imports_without_torch_or_io_libraries() -> None:
    code = (
        "import sys, schemas.codec, schemas.delta, schemas.keyspace, schemas.topics, "
        "schemas.tensors;"
        "bad = {'torch', 'aiokafka', 'redis'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
