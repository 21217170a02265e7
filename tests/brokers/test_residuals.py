"""The residual-embedding cache against a real redis-server: parts, rounds, a missing entry."""

from __future__ import annotations

import pytest
import torch

from brokers.embedded import Servers
from brokers.state import RedisState
from schemas.keyspace import Keyspace


async def test_residual_larger_than_one_value_round_trips_in_parts(state: RedisState) -> None:
    g = torch.Generator().manual_seed(3)
    tensors = {
        "layers.3.w": torch.randn(256, 256, generator=g),  # 256 KiB > 64 KiB per value
        "norm.weight": torch.randn(256, generator=g).to(torch.bfloat16),
    }
    assert await state.residuals.put("eu", 4, tensors)
    raw = await state.redis.hgetall(state.keyspace.residual("eu"))
    assert int(raw[b"parts"]) > 1
    got = await state.residuals.get("eu")
    assert got is not None and got.round == 4 and got.federation == "eu"
    for name, t in tensors.items():
        assert torch.equal(got.tensors[name], t)


async def test_residual_of_older_round_does_not_replace_newer(state: RedisState) -> None:
    await state.residuals.put("eu", 7, {"k": torch.ones(3)})
    assert not await state.residuals.put("eu", 6, {"k": torch.zeros(3)})
    got = await state.residuals.get("eu")
    assert got is not None and got.round == 7 and torch.equal(got.tensors["k"], torch.ones(3))
    assert await state.residuals.get("missing") is None


async def test_residuals_of_an_unstarted_state_raise_clear_error(
    servers: Servers, run_id: str
) -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = RedisState(servers.redis, Keyspace(run_id)).residuals
