# Provisioning, run once on the device by tools/flash.py (`mpremote run provision.py`): boots
# the meter from config.json so that it creates its signing key if it has none (the key is
# born here, in the data dir, and never leaves the device), then prints the public key and
# the meter id for enrollment:
#   PUB <130 hex>
#   ID <16 hex>
# Nothing else about the key is printed or written anywhere. A meter on MQTT also gets its
# broker password, made here in the data dir if it has none (transport_mqtt.ensure_secret,
# kept across re-flashes like the key), and printed once for the flashing tool, which hands
# only its hash to the fog (docs/PROTOCOL.md section 21):
#   MQTT <64 hex>
# On a host (tools/flash.py
# --target DIR) the same script runs on CPython with the host hal:
#   python firmware/provision.py [CONFIG_JSON [DATA_DIR]]
# where DATA_DIR replaces the config's data_dir (the board path, e.g. "/data").
import json
import sys

from app import App
from core import keys
from core.compat import hexlify
from hal import make_board


def load_config(path="config.json"):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError:
        return {}  # as main.py: a board without config.json runs on the defaults


class _NoSource:
    # Provisioning boots the meter but takes no sample, so it needs no source hardware (an
    # SDM meter on the second UART, an S0 counter): this stands in for it. The real source's
    # saved state in the meter's flash is left as it is (only a reading saves it).
    name = "none"

    def read(self, now):
        raise ValueError("provisioning takes no samples")

    def state(self):
        return {}

    def restore(self, st):
        pass


def provision(config, board=None):
    """Boot the meter once (creating its key on first boot); returns (pub hex, id hex)."""
    if board is None:
        board = make_board(config)
    app = App(board, config, None, _NoSource())  # no transport: nothing is sent
    meter = app.start()
    # the next boot (main.py, after a reset) is deliberate, not a power failure
    meter.prepare_reboot()
    return hexlify(meter.key.pub), keys.id_hex(meter.id)


def broker_secret(config, board):
    """The meter's broker password (made if it has none), or None for a non-MQTT meter."""
    if config.get("transport") != "mqtt":
        return None
    from transport_mqtt import ensure_secret

    return ensure_secret(board.fs(), board.random_bytes)


def main(path="config.json", data_dir=None):
    config = load_config(path)
    if data_dir:
        config["data_dir"] = data_dir
    board = make_board(config)
    pub, mid = provision(config, board)
    secret = broker_secret(config, board)
    print("PUB", pub)
    print("ID", mid)
    if secret:
        print("MQTT", secret)


if __name__ == "__main__":
    _args = getattr(sys, "argv", [])[1:]
    main(*_args[:2])
