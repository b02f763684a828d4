# Board entry point (MicroPython runs main.py after boot.py). Reads /config.json, creates
# the board's hal and its transport, and runs the meter forever; the app joins Wi-Fi.
#
# main.py is part of the loader with core/fwstore.py and core/fs.py (docs/PROTOCOL.md
# section 22): a firmware update never replaces them, so when the modules of an image on
# trial fail to import or crash, the except below still rolls the image back and resets.
import json


def load_config(path="config.json"):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError:
        return {}


def run(config):
    from app import App
    from hal import make_board

    board = make_board(config)
    transport = None
    if config.get("transport") == "mqtt":
        from transport_mqtt import MqttTransport

        transport = MqttTransport(board, config)
    elif config.get("transport") == "rs485":
        from transport_rs485 import Rs485Slave

        transport = Rs485Slave(board.uart_rs485("bus"), config["rs485_address"], config.get("rs485_baud", 19200))
    app = App(board, config, transport, log=print)
    app.start()
    app.run_forever(config.get("period_ms", 1000))


def recover(config, err):
    """The app died: an image on trial goes back to the previous one; then reset."""
    from core import fwstore
    from core.fs import VfsFS

    print("     0 E main: crashed: " + repr(err))
    data = VfsFS(config.get("data_dir", "/data"))
    if fwstore.load(data)["state"] in ("installing", "trial"):
        rec = fwstore.rollback(data, VfsFS(config.get("fw_dir", "/")), "crashed: " + repr(err)[:120])
        print("     0 E ota: rolled back from " + rec["rolled_back"] + ": " + rec["reason"])
    import machine

    machine.reset()


def main():
    config = load_config()
    try:
        run(config)
    except Exception as e:  # noqa: BLE001  anything: roll back a bad image, reset
        recover(config, e)


main()
