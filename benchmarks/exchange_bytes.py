"""Bytes on the links of the demo: what a federation sends its parent per exchange (the
backbone only, against the whole model), and what one update costs per codec against float32.

python benchmarks/exchange_bytes.py [worldlm/config/shipped/demo.toml]

Update bytes are every record publishing the update takes (manifest and chunks, as
``worldlm/strategies/compression.py``'s ``update_bytes`` encodes them); a client sends one per round.
"""

from __future__ import annotations

import sys

import torch

from worldlm.strategies.compression import CompressionConfig, update_bytes
from worldlm.config.hierarchy import load
from worldlm.training.corpus import partitions
from worldlm.training.workbench import initial_weights, key_names

#: The codecs compared (name, config).
CODECS: tuple[tuple[str, CompressionConfig], ...] = (
    ("float32", CompressionConfig()),
    ("bf16", CompressionConfig("bf16")),
    ("int8, block 256", CompressionConfig("int8", block=256)),
    ("int8, block 128", CompressionConfig("int8", block=128)),
    ("topk 10%", CompressionConfig("topk", fraction=0.1)),
    ("topk 1%", CompressionConfig("topk", fraction=0.01)),
)


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else "worldlm/config/shipped/demo.toml"
    h = load(path, known_partitions={p.name for p in partitions()})
    weights = initial_weights(h.run)
    total = sum(t.numel() * t.element_size() for t in weights.values() if t.is_floating_point())
    backbone: frozenset[str] = frozenset(weights)
    for fed in h.walk():
        if fed.parent is None:
            continue
        key = key_names(h.run, fed.policy) if fed.policy.key != "fedavg" else frozenset()
        backbone = frozenset(weights) - key
        k_bytes = sum(weights[n].numel() * weights[n].element_size() for n in key)
        print(
            f"{fed.id:>16}: sends {(total - k_bytes) / 1e6:.2f} MB (B) instead of "
            f"{total / 1e6:.2f} MB (B + K): {k_bytes / total:.0%} less"
        )

    # Byte counts do not depend on the values (no entropy coding): any delta of the shapes.
    g = torch.Generator().manual_seed(0)
    delta = {
        n: torch.randn(t.shape, generator=g) for n, t in weights.items() if t.is_floating_point()
    }
    submission = {n: t for n, t in delta.items() if n in backbone}
    client0, sub0 = update_bytes(delta, CODECS[0][1]), update_bytes(submission, CODECS[0][1])
    print(f"\nbytes per update on {path} ({h.run.model}), all records:")
    print(f"{'codec':>16} | {'client update':>14} | ratio | {'federation (B)':>14} | ratio")
    for name, config in CODECS:
        client, sub = update_bytes(delta, config), update_bytes(submission, config)
        print(
            f"{name:>16} | {client:>14,} | {client / client0:.3f} | {sub:>14,} | {sub / sub0:.3f}"
        )


if __name__ == "__main__":
    main()
