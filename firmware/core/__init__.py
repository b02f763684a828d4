# MeterLedger firmware core: pure logic over bytes and integers.
# Never imports machine or network (only firmware/hal does), so the same code runs on
# CPython (virtual meters, tests) and on MicroPython (ESP32, RP2).
