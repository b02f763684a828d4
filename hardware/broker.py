"""A real mosquitto broker on a free loopback port, for tests and the demo.

    with Mosquitto(tmp_dir) as broker:
        ... broker.port ...
        broker.restart()          # same port, same persistence file

    # secure (issue 13): the listeners, TLS and access files a fog node generated
    with Mosquitto(tmp_dir, port=tls_port, include_dir=fog_data / "broker") as broker:
        ... broker.reload() ...   # SIGHUP: the password and ACL files are read again

Plain, it listens on 127.0.0.1 and lets anonymous clients do anything. With `include_dir`
its own configuration keeps persistence, logging and a pid file (`pid_file`, which a fog
node's `broker_pid_file` names), and takes the listeners and their security from the
`*.conf` files of that directory, as a production mosquitto.conf would include them.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from types import TracebackType
from typing import Self

from meterledger import errors


class BrokerError(errors.HardwareError, RuntimeError):
    pass


def find_mosquitto() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if candidate and pathlib.Path(candidate).exists():
            return candidate
    raise BrokerError("mosquitto is not installed (CI installs it with apt-get; run "
                      "`apt-get install mosquitto`)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _BrokerProcess:
    """A broker in a child process on a loopback port: started, waited for, stopped."""

    name = "broker"

    def __init__(self, workdir: pathlib.Path, port: int | None = None):
        self.workdir = pathlib.Path(workdir).resolve()  # the child runs in the repository
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / f"{self.name}.log"

    def _command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> Self:
        if self.proc is not None:
            return self
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self._command(), stdout=log, stderr=log,
                                         cwd=pathlib.Path(__file__).resolve().parent.parent)
        deadline = time.monotonic() + 60  # a limit on a hang: a loaded host starts it slowly
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise BrokerError(f"{self.name} exited: {self.log.read_text()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()  # never left running behind a failed start (`with` calls no __exit__)
        raise BrokerError(f"{self.name} did not listen on port {self.port}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()  # SIGTERM: mosquitto saves its persistence file
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class Mosquitto(_BrokerProcess):
    name = "mosquitto"

    def __init__(self, workdir: pathlib.Path, port: int | None = None, persistence: bool = True,
                 include_dir: pathlib.Path | None = None):
        """`include_dir`: take the listeners and security from its *.conf files (`port` is
        then the one this waits for, one of their listeners')."""
        if include_dir is not None and port is None:
            raise BrokerError("a broker with an include_dir needs the port its listener has")
        super().__init__(workdir, port)
        self.persistence = persistence
        self.include_dir = include_dir
        self.pid_file = self.workdir / "mosquitto.pid"

    def reload(self) -> None:
        """SIGHUP: mosquitto reads its configuration, password and ACL files again."""
        if self.proc is None:
            raise BrokerError("mosquitto is not running")
        self.proc.send_signal(signal.SIGHUP)

    def reloads(self) -> int:
        """How many reloads the running broker has carried out so far (its log says each
        one before it reads the files, and takes no client's packet until it is done)."""
        try:
            return self.log.read_text(errors="replace").count("Reloading config.")
        except FileNotFoundError:
            return 0

    def _command(self) -> list[str]:
        conf = self.workdir / "mosquitto.conf"
        if self.include_dir is None:
            lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true"]
        else:  # the listeners come last, from the included files
            lines = ["log_type information"]  # "Reloading config." (reloads())
            if os.geteuid() == 0:
                # started as root, mosquitto 2 would run as the `mosquitto` user, which
                # cannot read a test's private directory (a fog node's `broker_group` is how
                # a production broker reads the fog's files)
                lines.append("user root")
            lines.append(f"pid_file {self.pid_file}")
        lines += [
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            "max_queued_messages 100000",
            "max_inflight_messages 1000",  # 20 by default: QoS 1 delivery would be RTT-bound
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        if self.include_dir is not None:
            lines.append(f"include_dir {self.include_dir.resolve()}")
        conf.write_text("\n".join(lines) + "\n")
        return [find_mosquitto(), "-c", str(conf)]


class EmbeddedBroker(_BrokerProcess):
    """amqtt (pure Python) in a child process: the demo's broker on machines without
    mosquitto (hardware/amqtt_broker.py). Sessions live in memory only."""

    name = "amqtt"

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "hardware.amqtt_broker", "--port", str(self.port)]


def any_broker(workdir: pathlib.Path) -> Mosquitto | EmbeddedBroker:
    """mosquitto when installed, else the embedded amqtt broker (not started yet)."""
    try:
        find_mosquitto()
    except BrokerError:
        return EmbeddedBroker(workdir)
    return Mosquitto(workdir)


def main(argv: list[str] | None = None, prog: str = "python -m hardware.broker") -> int:
    """Run mosquitto for a fog's data dir in the foreground until Ctrl-C or SIGTERM."""
    import argparse

    from meterledger.infra.args import ArgumentParser

    ap = ArgumentParser(prog=prog, description=(
        "Run a mosquitto broker with the listeners, TLS certificate, passwords and ACL that "
        "a fog node made in DATA_DIR/broker (`meterledger fog init`), until Ctrl-C. Give the "
        "fog the pid file it prints (--broker-pid-file), so that enrolling a meter reloads "
        "the broker. A production broker includes the same directory instead "
        "(docs/DEPLOY.md)."), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fog-data", type=pathlib.Path, default=pathlib.Path("fog-data"),
                    help="the fog's data dir, with its broker/ directory (default: fog-data)")
    ap.add_argument("--port", type=int, default=8883,
                    help="the TLS port of the fog's listener, to wait for (its config's "
                         "mqtt_tls_port; default: 8883)")
    ap.add_argument("--workdir", type=pathlib.Path, default=None,
                    help="the broker's own files: config, persistence, log, pid file "
                         "(default: FOG_DATA/mosquitto)")
    args = ap.parse_args(argv)
    include = args.fog_data / "broker"
    if not (include / "mosquitto.conf").is_file():
        ap.error(f"no broker files in {include}: run `meterledger fog init --data-dir "
                 f"{args.fog_data}` first")
    broker = Mosquitto(args.workdir or args.fog_data / "mosquitto", port=args.port,
                       include_dir=include)
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        broker.start()
    except BrokerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"mosquitto on port {broker.port} with {include}; log {broker.log}; give the fog "
          f"--broker-pid-file {broker.pid_file}", flush=True)
    try:
        while not stop and broker.proc is not None and broker.proc.poll() is None:
            time.sleep(0.5)
    finally:
        broker.stop()
    print("mosquitto stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
