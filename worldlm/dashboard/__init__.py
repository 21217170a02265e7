"""A live web dashboard of a run, fed only by its Kafka topics and Redis (never by participants).

* :mod:`worldlm.dashboard.state` — the pure view model (folds messages and Redis snapshots);
* :mod:`worldlm.dashboard.stream` — the follower that feeds it from Kafka and Redis;
* :mod:`worldlm.dashboard.server` — HTTP: the page, SSE, JSON, Prometheus;
* :mod:`worldlm.dashboard.prometheus` — the Prometheus collector.
"""

from __future__ import annotations

from worldlm.dashboard.server import Dashboard
from worldlm.dashboard.state import DashboardState

__all__ = ["Dashboard", "DashboardState"]
