"""The Raspberry Pi deployment (hardware/pi/, docs/DEPLOY.md): the systemd units pass
`systemd-analyze verify` without a warning, their command lines parse with the real CLI and
load the shipped configs, the pieces name the same paths, and the broker reload they set up
(the fog touches a file, a path unit reloads mosquitto) is confirmed by a real mosquitto
reached through a conf.d symlink."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import aggregator.__main__ as chain_main
import fog_node.__main__ as fog_main
from fog_node.broker_access import BrokerAccess, hash_password, probe
from fog_node.config import FogConfig
from fog_node.node import init_data_dir
from hardware.broker import Mosquitto, free_port
from meterledger import cli
from meterledger import wire as P

ROOT = Path(__file__).resolve().parents[2]
PI = ROOT / "hardware" / "pi"
UNITS = sorted([*PI.glob("*.service"), *PI.glob("*.path")])
VENV_BIN = "/opt/meterledger/venv/bin/meterledger"  # docs/DEPLOY.md makes this venv
ETC = "/etc/meterledger"


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections, each key with its values in order (keys may repeat)."""
    out: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] = {}
    for line in (PI / name).read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = out.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            section.setdefault(key.strip(), []).append(value.strip())
    return out


def one(name: str, section: str, key: str) -> str:
    (value,) = unit(name)[section][key]
    return value


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    assert Path(tool).is_file(), ("systemd-analyze is missing: install systemd (.ci/run does, "
                                  "with apt-get)")
    return tool


def test_the_units_are_the_ones_docs_deploy_installs() -> None:
    names = {p.name for p in UNITS}
    assert names == {"meterledger-fog.service", "meterledger-chain.service",
                     "meterledger-broker-reload.path", "meterledger-broker-reload.service"}
    deploy = (ROOT / "docs" / "DEPLOY.md").read_text()
    for name in names | {"fog.toml", "chain.toml"}:
        assert f"hardware/pi/{name}" in deploy or name in deploy, name


def test_systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    """Every unit, verified together (they refer to each other), with one change: ExecStart's
    /opt/meterledger/venv/bin/meterledger, which verify requires to exist, is this venv's
    `meterledger` (the same console script `pip install .` makes there). verify exits 0 on
    many problems (an unknown key, a bad value: "ignoring"), so any output at all fails."""
    tool = systemd_analyze()
    script = Path(sys.executable).parent / "meterledger"
    assert script.is_file(), "pip install -e . makes the console script"
    copies = []
    for src in UNITS:
        text = src.read_text()
        dst = tmp_path / src.name
        dst.write_text(text.replace(VENV_BIN, str(script)))
        copies.append(str(dst))
    r = subprocess.run([tool, "verify", "--man=no", *copies], capture_output=True, text=True,
                       timeout=120, env={"PATH": "/usr/bin:/bin", "SYSTEMD_LOG_COLOR": "0"})
    assert (r.returncode, r.stdout.strip(), r.stderr.strip()) == (0, "", "")


def test_verify_would_catch_a_bad_key(tmp_path: Path) -> None:
    """The check above has teeth: a misspelt setting is reported (and passes with rc 0)."""
    src = PI / "meterledger-chain.service"
    bad = tmp_path / src.name
    bad.write_text(src.read_text().replace(VENV_BIN, sys.executable)
                   .replace("Restart=on-failure", "Restart=on-fail"))
    r = subprocess.run([systemd_analyze(), "verify", "--man=no", str(bad)], capture_output=True,
                       text=True, timeout=120)
    assert "on-fail" in r.stderr


def exec_start(name: str) -> list[str]:
    argv = shlex.split(one(name, "Service", "ExecStart"))
    assert argv[0] == VENV_BIN
    return argv[1:]


def state_dir(name: str) -> Path:
    service = unit(name)["Service"]
    (state,) = service["StateDirectory"]
    d = Path("/var/lib") / state
    assert service["WorkingDirectory"] == [str(d)]
    assert str(d) in one(name, "Service", "ReadWritePaths").split()
    return d


def run_argv(argv: list[str], module: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`meterledger ARGV` through the real parsers and config loading, stopped where the
    command would start serving: the config it would run with."""
    got: list[Any] = []

    def run(config: Any) -> int:
        got.append(config)
        return 0

    monkeypatch.setattr(module, "run", run)
    args = [a.replace(ETC, str(PI)) for a in argv]  # /etc/meterledger/X.toml is hardware/pi/X.toml
    assert cli.main(args) == 0
    (config,) = got
    return config


def test_the_fog_unit_runs_the_cli_with_its_data_dir_and_config(
        monkeypatch: pytest.MonkeyPatch) -> None:
    name = "meterledger-fog.service"
    argv = exec_start(name)
    assert argv[:2] == ["fog", "run"] and f"{ETC}/fog.toml" in argv
    config = run_argv(argv, fog_main, monkeypatch)
    assert isinstance(config, FogConfig)
    assert config.data_dir == state_dir(name) == Path("/var/lib/meterledger/fog")
    assert config.mqtt_security == "tls" and config.broker_group == "mosquitto"
    # the reload: the fog touches the file the path unit watches, in its runtime directory
    trigger = one("meterledger-broker-reload.path", "Path", "PathChanged")
    assert shlex.split(config.broker_reload_cmd) == ["/usr/bin/touch", trigger]
    assert one(name, "Service", "ExecStartPre") == config.broker_reload_cmd
    runtime = Path("/run") / one(name, "Service", "RuntimeDirectory")
    assert Path(trigger).parent == runtime
    assert str(runtime) in one(name, "Service", "ReadWritePaths").split()
    assert one("meterledger-broker-reload.path", "Path", "Unit") == \
        "meterledger-broker-reload.service"
    assert "meterledger-broker-reload.path" in one(name, "Unit", "Wants").split()


def test_the_chain_unit_runs_the_cli_with_its_data_dir_and_config(
        monkeypatch: pytest.MonkeyPatch) -> None:
    name = "meterledger-chain.service"
    argv = exec_start(name)
    assert argv[:2] == ["chain", "run"]
    config = run_argv(argv, chain_main, monkeypatch)
    assert config.data_dir == state_dir(name) == Path("/var/lib/meterledger/chain")
    assert (config.host, config.http_port) == ("127.0.0.1", 8090)


@pytest.mark.parametrize("name", ["meterledger-fog.service", "meterledger-chain.service"])
def test_the_services_keep_the_rules_of_issue_14(name: str) -> None:
    s = unit(name)["Service"]
    for key, value in (("Restart", "on-failure"), ("User", "meterledger"),
                       ("StandardOutput", "journal"), ("StandardError", "journal"),
                       ("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                       ("PrivateTmp", "yes")):
        assert s[key] == [value], key
    u = unit(name)["Unit"]
    assert "network-online.target" in u["After"][0] and "network-online.target" in u["Wants"][0]


# -- the broker: the fog's fragment through a conf.d symlink, reloaded on request -----------------
@pytest.fixture
def watcher(tmp_path: Path) -> Iterator[tuple[Path, list[Mosquitto]]]:
    """What meterledger-broker-reload.path does, in a thread: each change of the trigger
    file reloads the broker (SIGHUP, as mosquitto.service's ExecReload)."""
    trigger = tmp_path / "run" / "reload-broker"
    trigger.parent.mkdir()
    brokers: list[Mosquitto] = []
    stop = threading.Event()

    def watch() -> None:
        seen = None
        while not stop.wait(0.1):  # systemd's path unit reacts to inotify; a poll will do
            try:
                now = trigger.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            if now != seen and brokers:
                seen = now
                brokers[0].reload()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    yield trigger, brokers
    stop.set()
    t.join()


def test_mosquitto_loads_the_fogs_fragment_through_a_symlink_and_reloads_on_request(
        tmp_path: Path, watcher: tuple[Path, list[Mosquitto]]) -> None:
    trigger, brokers = watcher
    config = FogConfig(data_dir=tmp_path / "fog", mqtt_tls_port=free_port(),
                       broker_reload_cmd=f"/usr/bin/touch {trigger}")
    key = init_data_dir(config.data_dir)
    access = BrokerAccess(config, key.id.hex())
    access.write()  # the fragment with this test's port, as `run` writes it
    conf_d = tmp_path / "conf.d"  # /etc/mosquitto/conf.d: include_dir only works in the main file
    conf_d.mkdir()
    (conf_d / "meterledger-fog.conf").symlink_to(access.conf)
    meter = P.SigningKey.generate()
    password = "ab" * 32
    with Mosquitto(tmp_path / "broker", port=config.mqtt_tls_port, include_dir=conf_d) as broker:
        brokers.append(broker)
        auth = access.client()
        assert probe(auth, auth.username, auth.password) == ""  # the fog's own login
        assert probe(auth, meter.id_hex, password) != ""  # not enrolled yet
        assert access.grant(meter.id_hex, hash_password(password))
        access.write()
        assert access.reload() == f"ran {config.broker_reload_cmd!r}, loaded"
        assert probe(auth, meter.id_hex, password) == ""


# -- docs/DEPLOY.md: every command it gives exists, with every flag it uses ---------------------
def deploy_commands() -> list[list[str]]:
    """The `meterledger` command lines of docs/DEPLOY.md's code blocks (`ml ...`, the guide's
    shorthand, or the venv's script), continuation lines joined, after the program name."""
    text = (ROOT / "docs" / "DEPLOY.md").read_text()
    blocks = text.split("```")[1::2]
    # and the inline ones in the prose: `ml fog revoke ...`
    blocks += [m.replace("\n", " ") for m in re.findall(r"(?<!`)`(ml [^`]+)`", text)]
    out = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            for prefix in ("ml ", f"{VENV_BIN} "):
                if line.startswith(prefix) or f"&& {prefix}" in line:
                    argv = shlex.split(line.split(prefix, 1)[1].split("&&")[0])
                    if "..." not in argv:  # "`ml ...`": the shorthand itself
                        out.append(argv)
    return out


def test_every_command_and_flag_of_docs_deploy_exists(capsys: pytest.CaptureFixture[str]) -> None:
    commands = deploy_commands()
    assert len(commands) >= 9
    for argv in commands:
        words = [a for a in argv if not a.startswith("-")]
        flags = [a.split("=", 1)[0] for a in argv if a.startswith("--")]
        if flags == ["--version"]:
            continue
        path = [w for w in words[:3] if w.replace("-", "").isalpha()]
        while path:  # the longest command path the CLI knows: "fog enroll", "chain register"
            capsys.readouterr()
            if cli.main([*path, "--help"]) == 0:
                break
            path.pop()
        help_text = capsys.readouterr().out
        assert path and "usage: meterledger " + " ".join(path) in help_text, argv
        for flag in flags:
            assert flag in help_text, f"meterledger {' '.join(path)} has no {flag}"
