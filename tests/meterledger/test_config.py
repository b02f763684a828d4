"""Every configuration value has a type and a range checked at load, from a file and from a
flag alike, with a one-line error (issue 13): the probe's values, and every numeric setting
of both services just outside its range."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aggregator.chain.service.node import AggregatorConfig
from fog_node.config import FogConfig, load_config
from meterledger.errors import ConfigError
from meterledger.infra import config as cfg

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize("line,words", [
    ("batch_wait_s = inf", "batch_wait_s: inf is not a finite number"),
    ("seal_period_s = nan", "seal_period_s: nan is not a finite number"),
    ('mqtt_root = "#"', "mqtt_root: '#' is not levels of letters"),
    ('mqtt_root = "grid/+"', "mqtt_root: 'grid/+' is not levels"),
    ('mqtt_root = "a//b"', "no empty level"),
    ("interval_s = 0", "interval_s: 0 is not one of 60, 300, 900, 1800, 3600"),
    ("http_port = -1", "http_port: -1 is outside [0, 65535]"),
    ("mqtt_port = 70000", "mqtt_port: 70000 is outside [1, 65535]"),
    ('on_tamper = "explode"', "on_tamper: 'explode' is not one of report, relay_off"),
    ("mqtt_host = 5", "mqtt_host: expected a string, got 5"),
    ("batch_max = 1.5", "batch_max: expected an integer, got 1.5"),
    ("fog = 5", "fog must be a table"),
], ids=lambda v: v if isinstance(v, str) and "=" in v else None)
def test_the_probes_values_are_refused_at_load(tmp_path: Path, line: str, words: str) -> None:
    path = tmp_path / "fog.toml"
    path.write_text(line + "\n" if line.startswith("fog =") else "[fog]\n" + line + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, {})
    assert words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("data,words", [
    (b"[fog]\nmqtt_host = \"\xff\"\n", "not UTF-8"),
    (b"a = " + b"[" * 3000, "nested more than"),
    (b"[fog]\nbatch_max = 1" + b"0" * 5000 + b"\n", "fog.toml"),
])
def test_files_that_are_no_config_are_one_line_errors(tmp_path: Path, data: bytes,
                                                      words: str) -> None:
    path = tmp_path / "fog.toml"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=words):
        load_config(path, {})


def _numeric(cls: type[Any]) -> list[tuple[str, Any, Any]]:
    out = []
    for f in dataclasses.fields(cls):
        lo, hi = f.metadata.get("meterledger.min"), f.metadata.get("meterledger.max")
        if lo is not None or hi is not None:
            out.append((f.name, lo, hi))
    return out


@pytest.mark.parametrize("cls", [FogConfig, AggregatorConfig], ids=["fog", "aggregator"])
def test_every_ranged_setting_refuses_just_outside_and_takes_its_edges(cls: type[Any]) -> None:
    settings = _numeric(cls)
    assert settings, "no ranged setting"
    for name, lo, hi in settings:
        f = next(f for f in dataclasses.fields(cls) if f.name == name)
        is_int = f.type in ("int", int)
        step = 1 if is_int else 1e-9 * max(1.0, abs(hi or lo or 1))
        for edge in (lo, hi):
            if edge is not None:
                assert cfg.range_error(f, int(edge) if is_int else float(edge)) is None, name
        if lo is not None:
            assert cfg.range_error(f, lo - step) is not None, name
        if hi is not None:
            assert cfg.range_error(f, hi + step) is not None, name


def test_a_bad_flag_is_one_line_and_exit_2() -> None:
    out = subprocess.run([sys.executable, "-m", "fog_node", "run", "--batch-wait-s", "inf"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "argument --batch-wait-s: inf is not a finite number" in out.stderr
    assert "Traceback" not in out.stderr
