"""Fault campaign: ``worldlm chaos`` as a benchmark script (the same options, the same table).

    python benchmarks/faults.py [CONFIG] [--scenario NAME ...] [--kill-trials 20]
        [--churn-rounds 5] [--records 10000] [--restart-trials 1] [--out out/faults]

Aggregators SIGKILLed at a random point of a round and restarted from their checkpoints,
clients churning (30% killed and restarted every round), bad input from an outside producer
during a live run, Redis and the broker restarted mid-run; every trial on real processes and
the embedded servers, bounded in time. See ``worldlm/chaos/`` and docs/faults.md.
"""

from __future__ import annotations

import sys

from worldlm.cli import app

if __name__ == "__main__":
    app(["chaos", *sys.argv[1:]])
