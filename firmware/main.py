# Board entry point (MicroPython runs main.py after boot.py). Reads /config.json, creates
# the board's hal and its transport, and runs the meter forever; the app joins Wi-Fi.
#
# main.py is the loader with core/fwstore.py, core/fs.py and core/__init__.py (docs/PROTOCOL.md
# section 22): a firmware update never replaces them. Before it imports anything an update
# does replace (app, hal, the transports), it arms the hardware watchdog and runs the
# firmware journal (fwstore.boot): a rollback or an install a power loss cut short is
# finished, an image on trial counts this boot and goes back to the old one after
# "ota_max_boots" (3) boots that never reached the fog. So a new image that hangs while
# importing is reset by the watchdog (a boot counted), and one that raises, even at its
# import, is rolled back at once by recover() below.
import json
import sys

_WDT_MIN_MS = 8000
_RP2_WDT_MAX_MS = 8388  # the longest the rp2 watchdog can wait
_BOARDS = ("esp32", "rp2")


def load_config(path="config.json"):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError:
        return {}


def dirs(config):
    """(data dir, firmware dir), defaulted as the hal does: the flash root holds the
    firmware on a board, data_dir/fw on a host (hal/host.py)."""
    data = config.get("data_dir", "/data")
    fw = config.get("fw_dir")
    if not fw:
        fw = "/" if sys.platform in _BOARDS else data.rstrip("/") + "/fw"
    return data, fw


def arm_watchdog(config):
    """The hardware watchdog, started before the app is imported (None without `machine`:
    a host). run() hands it to the board, whose watchdog_feed() the app calls."""
    try:
        import machine
    except ImportError:
        return None
    ms = max(_WDT_MIN_MS, 4 * config.get("period_ms", 1000))
    if sys.platform == "rp2":
        ms = min(ms, _RP2_WDT_MAX_MS)
    return machine.WDT(timeout=ms)


def check_image(config):
    """The firmware journal at boot (fwstore.boot); returns it. After a rollback the old
    image's files are back: the app imported next is the old one."""
    from core import fwstore
    from core.fs import VfsFS

    data, fw = dirs(config)
    rec, rolled = fwstore.boot(VfsFS(data), VfsFS(fw), config.get("ota_max_boots", 3))
    if rolled:
        print("     0 E ota: rolled back from " + rec["rolled_back"] + ": " + rec["reason"])
    return rec


def run(config, wdt=None):
    from app import App
    from hal import make_board

    board = make_board(config)
    if wdt is not None:  # the loader's watchdog: the app and the hal feed it through the board
        board.watchdog_feed = wdt.feed
        board.watchdog_start = lambda ms: wdt.feed()
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
    data_dir, fw_dir = dirs(config)
    data = VfsFS(data_dir)
    if fwstore.load(data)["state"] in ("installing", "trial", "rolling_back"):
        rec = fwstore.rollback(data, VfsFS(fw_dir), "crashed: " + repr(err)[:120])
        print("     0 E ota: rolled back from " + rec["rolled_back"] + ": " + rec["reason"])
    reset()


def reset():
    try:
        import machine
    except ImportError:  # a host: whoever runs the meter starts it again
        raise SystemExit("reset") from None
    machine.reset()


def main():
    config = load_config()
    wdt = arm_watchdog(config)
    try:
        check_image(config)
        run(config, wdt)
    except Exception as e:  # noqa: BLE001  anything, the new image's imports too: roll back, reset
        recover(config, e)


if __name__ != "main":  # a board runs it as __main__; `import main` (tests) only defines
    main()
