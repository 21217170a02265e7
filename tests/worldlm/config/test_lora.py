"""``[run] init`` and the ``lora`` policy: validated at load, one line per mistake."""

from __future__ import annotations

import pytest

from tests.worldlm.participants.helpers import raw_config
from worldlm.config.hierarchy import ConfigError, LoraConfig, parse


def _raw(**tables: dict[str, object]) -> dict[str, object]:
    return raw_config(
        "lora",
        federations={"root": {}, "a": {"parent": "root", **tables.get("a", {})}, "b": {
            "parent": "root", **tables.get("b", {})}},
        clients={"x": ("a", "lang-es"), "y": ("b", "lang-fr")},
        defaults=tables.get("defaults", {}),
    )  # fmt: skip


def test_a_lora_policy_in_defaults_gives_the_run_its_adapter_shape() -> None:
    h = parse(_raw(defaults={"lora": {"rank": 4, "targets": ["q_proj"]}}))
    assert h.run.lora == LoraConfig(rank=4, targets=("q_proj",))
    assert all(f.policy.lora == h.run.lora for f in h.federations.values())
    assert parse(_raw()).run.lora is None  # no policy: full fine-tuning


def test_federations_may_differ_in_alpha_but_not_in_the_adapters_shape() -> None:
    lora = {"rank": 4, "targets": ["q_proj"]}
    h = parse(_raw(defaults={"lora": lora}, a={"lora": {"alpha": 32}}))
    assert h.federations["a"].policy.lora.alpha == 32  # type: ignore[union-attr]
    assert h.federations["b"].policy.lora.alpha == 16  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=r"federations\.\*\.lora: every federation trains"):
        parse(_raw(defaults={"lora": lora}, a={"lora": {"rank": 8}}))
    with pytest.raises(ConfigError, match=r"or none does"):
        parse(_raw(a={"lora": lora}))


def test_lora_mistakes_are_one_line_naming_the_place() -> None:
    with pytest.raises(ConfigError, match=r"^<config>: defaults\.lora\.rank: must be at least 1"):
        parse(_raw(defaults={"lora": {"rank": 0}}))
    with pytest.raises(ConfigError, match=r"federations\.a\.lora\.targets: name at least one"):
        parse(_raw(a={"lora": {"targets": []}}))
    raw = _raw()
    raw["run"]["lora"] = {"rank": 4}  # type: ignore[index]
    with pytest.raises(ConfigError, match=r"run\.lora: LoRA is a federation policy"):
        parse(raw)


def test_run_init_is_a_path_or_an_explicit_hub_id() -> None:
    raw = _raw()
    raw["run"]["init"] = "/models/base"  # type: ignore[index]
    assert parse(raw).run.init == "/models/base"  # read when the model is built, not at load
    raw["run"]["pretrained"] = "/models/base"  # type: ignore[index]
    with pytest.raises(ConfigError, match=r"run: .*pretrained"):
        parse(raw)
