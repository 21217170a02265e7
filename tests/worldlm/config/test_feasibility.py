"""Member-level DP's feasibility check: the noise-to-update ratio sigma*sqrt(d)/n on numbers,
a config whose population cannot carry its noise refused at load with the population it
would need, the same config loaded when forced, and d counted per edge (a client sends every
coordinate, a sub-federation its backbone only)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from worldlm.config.feasibility import (
    members_needed,
    members_per_round,
    noise_ratio,
    predict,
    private_coordinates,
)
from worldlm.config.hierarchy import ConfigError, ScheduleConfig, load, parse
from worldlm.training.workbench import initial_weights, key_names

#: The languages-dp study: 12 members a federation, sigma 1.56, the 1.18M-parameter tiny model.
SIGMA = 1.56
TINY = 1_180_800  # floating coordinates of the tiny llama's canonical state dict


def latin(members: int, dp: dict[str, Any] | None = None, **policy: Any) -> dict[str, Any]:
    """root -> latin, ``members`` clients of latin on shards of two partitions, DP on latin."""
    half = members // 2
    clients = {
        f"{lang}-{i}": {"federation": "latin", "partition": f"lang-{lang}"}
        for lang, count in (("es", half), ("fr", members - half))
        for i in range(count)
    }
    body: dict[str, Any] = {"parent": "root", **policy}
    if dp is not None:
        body["dp"] = dp
    return {
        "run": {"id": "dp", "rounds": 2},
        "federations": {"root": {}, "latin": body},
        "clients": clients,
    }


def toml(raw: dict[str, Any]) -> str:
    """The raw config of :func:`latin` as a TOML file (flat tables, scalar values)."""
    lines = ["[run]", 'id = "dp"', "rounds = 2", "[federations.root]", "[federations.latin]"]
    latin_table = raw["federations"]["latin"]
    lines.append('parent = "root"')
    lines.append("[federations.latin.dp]")
    for key, value in latin_table["dp"].items():
        lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else value}")
    for cid, table in raw["clients"].items():
        lines += [f"[clients.{cid}]", f'federation = "{table["federation"]}"']
        lines.append(f'partition = "{table["partition"]}"')
    return "\n".join(lines) + "\n"


def test_the_ratio_is_sigma_sqrt_d_over_n_and_the_languages_study_is_141x() -> None:
    assert noise_ratio(SIGMA, 1_180_000, 12) == pytest.approx(141.2, abs=0.05)
    assert noise_ratio(1.0, 10_000, 100) == pytest.approx(1.0)
    assert noise_ratio(0.0, 10**9, 1) == 0.0
    # the fewest members that bring it to 1: sigma*sqrt(d) = 1694.6 -> 1695
    needed = members_needed(SIGMA, 1_180_000)
    assert needed == 1695
    assert noise_ratio(SIGMA, 1_180_000, needed) <= 1.0 < noise_ratio(SIGMA, 1_180_000, needed - 1)
    assert members_needed(1.0, 10_000) == 100  # exactly on the bound: 100 is enough
    assert members_needed(1.0, 10_000, max_ratio=4.0) == 25
    assert members_needed(0.0, TINY) == 1


def test_members_per_round_is_the_sync_quorum_or_the_async_buffer() -> None:
    assert members_per_round(ScheduleConfig(), 12) == 12
    assert members_per_round(ScheduleConfig(quorum=0.5), 5) == 3
    assert members_per_round(ScheduleConfig(quorum=0.25, min_quorum=4), 8) == 4
    assert members_per_round(ScheduleConfig(min_quorum=9), 3) == 3  # closes at the deadline
    assert members_per_round(ScheduleConfig(mode="async", buffer=5), 12) == 5


def test_dp_on_twelve_members_is_refused_at_load_naming_the_population_it_needs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "dp.toml"
    path.write_text(toml(latin(12, {"clip_norm": 9.96, "noise_multiplier": SIGMA})))
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    needed = members_needed(SIGMA, TINY)
    assert message == (
        f"{path}: federations.latin.dp: noise 141x a clipped update in the average (sigma 1.56, "
        f"{TINY:,} private coordinates, 12 members a round): this federation needs at least "
        f"{needed:,} members a round, fewer private coordinates or a smaller noise_multiplier; "
        "set dp.force = true to run anyway"
    )
    assert needed == 1696 and "\n" not in message


def test_the_refused_config_loads_with_force_and_says_so_in_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "dp.toml"
    path.write_text(toml(latin(12, {"noise_multiplier": SIGMA, "force": True})))
    with capture_logs() as logs:
        h = load(path)
    assert h.federations["latin"].policy.dp is not None
    forced = [e for e in logs if e["event"] == "dp_forced"]
    assert len(forced) == 1 and forced[0]["log_level"] == "warning"
    assert forced[0]["federation"] == "latin" and forced[0]["source"] == str(path)
    assert forced[0]["members_per_round"] == 12 and forced[0]["members_needed"] == 1696
    assert forced[0]["noise_ratio"] == pytest.approx(141.3, abs=0.1)


def test_enough_members_a_small_sigma_or_a_higher_bound_load_without_force() -> None:
    needed = members_needed(SIGMA, TINY)
    with capture_logs() as logs:
        crowd = parse(latin(needed, {"noise_multiplier": SIGMA}))
        parse(latin(12, {"noise_multiplier": 0.01}))  # 0.01 * 1087 / 12 = 0.9
        parse(latin(12, {"noise_multiplier": SIGMA, "max_noise_ratio": 150.0}))
        parse(latin(2, {"noise_multiplier": 0.0}))  # no noise, nothing to drown
    assert len(crowd.federations["latin"].clients) == needed
    assert not [e for e in logs if e["event"] == "dp_forced"]
    with pytest.raises(ConfigError, match=r"latin\.dp: noise 1\.00x"):
        parse(latin(needed - 1, {"noise_multiplier": SIGMA}))
    with pytest.raises(ConfigError, match=r"for noise at most 100x"):
        parse(latin(12, {"noise_multiplier": SIGMA, "max_noise_ratio": 100.0}))
    with pytest.raises(ConfigError, match=r"federations\.latin\.dp\.max_noise_ratio"):
        parse(latin(12, {"noise_multiplier": SIGMA, "max_noise_ratio": 0.0}))


def test_a_quorum_below_one_counts_the_members_a_round_closes_with() -> None:
    raw = latin(12, {"noise_multiplier": 0.01}, schedule={"quorum": 0.5})
    with pytest.raises(ConfigError, match=r"6 members a round"):
        parse(raw)  # 0.01 * 1087 / 6 = 1.8


def test_a_client_edge_counts_every_coordinate_a_client_sends() -> None:
    h = parse(latin(4, {"noise_multiplier": 0.0}))
    sent = sum(t.numel() for t in initial_weights(h.run).values() if t.is_floating_point())
    assert private_coordinates(h, "latin") == sent == TINY


def test_a_federation_edge_counts_the_backbone_only() -> None:
    """Sub-federations keep their key layers K: only B crosses the edge to their parent."""
    raw = latin(4, {"noise_multiplier": 0.0})
    raw["federations"]["slavic"] = {"parent": "root"}
    raw["clients"] |= {f"ru-{i}": {"federation": "slavic", "partition": "lang-ru"} for i in (0, 1)}
    raw["federations"]["root"]["dp"] = {"noise_multiplier": 0.0}
    h = parse(raw)
    weights = initial_weights(h.run)
    key = key_names(h.run, h.federations["latin"].policy)
    backbone = sum(t.numel() for n, t in weights.items() if n not in key)
    assert private_coordinates(h, "root") == backbone < private_coordinates(h, "latin")
    prediction = predict(h, "root")
    assert prediction is not None and prediction.coordinates == backbone
    assert prediction.members == 2 and prediction.ratio == 0.0

    # a child without key layers (key = "fedavg") sends everything: the union is all of it
    raw["federations"]["slavic"]["key"] = "fedavg"
    assert private_coordinates(parse(raw), "root") == TINY
    # the refusal names the backbone count: two sub-federations cannot carry sigma 1
    raw["federations"]["root"]["dp"] = {"noise_multiplier": 1.0}
    raw["federations"]["slavic"]["key"] = "attention"
    expected = math.ceil(math.sqrt(backbone))
    with pytest.raises(ConfigError, match=rf"{backbone:,} private .* at least {expected:,} "):
        parse(raw, source="tree.toml")


def test_under_lora_an_edge_counts_the_adapters_only() -> None:
    """Only adapters travel under LoRA: the noise spreads over them, not the frozen base."""
    lora = {"rank": 4, "targets": ["q_proj", "v_proj"]}
    raw = latin(4, {"noise_multiplier": 0.0}) | {"defaults": {"lora": lora}}
    h = parse(raw)
    sent = sum(t.numel() for t in initial_weights(h.run).values() if t.is_floating_point())
    assert 0 < private_coordinates(h, "latin") == sent < TINY / 50
    # the refusal names the adapters' count and the population they need
    raw = latin(12, {"noise_multiplier": SIGMA}) | {"defaults": {"lora": lora}}
    needed = math.ceil(SIGMA * math.sqrt(sent))
    with pytest.raises(ConfigError, match=rf"{sent:,} private .* at least {needed:,} "):
        parse(raw, source="lora.toml")


def test_a_model_or_key_pattern_the_count_cannot_build_is_a_config_error(
    tmp_path: Path,
) -> None:
    raw = latin(4, {"noise_multiplier": 1.0})
    raw["run"]["model"] = "huge"
    with pytest.raises(ConfigError, match=r"^x\.toml: run\.model: unknown model preset"):
        parse(raw, source="x.toml")
    raw["run"]["init"] = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"^x\.toml: run\.init: no pretrained model"):
        parse(raw, source="x.toml")
    raw = latin(4, None)
    raw["federations"]["root"]["dp"] = {"noise_multiplier": 1.0}
    raw["federations"]["latin"]["key_layers"] = ["model.layers.99.*"]
    with pytest.raises(ConfigError, match=r"^x\.toml: federations\.latin\.key_layers: "):
        parse(raw, source="x.toml")
