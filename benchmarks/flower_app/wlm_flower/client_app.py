"""A WorldLM client's round as a Flower ClientApp: evaluate the received model, train H local
steps from it (the same Learner, model, data, AdamW and clipping `worldlm run` uses), and
reply with the trained weights and the example count FedAvg weighs them by.

Flower 1.42 runs one ClientApp process per message, so every round builds the Learner again
(model, tokenizer, data shard): that is Flower's cost model, measured as it is."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from wlm_flower.common import hierarchy
from worldlm.training.learner import Learner

torch.set_num_threads(1)  # as `worldlm run` does
app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    h = hierarchy(str(context.run_config["config"]))
    client = sorted(h.clients)[int(context.node_config["partition-id"])]
    learner = Learner(h, client)
    received = msg.content["arrays"].to_torch_state_dict()
    done = learner.round(received, final=False)
    assert done.result is not None
    trained = {n: received[n] + done.result.delta[n] for n in received}
    metrics = {"num-examples": done.result.num_samples, "train_loss": done.result.train_loss}
    if done.evaluation is not None:
        metrics["val_loss"] = done.evaluation.loss
    content = RecordDict({"arrays": ArrayRecord(trained), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)
