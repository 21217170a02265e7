"""Compressed edges: the config, error feedback (the decoded updates sum to the true ones up
to one residual), a federation's submission compressed in its parent's codec and carried
through a restart, and the bytes a demo client's update costs per codec."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.worldlm.participants.helpers import hierarchy, raw_config
from worldlm.strategies.compression import Codec, CompressionConfig, Compressor, update_bytes
from worldlm.config.hierarchy import ConfigError, Hierarchy, load, parse
from worldlm.participants.checkpoint import Checkpoint
from worldlm.core.federation import FederationCore, Offer
from worldlm.training.workbench import federation_key, initial_weights

DEMO = Path(__file__).parents[2] / "worldlm" / "configs" / "demo.toml"


# -- config ----------------------------------------------------------------------------------


def test_a_federation_names_the_codec_its_members_send_in() -> None:
    h = tree(root={"compression": {"codec": "int8", "block": 128}})
    assert h.federations["root"].policy.compression == CompressionConfig("int8", 128)
    assert h.federations["latin"].policy.compression.codec == "none"  # the default: float32


@pytest.mark.parametrize(
    ("compression", "where"),
    [
        ({"codec": "int8", "block": 0}, "federations.root.compression.block: must be in"),
        ({"codec": "topk", "fraction": 0.0}, "federations.root.compression.fraction"),
        ({"codec": "zstd"}, "federations.root.compression.codec"),
        ({"codec": "int8", "ratio": 2}, "federations.root.compression"),
    ],
)
def test_a_bad_compression_table_is_a_config_error(compression: dict[str, Any], where: str) -> None:
    raw = raw_config(
        "c", federations={"root": {"compression": compression}}, clients={"fr-0": ("root", "x")}
    )
    with pytest.raises(ConfigError, match=where):
        parse(raw)


# -- error feedback --------------------------------------------------------------------------


def rounds(compressor: Compressor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Send ``n`` random updates; (sum of true updates, sum of decoded ones)."""
    g = torch.Generator().manual_seed(0)
    true, decoded = torch.zeros(1000), torch.zeros(1000)
    for _ in range(n):
        d = torch.randn(1000, generator=g) * 1e-2
        sent = compressor.send({"w": d})
        true, decoded = true + d, decoded + sent.decoded["w"]
    return true, decoded


@pytest.mark.parametrize("codec", ["bf16", "int8", "topk"])
def test_error_feedback_carries_what_the_codec_dropped_into_the_next_update(codec: Codec) -> None:
    c = Compressor(CompressionConfig(codec, block=128, fraction=0.05))
    true, decoded = rounds(c, 40)
    # Nothing is lost: what has not arrived yet is exactly the residual the sender holds.
    assert torch.allclose(decoded + c.residual["w"], true, atol=1e-6)


def test_with_feedback_int8_error_stays_within_one_rounding_step() -> None:
    with_ef = Compressor(CompressionConfig("int8", block=128))
    without = Compressor(CompressionConfig("int8", block=128, error_feedback=False))
    true, decoded = rounds(with_ef, 40)
    true_no, decoded_no = rounds(without, 40)
    assert torch.equal(true, true_no)
    step = 4e-2 / 127  # scale of a block of N(0, 1e-2) values: absmax ~ 4 sigma
    assert (decoded - true).abs().max() <= step
    # without it, 40 rounding errors add up
    assert (decoded_no - true).norm() > 3 * (decoded - true).norm()
    assert without.residual == {}


def test_topk_with_feedback_delivers_what_it_once_dropped() -> None:
    with_ef = Compressor(CompressionConfig("topk", fraction=0.05))
    without = Compressor(CompressionConfig("topk", fraction=0.05, error_feedback=False))
    true, decoded = rounds(with_ef, 40)
    _, decoded_no = rounds(without, 40)
    assert (decoded - true).norm() < 0.5 * (decoded_no - true).norm()


def test_compress_does_not_move_the_residual_until_commit() -> None:
    c = Compressor(CompressionConfig("int8"))
    c.send({"w": torch.randn(300)})
    before = dict(c.residual)
    first, second = c.compress({"w": torch.ones(300)}), c.compress({"w": torch.ones(300)})
    assert torch.equal(first.wire["w"], second.wire["w"]) and c.residual == before
    c.commit(first)
    assert torch.equal(c.residual["w"], first.carry["w"])


def test_no_codec_sends_the_update_itself() -> None:
    d = {"w": torch.randn(10)}
    sent = Compressor(CompressionConfig()).send(d)
    assert sent.wire["w"] is d["w"] and sent.decoded["w"] is d["w"] and sent.codecs == {}


# -- a federation's submission ---------------------------------------------------------------


IDS = itertools.count()


def tree(**tables: dict[str, Any]) -> Hierarchy:
    return hierarchy(
        "ef",
        federations={
            "root": tables.get("root", {}),
            "latin": {"parent": "root", **tables.get("latin", {})},
        },
        clients={"fr-0": ("latin", "lang-fr")},
        defaults={"residual": {"links": "none"}},
    )


def core(h: Hierarchy, fid: str = "latin") -> FederationCore:
    return FederationCore(
        h, fid, initial_weights(h.run), key=federation_key(h, fid), new_id=lambda: f"id-{next(IDS)}"
    )


def train_round(c: FederationCore, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    d = {n: torch.randn(t.shape, generator=g) * 1e-2 for n, t in sorted(c.weights.items())}
    c.offer(Offer("fr-0", f"u-{next(IDS)}", d, 10, c.meta.version))
    c.close("quorum", [], 1)


def test_a_federation_submits_in_its_parents_codec_and_commits_when_the_parent_answers(
    tmp_path: Path,
) -> None:
    h = tree(root={"compression": {"codec": "int8", "block": 128}})
    c = core(h)
    train_round(c, 0)
    s = c.submission()
    assert s.codecs and all(codec.codec == "int8" for codec in s.codecs.values())
    assert {w.dtype for n, w in s.wire.items() if n in s.codecs} == {torch.int8}
    assert not set(s.delta) & c.key and set(s.codecs) == set(s.delta)
    again = c.submission()  # a resubmission (after a restart) is the same update, bit for bit
    assert again.update_id == s.update_id
    assert all(torch.equal(again.wire[n], s.wire[n]) for n in s.wire)
    assert c.compressor.residual == {}  # not committed while the parent has not answered

    c.take_parent(initial_weights(h.run), 1, final=False)
    residual = c.compressor.residual
    assert set(residual) == set(s.codecs) and any(t.abs().sum() > 0 for t in residual.values())

    # The residual survives a restart: the checkpoint carries it.
    checkpoint = Checkpoint(tmp_path / "latin")
    checkpoint.save_snapshot(c.snapshot())
    train_round(c, 1)
    restarted = core(h)
    snapshot = checkpoint.load_snapshot()
    assert snapshot is not None
    restarted.restore(snapshot)
    train_round(restarted, 1)
    a, b = c.submission(), restarted.submission()
    assert all(torch.equal(a.wire[n], b.wire[n]) for n in a.wire)


def test_a_federation_whose_parent_takes_float32_submits_the_delta_itself() -> None:
    h = tree(latin={"compression": {"codec": "int8"}})  # latin's own members compress
    c = core(h)
    train_round(c, 0)
    s = c.submission()
    assert s.codecs == {} and all(s.wire[n] is s.delta[n] for n in s.delta)


# -- bytes -----------------------------------------------------------------------------------


def test_a_demo_clients_int8_update_is_at_most_0_27_of_float32() -> None:
    """Every record a client publishes (manifest and chunks), on the demo config's model."""
    run = load(DEMO).run
    g = torch.Generator().manual_seed(0)
    delta = {
        n: torch.randn(t.shape, generator=g)
        for n, t in initial_weights(run).items()
        if t.is_floating_point()
    }
    plain = update_bytes(delta, CompressionConfig())
    codecs: tuple[Codec, ...] = ("bf16", "int8", "topk")
    ratios = {codec: update_bytes(delta, CompressionConfig(codec)) / plain for codec in codecs}
    assert ratios["int8"] <= 0.27
    assert ratios["bf16"] <= 0.51
    assert ratios["topk"] <= 0.21
