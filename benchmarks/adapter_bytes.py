"""Bytes per exchange with LoRA adapters against the whole model, per federation of a config.

python benchmarks/adapter_bytes.py BASE [worldlm/config/shipped/demo.toml]

BASE is a pretrained model directory (``worldlm pretrain --config CONFIG --out BASE``). The
config starts from it with the fine-tuning study's adapters (rank 8, alpha 16 on the q, k, v
and o projections: ``worldlm/lab/studies/finetune.py``). For each federation: one client
update and the federation's submission to its parent (B only), every record, float32, as
``worldlm/lab/studies/exchange.py`` counts them.
"""

from __future__ import annotations

import sys
import tomllib

from worldlm.config.hierarchy import parse
from worldlm.lab.studies.exchange import exchange_bytes
from worldlm.lab.studies.finetune import LORA, with_base
from worldlm.training.corpus import partitions


def main() -> None:
    base = sys.argv[1]
    path = sys.argv[2] if len(sys.argv) > 2 else "worldlm/config/shipped/demo.toml"
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    h = parse(
        with_base(raw, base, dict(LORA)),
        source=path,
        known_partitions={p.name for p in partitions()},
    )
    print(f"bytes per exchange on {path} from {base}, LoRA {dict(LORA)}, all records, float32:")
    print(f"{'federation':>12} | {'client update':>24} | {'submission to parent (B)':>28}")
    for fed in h.walk():
        sizes = exchange_bytes(h, fed.id)
        client = f"{sizes['client_update']:,} / {sizes['full_client_update']:,}"
        sub = f"{sizes['submission']:,} / {sizes['full_submission']:,}"
        print(f"{fed.id:>12} | {client:>24} | {sub if fed.parent else '(root)':>28}")
    print("(each cell: adapters / whole model)")


if __name__ == "__main__":
    main()
