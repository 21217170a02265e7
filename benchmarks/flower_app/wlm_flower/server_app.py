"""Flower's FedAvg over the clients' trained weights, timed: each round's end (wall clock)
and its payload bytes each way are appended to the run config's ``out`` file as JSON lines.

Evaluation runs inside the train message, as in WorldLM (``fraction_evaluate = 0``: no
second round trip per round)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from wlm_flower.common import hierarchy, payload_bytes
from worldlm.training.workbench import initial_weights

app = ServerApp()


class TimedFedAvg(FedAvg):
    """FedAvg that writes one line per round: its end time and the bytes it moved."""

    def __init__(self, out: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.out = out
        self.down = 0

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.down = payload_bytes(arrays) * len(messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        up = sum(payload_bytes(r.content["arrays"]) for r in replies if r.has_content())
        result = super().aggregate_train(server_round, replies)
        line = {"round": server_round, "t": time.time(), "down": self.down, "up": up}
        line["replies"] = sum(r.has_content() for r in replies)
        with open(self.out, "a") as f:
            f.write(json.dumps(line) + "\n")
        return result


@app.main()
def main(grid: Grid, context: Context) -> None:
    h = hierarchy(str(context.run_config["config"]))
    n = int(context.run_config["clients"])
    strategy = TimedFedAvg(
        str(context.run_config["out"]),
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=n,
        min_available_nodes=n,
    )
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(initial_weights(h.run)),
        num_rounds=int(context.run_config["rounds"]),
    )
