# Board entry point (MicroPython runs main.py after boot.py). Reads /config.json,
# creates the board's hal, connects Wi-Fi and runs the meter forever.
import json

from app import App
from hal import make_board


def load_config(path="config.json"):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError:
        return {}


def main():
    config = load_config()
    board = make_board(config)
    if config.get("wifi_ssid"):
        board.wifi_connect(config["wifi_ssid"], config.get("wifi_password", ""))
    transport = None
    if config.get("transport") == "mqtt":
        from transport_mqtt import MqttTransport  # arrives with the MQTT issue

        transport = MqttTransport(board, config)
    elif config.get("transport") == "rs485":
        from transport_rs485 import Rs485Slave

        transport = Rs485Slave(board.uart_rs485("bus"), config["rs485_address"], config.get("rs485_baud", 19200))
    app = App(board, config, transport)
    app.start()
    app.run_forever(config.get("period_ms", 1000))


main()
