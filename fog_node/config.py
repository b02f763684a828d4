"""The fog node's configuration (`FogConfig`): one definition for the TOML file
(`[fog]` table or top-level keys), the `fog_node run` flags and their help.

Example: docs/examples/fog.toml. Simulation settings (sim_*) are for the demo and tests only.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fog_node.cooking.feeders import Feeder, parse_feeders
from fog_node.transport.rs485.addresses import check_addresses, parse_addresses
from meterledger import wire as P
from meterledger.errors import ConfigError
from meterledger.infra import config as cfg
from meterledger.infra import simclock
from meterledger.infra.clock import Clock
from meterledger.infra.config import setting
from meterledger.infra.http_settings import HTTPSettings


def _addresses(value: Any) -> list[int]:
    """RS485 addresses: a TOML list of integers, or "1,2,5-9"."""
    if isinstance(value, str):
        return parse_addresses(value)
    if isinstance(value, list) and all(isinstance(a, int) and not isinstance(a, bool)
                                       for a in value):
        return check_addresses(value)
    raise ValueError(f"rs485_addresses: expected a list of integers or \"1,2,5-9\", got {value!r}")


_TOPIC_LEVEL = re.compile(r"[A-Za-z0-9_-]{1,64}")


def topic_root_error(root: str) -> str | None:
    """What is wrong with an MQTT topic root (None if nothing): one or more levels of letters,
    digits, '-' and '_', so no wildcard (+, #), empty level or '$' can widen a subscription
    or an ACL built from it."""
    if not root or len(root) > 128:
        return "must be 1..128 characters"
    if not all(_TOPIC_LEVEL.fullmatch(level) for level in root.split("/")):
        return (f"{root!r} is not levels of letters, digits, '-' and '_' separated by '/' "
                "(no wildcard, no empty level)")
    return None


def _interval_error(seconds: int) -> str | None:
    if seconds not in P.INTERVALS:
        return f"{seconds} is not one of {', '.join(map(str, P.INTERVALS))} (SPEC section 4)"
    return None


def _feeders(value: Any) -> list[Feeder]:
    """Feeders: a TOML array of tables ([[fog.feeders]]), or the same as JSON (CLI)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"feeders: not JSON: {e}") from None
    return parse_feeders(value)


@dataclass
class FogConfig(HTTPSettings):
    data_dir: Path = setting(Path("fog-data"), help="the node's data directory (keys, databases)")
    mqtt_host: str = setting("127.0.0.1", help="MQTT broker host")
    mqtt_port: int = setting(1883, help="MQTT broker port", min=1, max=65535)
    mqtt_root: str = setting("grid", help="MQTT topic root (levels of letters, digits, - and _)",
                             check=topic_root_error)
    http_host: str = setting("127.0.0.1", help="address the HTTP API listens on")
    http_port: int = setting(8080, help="HTTP API port (0: any free port, printed at start)",
                            min=0, max=65535)
    seal_period_s: float = setting(5.0, help="seconds between checkpoints while the log grows",
                                  min=0.05, max=3600)
    interval_s: int = setting(900, help="interval length in seconds; a checkpoint at each close",
                              check=_interval_error)
    grace_s: int = setting(60, help="seconds after an interval's end that late readings still "
                                    "count for its checkpoint", min=0, max=86400)
    skew_s: int = setting(300, help="readings more than this many seconds in the future are "
                                    "rejected", min=0, max=2**32 - 1)
    batch_max: int = setting(1000, help="messages per group commit", min=1, max=100_000)
    batch_wait_s: float = setting(0.02, help="seconds the ingest thread waits to fill a group",
                                  min=0, max=5)
    chain_url: str = setting("", help="the dispatch chain's API URL; empty: no anchoring")
    anchor_period_s: float = setting(60.0, help="anchor at most this often (s), and at every "
                                                "interval close", min=0.1, max=86400)
    chain_poll_s: float = setting(1.0, help="seconds between outbox and instruction polls",
                                  min=0.01, max=3600)
    dispatch_pub: str = setting("", help="pin the dispatch key (hex) instructions must be "
                                         "signed by")
    # more chains the same log is anchored to (green certificates, carbon allowances): anchors
    # only, each with its own outbox (fog_node/chainlink/links.py)
    registry_chains: list[str] = setting(help="API URLs of more chains (GC, carbon) the log is "
                                              "also anchored to, e.g. https://gc:8090,"
                                              "https://co2:8090: anchors only, each with its "
                                              "outbox chain-registry-HOST-PORT.db, "
                                              "chain_ca_file applies; none: only chain_url",
                                         parse=lambda v: parse_chain_urls(v),
                                         default_factory=list, metavar="LIST")
    # RS485 bus master (docs/PROTOCOL.md section 17); runs beside MQTT when rs485_port is set
    rs485_port: str = setting("", help="serial device or pyserial URL of the RS485 bus "
                                       "(/dev/ttyUSB0, rfc2217://...); empty: no bus")
    rs485_baud: int = setting(19200, help="RS485 line speed", min=300, max=4_000_000)
    rs485_addresses: list[int] = setting(help="Modbus slave addresses to poll (1..247), e.g. "
                                              "1,2,5-9", parse=_addresses,
                                         default_factory=list, metavar="LIST")
    rs485_timeout_s: float = setting(0.0, help="timeout of 0x04/0x41/0x44 requests; 0: 0.1 s "
                                               "plus a maximal answer's line time", min=0, max=60)
    rs485_slow_timeout_s: float = setting(10.0, help="timeout of 0x42/0x43 requests (the "
                                                     "meter verifies and signs P-256)", min=0.01, max=600)
    rs485_batch: int = setting(32, help="readings fetched per meter per visit", min=1, max=1000)
    # cooked data (docs/PROTOCOL.md section 18): feeders and the thresholds of their alerts
    feeders: list[Feeder] = setting(help="feeders as JSON [{\"name\":..., \"meters\":[...], "
                                         "\"head\":...}]; none: one feeder 'all'",
                                    parse=_feeders, default_factory=list, metavar="JSON")
    privacy_min_meters: int = setting(5, help="feeders with fewer meters are merged, or "
                                              "suppressed", min=1, max=1_000_000)
    loss_alert_pct: float = setting(8.0, help="feeder loss above this percent raises loss_high",
                                   min=0, max=100)
    outage_pct: float = setting(50.0, help="share of silent meters (percent) that makes an "
                                           "outage", min=0, max=100)
    voltage_low_dv: int = setting(2070, help="voltage_low below this (0.1 V)", min=0,
                                   max=65535)
    voltage_high_dv: int = setting(2530, help="voltage_high above this (0.1 V)", min=0,
                                    max=65535)
    generators: list[str] = setting(help="generator meters (16-hex ids, e.g. id1,id2) whose "
                                         "energy per interval the fog signs as type-14 "
                                         "statements for the chain; none: no statement",
                                    parse=lambda v: parse_generators(v), default_factory=list,
                                    metavar="LIST")
    market_meters: list[str] = setting(help="meters (16-hex ids) whose owners consented to "
                                            "the P2P market: their energy per interval "
                                            "leaves the fog as type-14 statements that "
                                            "settle their trades; none: no household's "
                                            "does", parse=lambda v: parse_generators(v),
                                       default_factory=list, metavar="LIST")
    on_tamper: str = setting("report", help="report, or relay_off: open the relay of a meter "
                                            "reporting TAMPER", choices=("report", "relay_off"))
    # simulation only (demo, labs, tests): the clock meters share (meterledger/infra/simclock.py)
    sim_compress: float = setting(1.0, help=simclock.HELP_COMPRESS, min=0.001, max=1_000_000)
    sim_start: float = setting(0.0, help=simclock.HELP_START, min=0, max=2**32 - 1)
    sim_epoch: float = setting(0.0, help=simclock.HELP_EPOCH, min=0, max=2**32 - 1)
    # broker security (issue 13): docs/PROTOCOL.md section 21, fog_node/broker_access.py
    mqtt_security: str = setting("tls", help="tls: TLS to mqtt_tls_port with the fog's broker "
                                             "credentials; lab: plain MQTT to mqtt_port, "
                                             "anonymous (labs and tests only)",
                                 choices=("tls", "lab"))
    mqtt_tls_port: int = setting(8883, help="the broker's TLS port", min=1, max=65535)
    mqtt_ca_file: str = setting("", help="CA certificate the broker's must chain to; empty: "
                                         "data_dir/broker/ca.crt (made by init)")
    mqtt_username: str = setting("", help="the fog's broker user; empty: fog-<fog id>",
                                 check=lambda v: None if re.fullmatch(r"[A-Za-z0-9_.-]{0,64}", v)
                                 else f"{v!r} is not 1..64 letters, digits, '.', '_', '-'")
    mqtt_password_file: str = setting("", help="file holding the fog's broker password; empty: "
                                               "data_dir/broker/fog.secret (made by init)")
    broker_listen: str = setting("", help="address the generated broker listeners bind; empty: "
                                          "all", check=lambda v: None if re.fullmatch(
                                              r"[0-9A-Za-z.:_-]*", v) else f"{v!r}: not an address")
    broker_group: str = setting("", help="the group the broker runs as (e.g. mosquitto): the "
                                         "non-public files it reads go to it, mode 0640")
    broker_pid_file: str = setting("", help="the broker's pid_file: after each enroll or revoke "
                                            "the fog sends that pid SIGHUP to reload access")
    broker_reload_cmd: str = setting("", help="else a command that reloads the broker, e.g. "
                                              "\"sudo -n systemctl reload mosquitto\"")
    # HTTP API (issue 13): TLS, limits; tiers and tokens in docs/PROTOCOL.md section 12
    # (the http_* settings: HTTPSettings, shared with the chain node)
    chain_ca_file: str = setting("", help="CA certificate (PEM) the chain's TLS certificate "
                                          "must chain to; empty: the system's CAs")
    # what strangers and noisy meters can make the node hold (issue 13): bounded, oldest
    # dropped first and counted (docs/PROTOCOL.md section 12)
    quarantine_per_meter: int = setting(96, help="messages of one unknown meter held until "
                                                 "it is enrolled (the meter keeps them too)",
                                        min=0, max=100_000)
    quarantine_total: int = setting(10_000, help="messages of unknown meters held in all",
                                    min=0, max=10_000_000)
    inbox_share: int = setting(64, help="most messages of one topic in one ingest group; "
                                        "the rest wait for later groups",
                               min=1, max=100_000)
    inbox_backlog: int = setting(1024, help="messages of one topic waiting at most; older "
                                            "ones are dropped (not acked: the meter resends)",
                                 min=1, max=1_000_000)
    # Home Assistant republishing (issue 14): decoded data as JSON on the fog's own topic
    # root, with MQTT discovery (fog_node/republish.py, docs/DATA.md). Feeder aggregates only,
    # unless meters are listed: a household's readings leave the fog only with its consent
    ha_republish: bool = setting(False, help="republish feeder aggregates (and the readings of "
                                             "ha_meters) as JSON with Home Assistant discovery")
    ha_root: str = setting("meterledger", help="topic root of the republished JSON (not "
                                               "mqtt_root)", check=topic_root_error)
    ha_discovery_prefix: str = setting("homeassistant", help="Home Assistant's MQTT discovery "
                                                             "prefix", check=topic_root_error)
    ha_meters: list[str] = setting(help="meters whose customers consented to their readings "
                                        "being republished (16-hex ids, e.g. id1,id2); none: "
                                        "feeders only", parse=lambda v: parse_meter_ids(v),
                                   default_factory=list, metavar="LIST")
    ha_all_meters: bool = setting(False, help="republish every enrolled meter's readings: only "
                                              "where every customer consented")
    ha_username: str = setting("", help="a broker user that may only read the republished "
                                        "topics (for Home Assistant); empty: none",
                               check=lambda v: None if re.fullmatch(r"[A-Za-z0-9_.-]{0,64}", v)
                               and not re.fullmatch(r"[0-9a-f]{16}", v)
                               else f"{v!r} is not 1..64 letters, digits, '.', '_', '-' (and "
                                    "no meter id)")
    ha_password_file: str = setting("", help="file holding ha_username's broker password; "
                                             "empty: data_dir/broker/ha.secret (made when "
                                             "needed)")
    ha_period_s: float = setting(5.0, help="seconds between looks for new data to republish",
                                 min=0.1, max=3600)

    def __post_init__(self) -> None:
        """The check across two settings (each one's own ran when it was parsed): a registry
        chain is not the dispatch chain again."""
        if not (self.chain_url and self.registry_chains):
            return
        url = self.chain_url if "://" in self.chain_url else "http://" + self.chain_url
        try:
            main = _chain_key(url)
        except ValueError:
            return  # not a URL: the chain client says so when the node starts
        for u in self.registry_chains:
            if _chain_key(u) == main:
                raise ConfigError(f"registry_chains: {u} is chain_url, the dispatch chain "
                                  "(anchored to through chain.db already)")


def parse_meter_ids(value: Any) -> list[str]:
    """Meter ids: a TOML list of 16-hex strings, or "id1,id2" (flags); sorted, distinct."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"expected a list of meter ids (16 hex), got {value!r}")
    ids = sorted({i.strip().lower() for i in items if i.strip()})
    bad = [i for i in ids if not re.fullmatch(r"[0-9a-f]{16}", i)]
    if bad:
        raise ValueError(f"{bad[0]!r} is not a meter id (16 hex characters)")
    return ids


def parse_generators(value: Any) -> list[str]:
    """Generator meter ids: a TOML list of 16-hex strings, or "id1,id2" (flags); in the order
    given, lower case. A generator's own energy leaves the fog (type-14 statements), so a
    typo must not silently name another meter or none: a bad or repeated id is refused."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"expected a list of meter ids (16 hex), got {value!r}")
    ids = [i.strip().lower() for i in items]
    if isinstance(value, str) and ids == [""]:
        return []  # an empty flag: no generator
    seen: set[str] = set()
    for i in ids:
        if not re.fullmatch(r"[0-9a-f]{16}", i):
            raise ValueError(f"{i!r} is not a meter id (16 hex characters, 8 bytes)")
        if i in seen:
            raise ValueError(f"meter {i} is listed twice")
        seen.add(i)
    return ids


def _chain_key(url: str) -> tuple[str, int, str]:
    """What makes two chain URLs the same chain: host (lower case), port (the scheme's
    default if none) and path. Raises ValueError for a URL that is not http(s)://host..."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
    if parts.username is not None or parts.query or parts.fragment:
        raise ValueError(f"{url!r}: a chain's API URL takes no user, query or fragment")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"{url!r}: the port is not a number in 0..65535") from None
    return parts.hostname.lower(), port, parts.path.rstrip("/")


def registry_outbox(url: str) -> str:
    """The outbox database (in data_dir) of the registry chain at `url`:
    chain-registry-HOST-PORT.db, or chain-registry-HOST-PORT-PATH.db for a URL with a path
    (host in lower case, the scheme's default port if none, characters other than letters,
    digits, '.' and '-' as '_'). Named by the chain's address, not its place in the list:
    reordering or shortening registry_chains keeps each chain's outbox."""
    host, port, path = _chain_key(url)
    name = "-".join([host, str(port)] + ([path.strip("/")] if path else []))
    return f"chain-registry-{re.sub(r'[^A-Za-z0-9.-]', '_', name)}.db"


def parse_chain_urls(value: Any) -> list[str]:
    """Registry chain URLs: a TOML list of strings, or "url1,url2" (flags); in the order given,
    each an http(s) URL (trailing '/' dropped), none repeated, no two sharing an outbox."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"expected a list of chain API URLs, got {value!r}")
    urls = [i.strip().rstrip("/") for i in items]
    if isinstance(value, str) and urls == [""]:
        return []  # an empty flag: no registry chain
    seen: dict[str, str] = {}
    for url in urls:
        if not url:
            raise ValueError("an empty URL in the list")
        name = registry_outbox(url)
        if name in seen:
            raise ValueError(f"{url} is listed twice" if _chain_key(url) == _chain_key(seen[name])
                             else f"{url} and {seen[name]} would share the outbox {name}")
        seen[name] = url
    return urls


def load_config(path: Path | None, overrides: dict[str, Any]) -> FogConfig:
    """FogConfig from a TOML file ([fog] table or top-level keys), then the flags given."""
    return cfg.load(FogConfig, path, "fog", overrides)


def sim_clock(config: FogConfig, real: Clock) -> simclock.SimClock | None:
    """The config's simulated clock with its defaults filled in (None: real time)."""
    return simclock.completed(config.sim_compress, config.sim_start, config.sim_epoch,
                              now=real())


def node_clock(config: FogConfig, real: Clock) -> Clock:
    """The node's clock: `real` itself, or the compressed simulation clock of the config."""
    sim = sim_clock(config, real)
    return real if sim is None else sim.clock(real)
