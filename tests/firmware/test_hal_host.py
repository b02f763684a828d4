"""The host Board (hal/host.py): the same interface as the MicroPython boards, on CPython."""

import pytest

import hal
from hal.host import Board, HostReboot


def test_make_board_picks_host_under_cpython(tmp_path):
    assert hal.detect() == "host"
    board = hal.make_board({"data_dir": str(tmp_path)})
    assert isinstance(board, Board)
    assert board.name == "host"
    with pytest.raises(ValueError, match="unknown board"):
        hal.make_board({}, kind="stm32")


def test_fs_round_trip_in_data_dir(tmp_path):
    root = tmp_path / "meter" / "data"
    fs = Board({"data_dir": str(root)}).fs()
    fs.mkdir("spool")
    fs.write("spool/a.tmp", b"\x00reading\xff")
    fs.rename("spool/a.tmp", "spool/a")
    assert fs.read("spool/a") == b"\x00reading\xff"
    assert (root / "spool" / "a").read_bytes() == b"\x00reading\xff"
    assert fs.listdir("spool") == ["a"]
    assert fs.exists("spool/a") and not fs.exists("spool/a.tmp")
    fs.remove("spool/a")
    assert fs.listdir("spool") == []
    with pytest.raises(OSError):
        fs.read("spool/a")


def test_fs_is_created_once_and_needs_a_data_dir(tmp_path):
    board = Board({"data_dir": str(tmp_path)})
    assert board.fs() is board.fs()
    with pytest.raises(ValueError, match="data_dir"):
        Board({}).fs()


def test_injectable_clock_and_set_time_offset():
    t = [1_700_000_000.7]
    board = Board({"clock": lambda: t[0], "synced": False})
    assert board.now() == 1_700_000_000
    assert not board.clock_synced()
    board.set_time(1_750_000_000)
    assert board.clock_synced()
    assert board.now() == 1_750_000_000
    t[0] += 900  # compressed time: one reading interval later
    assert board.now() == 1_750_000_900


def test_default_clock_is_real_time_and_synced():
    import time

    board = Board({})
    assert board.clock_synced()
    assert abs(board.now() - time.time()) <= 1
    assert board.sync_ntp()
    assert not Board({"synced": False, "ntp_ok": False}).sync_ntp()


def test_ticks_and_sleep_injectable():
    ms = [5_000]
    slept: list[int] = []
    board = Board({"ticks_ms": lambda: ms[0], "sleep_ms": slept.append})
    a = board.ticks_ms()
    ms[0] += 1234
    assert board.ticks_diff(board.ticks_ms(), a) == 1234
    board.sleep_ms(250)
    assert slept == [250]


def test_real_ticks_are_monotonic():
    board = Board({})
    a = board.ticks_ms()
    board.sleep_ms(2)
    assert board.ticks_diff(board.ticks_ms(), a) >= 1


def test_pulse_injection():
    board = Board({"s0_pin": 5})
    assert board.pulse_count() == 0
    board.inject_pulses(3)
    board.inject_pulses(997)
    assert board.pulse_count() == 1000


def test_relay_state_in_memory():
    board = Board({})
    assert board.relay() is True  # boots with the supply connected
    assert board.relay(False) is False
    assert board.relay() is False
    assert board.relay(True) is True
    assert Board({"relay_initial": False}).relay() is False


def test_reset_cause_from_config():
    assert Board({}).reset_cause() == "power"
    assert Board({"reset_cause": "wdt"}).reset_cause() == "wdt"


def test_reboot_never_returns():
    with pytest.raises(HostReboot):
        Board({}).reboot()


def test_watchdog_is_a_no_op_before_start():
    board = Board({})
    board.watchdog_feed()
    assert board.wdt_feeds == 0
    board.watchdog_start(8000)
    board.watchdog_feed()
    assert (board.wdt_timeout_ms, board.wdt_feeds) == (8000, 1)


def test_machine_id_random_wifi_led(tmp_path):
    assert Board({"machine_id": b"\x01\x02"}).machine_id() == b"\x01\x02"
    assert Board({"machine_id": "meter-7"}).machine_id() == b"meter-7"
    a = Board({"data_dir": str(tmp_path / "a")}).machine_id()
    assert a == Board({"data_dir": str(tmp_path / "a")}).machine_id()
    assert a != Board({"data_dir": str(tmp_path / "b")}).machine_id()
    board = Board({})
    r = board.random_bytes(32)
    assert len(r) == 32 and r != board.random_bytes(32)
    assert board.wifi_connect("ssid", "pw") and board.wifi_connected()
    board.led(True)
    assert board.led_on


def test_rs485_needs_a_port():
    with pytest.raises(ValueError, match="rs485_port"):
        Board({}).uart_rs485()
    with pytest.raises(ValueError, match="meter_port"):
        Board({}).uart_rs485("meter")


def test_rs485_over_pyserial_loopback():
    board = Board({"rs485_port": "loop://"})
    port = board.uart_rs485()
    assert port is board.uart_rs485()
    assert port.any() == 0 and port.read(10) is None
    assert port.write(b"\x01\x03frame") == 7
    assert port.any() == 7
    assert port.read(4) == b"\x01\x03fr"
    assert port.read(10) == b"ame"
    assert port.port.baudrate == 19200
    assert Board({"meter_port": "loop://"}).uart_rs485("meter").port.baudrate == 9600
