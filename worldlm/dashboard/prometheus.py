"""Prometheus exposition of the dashboard's figures, read from its state at each scrape.

One :class:`~prometheus_client.CollectorRegistry` per dashboard (never the global one), so
several dashboards, or tests, in one process do not collide. The collector reads the same
:class:`~worldlm.dashboard.state.DashboardState` the web page shows: what Grafana charts
and what the page charts are the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worldlm.dashboard.state import DashboardState

#: The Content-Type of the text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StateCollector(Collector):
    """Gauges and counters per federation, client and level of one run."""

    def __init__(self, state: DashboardState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        s, run = self.state, self.state.run_id
        fed_labels = ["run", "federation"]

        def gauge(name: str, doc: str, labels: list[str] = fed_labels) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"worldlm_{name}", doc, labels=labels)

        round_ = gauge("federation_round", "Current round of the federation.")
        version = gauge("federation_model_version", "Model version of the federation.")
        members = gauge("federation_members", "Members by status.", [*fed_labels, "status"])
        arrived = gauge("federation_barrier_arrived", "Arrivals at the current round's barrier.")
        quorum = gauge("federation_barrier_quorum", "Quorum of the current round.")
        deadline = gauge(
            "federation_round_deadline_timestamp_seconds",
            "When the open round reaches its deadline (Unix time).",
        )
        ppl = gauge(
            "federation_val_ppl",
            "Mean latest validation perplexity of the clients under the federation.",
        )
        stale = gauge(
            "federation_accepted_updates_by_staleness",
            "Accepted updates by staleness (model versions behind).",
            [*fed_labels, "staleness"],
        )
        bytes_ = gauge(
            "federation_bytes",
            "Bytes the aggregator received (in) and sent (out), cumulative.",
            [*fed_labels, "direction"],
        )
        lag = gauge(
            "aggregator_consumer_lag", "Records on the aggregator's partition not yet read."
        )
        eps = gauge("federation_dp_epsilon", "Differential-privacy budget spent (epsilon).")
        leader = gauge(
            "federation_leader_info",
            "1 for the aggregator replica leading the federation (its lease token).",
            [*fed_labels, "leader"],
        )
        accepted = CounterMetricFamily(
            "worldlm_federation_updates_accepted", "Updates accepted.", labels=fed_labels
        )
        for fid in sorted(s.federations):
            view = s.federation_view(fid)
            labels = [run, fid]
            round_.add_metric(labels, view["round"])
            version.add_metric(labels, view["version"])
            counts = {"live": 0, "left": 0, "expired": 0}
            for member in view["members"].values():
                counts[member["status"]] = counts.get(member["status"], 0) + 1
            for status, n in counts.items():
                members.add_metric([*labels, status], n)
            arrived.add_metric(labels, view["arrived"])
            if view["quorum"] is not None:
                quorum.add_metric(labels, view["quorum"])
            if view["deadline_at"] is not None:
                deadline.add_metric(labels, view["deadline_at"])
            if view["ppl_latest"] is not None:
                ppl.add_metric(labels, view["ppl_latest"])
            for staleness, n in view["staleness"]:
                stale.add_metric([*labels, str(staleness)], n)
            bytes_.add_metric([*labels, "in"], view["bytes_in"])
            bytes_.add_metric([*labels, "out"], view["bytes_out"])
            if view["lag"] is not None:
                lag.add_metric(labels, view["lag"])
            if view["epsilon"] is not None:
                eps.add_metric(labels, view["epsilon"])
            accepted.add_metric(labels, view["accepted"])
            if view["leader"]:
                leader.add_metric([*labels, view["leader"]], 1)
        yield from (round_, version, members, arrived, quorum, deadline, ppl, stale, bytes_)
        yield from (lag, eps, accepted, leader)

        client_labels = ["run", "client", "federation"]
        client_ppl = gauge("client_val_ppl", "Latest validation perplexity.", client_labels)
        client_round = gauge("client_round", "Round of the client's latest report.", client_labels)
        client_bytes = gauge(
            "client_bytes", "Bytes received and sent, cumulative.", [*client_labels, "direction"]
        )
        for cid in sorted(s.clients):
            c = s.client_view(cid)
            labels = [run, cid, c["federation"] or ""]
            if c["ppl_latest"] is not None:
                client_ppl.add_metric(labels, c["ppl_latest"])
            if c["round"] is not None:
                client_round.add_metric(labels, c["round"])
            client_bytes.add_metric([*labels, "in"], c["bytes_in"])
            client_bytes.add_metric([*labels, "out"], c["bytes_out"])
        yield from (client_ppl, client_round, client_bytes)

        level_labels = ["run", "level"]
        level_updates = CounterMetricFamily(
            "worldlm_level_updates",
            "Updates accepted by the aggregators of a level.",
            labels=level_labels,
        )
        level_bytes = gauge(
            "level_bytes",
            "Bytes in and out of a level's aggregators.",
            [*level_labels, "direction"],
        )
        for k, level in s.levels().items():
            level_updates.add_metric([run, str(k)], level["updates"])
            level_bytes.add_metric([run, str(k), "in"], level["bytes_in"])
            level_bytes.add_metric([run, str(k), "out"], level["bytes_out"])
        yield from (level_updates, level_bytes)

        rejected = CounterMetricFamily(
            "worldlm_rejected_inputs",
            "Dead letters by federation and reason.",
            labels=["run", "federation", "reason"],
        )
        for (fid, reason), n in sorted(s.rejected_by_reason.items()):
            rejected.add_metric([run, fid, reason], n)
        yield rejected

        records = CounterMetricFamily(
            "worldlm_dashboard_records",
            "Records the dashboard folded, by kind.",
            labels=["run", "kind"],
        )
        for kind, n in sorted(s.counters.items()):
            records.add_metric([run, kind], n)
        yield records


def registry_for(state: DashboardState) -> CollectorRegistry:
    """A fresh registry exposing ``state``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(state))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus's text format."""
    return generate_latest(registry)
