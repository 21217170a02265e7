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
    lazy = tmp_path / "lazy.py"
    lazy.write_text(
        "def f():\n    from worldlm import logs\n    import worldlm.participants.node\n"
    )
    assert _worldlm_imports(lazy) == {"logs", "participants"}


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


#: worldlm's packages -> the packages of worldlm each may import (anywhere in its modules,
#: lazily or not). The direction of the house: strategies and the core at the bottom, the
#: live shell, the lab and the record on them, chaos and the CLI on top. The one arrow back
#: up is config -> training: the load-time DP check builds the run's model on the meta device
#: to count its private coordinates (config/feasibility.py, lazily).
ALLOWED: dict[str, set[str]] = {
    "strategies": set(),
    "config": {"strategies", "training"},
    "training": {"config", "strategies"},
    "core": {"config", "strategies"},
    "security": {"config"},
    "participants": {"core", "config", "security", "strategies", "training", "logs"},
    "lab": {"core", "config", "strategies", "training"},
    "record": {"core", "config", "lab", "security", "strategies", "training"},
    "dashboard": {"config"},
    "chaos": {"config", "core", "lab", "participants", "record", "security", "training", "logs"},
    "cli": {
        "chaos",
        "config",
        "core",
        "dashboard",
        "lab",
        "participants",
        "record",
        "security",
        "training",
        "logs",
    },
}


def _worldlm_imports(path: Path) -> set[str]:
    """The worldlm packages (or top-level modules) a file imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module]
            if node.module == "worldlm":
                modules = [f"worldlm.{alias.name}" for alias in node.names]
        found |= {m.split(".")[1] for m in modules if m.startswith("worldlm.")}
    return found


def test_each_worldlm_package_imports_only_the_packages_below_it() -> None:
    packages = {p.name for p in (ROOT / "worldlm").iterdir() if (p / "__init__.py").exists()}
    assert packages == set(ALLOWED), "a new package needs its place in ALLOWED"
    offenders = {}
    for package, allowed in ALLOWED.items():
        for path in (ROOT / "worldlm" / package).rglob("*.py"):
            extra = _worldlm_imports(path) - allowed - {package}
            if extra:
                offenders[str(path.relative_to(ROOT))] = sorted(extra)
    assert offenders == {}


def test_worldlm_keeps_only_its_entry_points_and_logging_loose() -> None:
    loose = {p.name for p in (ROOT / "worldlm").glob("*.py")}
    assert loose == {"__init__.py", "__main__.py", "logs.py"}


def test_the_round_core_and_the_strategies_are_pure() -> None:
    """No broker, Redis, checkpoint (file I/O) or training code under the core: the shells
    hand it verified facts and plain tensors."""
    core = _every_module("core") + ", " + _every_module("strategies")
    forbidden = (
        "('aiokafka', 'redis', 'brokers', 'safetensors', 'worldlm.participants', "
        "'worldlm.training')"
    )
    assert _loaded_by(core, forbidden) == []


def _every_module(package: str) -> str:
    """Every module of ``worldlm.<package>``, as an import list."""
    base = ROOT / "worldlm" / package
    names = [
        ".".join(("worldlm", package, *p.relative_to(base).with_suffix("").parts))
        for p in sorted(base.rglob("*.py"))
        if p.name != "__init__.py"
    ]
    return ", ".join(names)


def test_the_simulator_replay_and_the_lab_stand_without_the_live_stack() -> None:
    lab = _every_module("lab") + ", worldlm.record.replay, worldlm.record.audit"
    assert _loaded_by(lab, "('aiokafka', 'redis')") == []


def test_the_purity_check_sees_a_live_import() -> None:
    assert "aiokafka" in _loaded_by("worldlm.participants.runner", "('aiokafka',)")


def test_no_module_of_the_packages_runs_past_350_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for package in ("schemas", "brokers", "worldlm")
        for path in (ROOT / package).rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 350
    }
    assert long == {}
