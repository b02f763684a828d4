"""docs/examples: what a newcomer copies. The configs are what the code's definitions say
(tools.examples), load to exactly the defaults, and the rule set parses as the chain would."""

from __future__ import annotations

from aggregator.chain.rulesets import parse_rules
from aggregator.chain.service.node import AggregatorConfig
from aggregator.chain.service.node import load_config as chain_config
from fog_node.config import FogConfig
from fog_node.config import load_config as fog_config
from tools import examples


def test_the_example_configs_are_what_the_definitions_say() -> None:
    for name, text in examples.generated().items():
        assert (examples.EXAMPLES / name).read_text() == text, \
            f"docs/examples/{name} is stale: run python -m tools.examples"
    assert examples.main(["--check"]) == 0


def test_the_example_configs_load_to_the_defaults() -> None:
    assert fog_config(examples.EXAMPLES / "fog.toml", {}) == FogConfig()
    assert chain_config(examples.EXAMPLES / "chain.toml", {}) == AggregatorConfig()


def test_every_setting_is_in_its_example_with_its_help() -> None:
    import dataclasses

    for cls, name in ((FogConfig, "fog.toml"), (AggregatorConfig, "chain.toml")):
        text = (examples.EXAMPLES / name).read_text()
        for f in dataclasses.fields(cls):
            if "meterledger.help" in f.metadata:
                assert f"\n{f.name} = " in text, (name, f.name)
                assert f"# {f.metadata['meterledger.help']}" in text, (name, f.name)


def test_the_example_rule_set_parses() -> None:
    rules = parse_rules((examples.EXAMPLES / "rules.toml").read_text(), "rules.toml")
    assert rules.name == "district-1" and rules.version == 1
    assert [r.id for r in rules.rules] == ["curtail-evening-peak", "losses-read-every-5-min"]


def test_a_stale_example_is_found(tmp_path) -> None:
    (tmp_path / "fog.toml").write_text("[fog]\n")
    assert examples.main(["--check", "--out", str(tmp_path)]) == 1
    assert examples.main(["--out", str(tmp_path)]) == 0
    assert examples.main(["--check", "--out", str(tmp_path)]) == 0
