"""What the ServerApp and the ClientApp share: the WorldLM config they both load."""

from __future__ import annotations

from worldlm.config.hierarchy import Hierarchy, load


def hierarchy(path: str) -> Hierarchy:
    """The flat WorldLM config benchmarks/flower.py wrote (the one `worldlm run` runs)."""
    return load(path)


def payload_bytes(record: object) -> int:
    """Bytes of the arrays in a Flower ArrayRecord (what travels, framing aside)."""
    return sum(len(array.data) for array in record.values())  # type: ignore[attr-defined]
