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


def _loaded_by(modules: str, forbidden: str) -> list[str]:
    """The modules matching ``forbidden`` (a tuple of prefixes, as Python source) that
    importing ``modules`` loads, in a fresh interpreter."""
    code = (
        f"import sys, {modules}; prefixes = {forbidden};"
        "print(sorted(m for m in sys.modules if m.startswith(prefixes)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, text=True
    )
    found: list[str] = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    return found


def test_the_round_core_and_the_strategies_are_pure() -> None:
    """No broker, Redis, checkpoint (file I/O) or training code under the core: the shells
    hand it verified facts and plain tensors."""
    core = (
        "worldlm.core.federation, worldlm.core.exchange, "
        "worldlm.core.admission_rules, worldlm.core.steps, worldlm.strategies"
    )
    forbidden = (
        "('aiokafka', 'redis', 'brokers', 'safetensors', 'worldlm.participants.checkpoint', "
        "'worldlm.training')"
    )
    assert _loaded_by(core, forbidden) == []


def test_the_simulator_replay_and_the_lab_stand_without_the_live_stack() -> None:
    lab = (
        "worldlm.lab.simulator, worldlm.record.replay, worldlm.lab.demo, worldlm.lab.experiment, worldlm.lab.report, "
        "worldlm.lab.grid, worldlm.lab.methods, worldlm.lab.centralized, worldlm.lab.studies.regimes"
    )
    assert _loaded_by(lab, "('aiokafka', 'redis')") == []


def test_the_purity_check_sees_a_live_import() -> None:
    assert "aiokafka" in _loaded_by("worldlm.participants.runner", "('aiokafka',)")
