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


class BrokerError(RuntimeError):
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


class Mosquitto:
    def __init__(self, workdir: pathlib.Path, port: int | None = None, persistence: bool = True):
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.persistence = persistence
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / "mosquitto.log"

    def _config(self) -> pathlib.Path:
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
        return conf

    def start(self) -> Mosquitto:
        if self.proc is not None:
            return self
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([find_mosquitto(), "-c", str(self._config())],
                                         stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"mosquitto exited: {self.log.read_text()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        raise BrokerError(f"mosquitto did not listen on port {self.port}")

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

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class EmbeddedBroker:
    """amqtt (pure Python) in a child process, with Mosquitto's interface: the demo's
    broker on machines without mosquitto (hardware/amqtt_broker.py)."""

    def __init__(self, workdir: pathlib.Path, port: int | None = None):
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / "amqtt.log"

    def start(self) -> EmbeddedBroker:
        if self.proc is not None:
            return self
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hardware.amqtt_broker", "--port", str(self.port)],
                stdout=log, stderr=log, cwd=pathlib.Path(__file__).resolve().parent.parent)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"amqtt exited: {self.log.read_text()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise BrokerError(f"amqtt did not listen on port {self.port}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def any_broker(workdir: pathlib.Path) -> Mosquitto | EmbeddedBroker:
    """mosquitto when installed, else the embedded amqtt broker (not started yet)."""
    try:
        find_mosquitto()
    except BrokerError:
        return EmbeddedBroker(workdir)
    return Mosquitto(workdir)
