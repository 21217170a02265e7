"""Bytes a federation sends its parent per exchange: the backbone only, against the whole model.

python benchmarks/exchange_bytes.py [worldlm/configs/demo.toml]
"""

from __future__ import annotations

import sys

from worldlm.config import load
from worldlm.training.corpus import partitions
from worldlm.training.workbench import initial_weights, key_names


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else "worldlm/configs/demo.toml"
    h = load(path, known_partitions={p.name for p in partitions()})
    weights = initial_weights(h.run)
    total = sum(t.numel() * t.element_size() for t in weights.values() if t.is_floating_point())
    for fed in h.walk():
        if fed.parent is None:
            continue
        key = key_names(h.run, fed.policy) if fed.policy.key != "fedavg" else frozenset()
        k_bytes = sum(weights[n].numel() * weights[n].element_size() for n in key)
        print(
            f"{fed.id:>16}: sends {(total - k_bytes) / 1e6:.2f} MB (B) instead of "
            f"{total / 1e6:.2f} MB (B + K): {k_bytes / total:.0%} less"
        )


if __name__ == "__main__":
    main()
