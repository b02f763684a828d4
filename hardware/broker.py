"""A real mosquitto broker on a free loopback port, for tests and the demo.

    with Mosquitto(tmp_dir) as broker:
        ... broker.port ...
        broker.restart()          # same port, same persistence file
"""

from __future__ import annotations

import pathlib
import shutil
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
        self.workdir = pathlib.Path(workdir)
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
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"{self.name} exited: {self.log.read_text()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
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

    def __init__(self, workdir: pathlib.Path, port: int | None = None, persistence: bool = True):
        super().__init__(workdir, port)
        self.persistence = persistence

    def _command(self) -> list[str]:
        conf = self.workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            "max_queued_messages 100000",
            "max_inflight_messages 1000",  # 20 by default: QoS 1 delivery would be RTT-bound
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
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
