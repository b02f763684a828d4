"""An embedded Python MQTT broker (amqtt) for machines without mosquitto.

    python -m hardware.amqtt_broker --port 1883

The demo falls back to it when mosquitto is not installed; it listens on loopback only and
allows anonymous clients: lab mode (docs/SECURITY.md), like the plain mosquitto of tests that
are not about access control (the fog's generated TLS config is tested separately). Sessions live in memory, so a
restart of this broker loses queued messages (mosquitto with persistence does not): meters
resend what was not acked, so nothing is lost, only delayed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys


async def serve(port: int) -> None:
    from amqtt.broker import Broker

    broker = Broker({
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    })
    await broker.start()
    print(f"amqtt broker listening on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hardware.amqtt_broker", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=1883)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
