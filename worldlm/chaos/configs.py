"""A campaign's configs: the base config as read from TOML, one copy per trial.

Each trial runs under its own run id (so its topics and Redis keys meet no other trial's)
and, where a scenario needs it, its own number of rounds; the copy is written back as TOML
for the ``worldlm`` processes and parsed for the campaign's own readers.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from worldlm.config.hierarchy import Hierarchy, parse

#: The config a campaign uses unless given one: a flat federation of ten tiny clients.
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "chaos.toml"


def read_raw(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def with_run(raw: Mapping[str, Any], run_id: str, rounds: int | None = None) -> dict[str, Any]:
    """``raw`` with another run id and (optionally) another number of root rounds."""
    out = copy.deepcopy(dict(raw))
    run = dict(out.get("run", {}))
    run["id"] = run_id
    if rounds is not None:
        run["rounds"] = rounds
    out["run"] = run
    return out


@dataclass(frozen=True)
class TrialConfig:
    """One trial's config: where its TOML lies, and the parsed hierarchy."""

    path: Path
    hierarchy: Hierarchy

    @property
    def run_id(self) -> str:
        return self.hierarchy.run.id


def trial_config(
    raw: Mapping[str, Any], directory: Path, run_id: str, rounds: int | None = None
) -> TrialConfig:
    """Write ``raw`` under ``run_id`` (and ``rounds``) to ``directory/config.toml``."""
    mine = with_run(raw, run_id, rounds)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.toml"
    path.write_text(tomli_w.dumps(mine))
    return TrialConfig(path, parse(mine, source=str(path)))
