"""Aggregator checkpoints: model, strategy state, round, offsets and pending updates on disk.

Tensors go to safetensors files, everything else to JSON; every file is written to a
temporary name and renamed into place, so a SIGKILL never leaves a torn file. The model goes
to a new file each time, named by the JSON part written after it, and the previous one is
removed only then: a SIGKILL between the two leaves the previous pair whole, never a new model
with the old round (which a restart would fold the round's updates into again). Pending
updates (accepted in the open round) are saved one file each *before* the offset that
delivered them is recorded, so a restarted aggregator re-reads at most what it can
deduplicate by update id.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from worldlm.core.steps import Meta

if TYPE_CHECKING:
    from worldlm.core.rounds import Snapshot


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_tensors(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    data = {n: t.detach().contiguous().cpu() for n, t in tensors.items()}
    _atomic(path, lambda p: save_file(data, str(p), metadata=metadata))


def flatten_state(
    state: Mapping[str, Any], prefix: str = ""
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Split a nested strategy state into JSON-able data and named tensors."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[path] = value
            return {"__tensor__": path}
        if isinstance(value, Mapping):
            return {str(k): walk(v, f"{path}/{k}") for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(value)]
        return value

    return walk(state, prefix), tensors


def unflatten_state(data: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(data, dict):
        if set(data) == {"__tensor__"}:
            return tensors[data["__tensor__"]]
        return {k: unflatten_state(v, tensors) for k, v in data.items()}
    if isinstance(data, list):
        return [unflatten_state(v, tensors) for v in data]
    return data


class Checkpoint:
    """One aggregator's checkpoint directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "pending").mkdir(exist_ok=True)
        self._model_file: str | None = None  # the model file the current JSON part names
        self._strategy: Any = None  # the JSON part of the strategy state in that file
        self._models = max(
            (_model_number(p) for p in self.dir.glob("model-*.safetensors")), default=0
        )

    @property
    def exists(self) -> bool:
        return (self.dir / "meta.json").is_file()

    def save_pending(self, update_id: str, delta: Mapping[str, torch.Tensor]) -> None:
        save_tensors(self.dir / "pending" / f"{update_id}.safetensors", delta)

    def load_pending(self, update_id: str) -> dict[str, torch.Tensor]:
        return load_file(str(self.dir / "pending" / f"{update_id}.safetensors"))

    def drop_pending(self, keep: set[str]) -> None:
        for path in (self.dir / "pending").glob("*.safetensors"):
            if path.stem not in keep:
                path.unlink(missing_ok=True)

    def save_meta(self, meta: Meta) -> None:
        if self._model_file is not None:
            meta.model_file = self._model_file
        text = json.dumps(asdict(meta))
        _atomic(self.dir / "meta.json", lambda p: p.write_text(text))

    def save_model(
        self,
        weights: Mapping[str, torch.Tensor],
        base: Mapping[str, torch.Tensor],
        strategy_tensors: Mapping[str, torch.Tensor],
        feedback: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        tensors = {f"w/{n}": t for n, t in weights.items()}
        tensors |= {f"base/{n}": t for n, t in base.items()}
        tensors |= {f"s/{n}": t for n, t in strategy_tensors.items()}
        tensors |= {f"ef/{n}": t for n, t in (feedback or {}).items()}
        self._models += 1
        name = f"model-{self._models}.safetensors"
        save_tensors(self.dir / name, tensors)
        self._model_file = name  # current once the JSON part naming it is written

    def load(
        self,
    ) -> tuple[Meta, dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(meta, weights, base weights, strategy tensors)."""
        meta, parts = self._load()
        return meta, parts["w"], parts["base"], parts["s"]

    def _load(self) -> tuple[Meta, dict[str, dict[str, torch.Tensor]]]:
        """Meta, and the model file's tensors by prefix (w, base, s, ef: error feedback)."""
        meta = Meta(**json.loads((self.dir / "meta.json").read_text()))
        self._model_file, self._strategy = meta.model_file, meta.strategy
        parts: dict[str, dict[str, torch.Tensor]] = {p: {} for p in ("w", "base", "s", "ef")}
        for name, tensor in load_file(str(self.dir / meta.model_file)).items():
            prefix, _, rest = name.partition("/")
            if prefix in parts:
                parts[prefix][rest] = tensor
        return meta, parts

    def save_snapshot(self, snapshot: Snapshot, *, model: bool = True) -> None:
        """Write a federation core's snapshot: the model and strategy state (``model``), then
        the JSON part (round, offsets, pending ids), which is what makes it current."""
        if model:
            data, tensors = flatten_state(snapshot.strategy)
            self.save_model(snapshot.weights, snapshot.base, tensors, snapshot.feedback)
            self._strategy = data
        # The strategy state's tensors are in the model file: a JSON part written alone
        # names the same state (the core's own meta does not carry it).
        snapshot.meta.strategy = self._strategy
        self.save_meta(snapshot.meta)
        if model:
            for path in self.dir.glob("model*.safetensors"):
                if path.name != self._model_file:
                    path.unlink(missing_ok=True)

    def load_snapshot(self) -> Snapshot | None:
        """The last snapshot written here, with its pending updates; None if there is none."""
        from worldlm.core.rounds import Pending, Snapshot

        if not self.exists:
            return None
        meta, parts = self._load()
        weights, base, strategy_tensors = parts["w"], parts["base"], parts["s"]
        pending = [
            Pending(p["id"], p["sender"], p["samples"], p["base"], self.load_pending(p["id"]))
            for p in meta.pending
        ]
        strategy = unflatten_state(meta.strategy, strategy_tensors) if meta.strategy else {}
        return Snapshot(meta, weights, base, strategy, pending, parts["ef"])


def _model_number(path: Path) -> int:
    number = path.stem.removeprefix("model-")
    return int(number) if number.isdigit() else 0
