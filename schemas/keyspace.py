"""Redis key names, all under one run namespace, in one place.

Every key written under these names gets a TTL from the writer (see :mod:`brokers.state`),
so an abandoned run cleans itself up.
The glob patterns at the end name key families for Redis ACLs (:mod:`worldlm.security.acl`): ids
cannot hold glob characters or ':' (``check_name``), so one federation's pattern never
matches another's keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.topics import check_name


@dataclass(frozen=True)
class Keyspace:
    """The Redis keys of one run."""

    run: str
    prefix: str = "worldlm"

    def __post_init__(self) -> None:
        check_name("run id", self.run)
        check_name("key prefix", self.prefix)

    @property
    def ns(self) -> str:
        # The braces are a Redis Cluster hash tag: every key of a run lives in one slot,
        # so multi-key scripts work on a cluster too.
        return f"{self.prefix}:{{{self.run}}}"

    def barrier_arrivals(self, federation: str, round: int) -> str:
        """Set of members that arrived in a round."""
        return f"{self.ns}:barrier:{federation}:{round}:arrivals"

    def barrier_state(self, federation: str, round: int) -> str:
        """Hash: quorum, closed flag, close reason, who closed it."""
        return f"{self.ns}:barrier:{federation}:{round}:state"

    def members(self, federation: str) -> str:
        """Sorted set: member -> heartbeat expiry (ms, server clock)."""
        return f"{self.ns}:members:{federation}"

    def member_info(self, federation: str) -> str:
        """Hash: member -> role and join time (JSON)."""
        return f"{self.ns}:members:{federation}:info"

    def model_version(self, federation: str) -> str:
        """Hash: current model version and where its broadcast lies (topic, partition, offset)."""
        return f"{self.ns}:model:{federation}"

    def staleness(self, federation: str) -> str:
        """Hash: member -> staleness of its latest accepted update."""
        return f"{self.ns}:staleness:{federation}"

    def stale_updates(self, federation: str) -> str:
        """Hash: member -> count of its accepted updates that were stale (s > 0)."""
        return f"{self.ns}:staleness:{federation}:count"

    def leader(self, federation: str) -> str:
        """String with a TTL: the token of the aggregator replica that leads a federation."""
        return f"{self.ns}:leader:{federation}"

    def residual(self, federation: str) -> str:
        """Hash: the residual embedding's manifest (round, generation, parts, hash)."""
        return f"{self.ns}:residual:{federation}"

    def residual_part(self, federation: str, generation: str, index: int) -> str:
        """String: one part of a residual embedding's payload."""
        return f"{self.ns}:residual:{federation}:{generation}:{index}"

    def revoked_keys(self) -> str:
        """List: the run's revocation chain, admin-signed entries appended in order
        (``schemas.revocation``, ``brokers.revocations``)."""
        return f"{self.ns}:keys:revocations"

    # -- glob patterns of key families, for Redis ACLs (ids hold no glob characters) ------

    def everything(self) -> str:
        """Every key of the run."""
        return f"{self.ns}:*"

    def barriers(self, federation: str) -> str:
        """Every round barrier (arrivals and state) of ``federation``."""
        return f"{self.ns}:barrier:{federation}:*"

    def residual_parts(self, federation: str) -> str:
        """Every part of every generation of ``federation``'s residual embedding."""
        return f"{self.residual(federation)}:*"
