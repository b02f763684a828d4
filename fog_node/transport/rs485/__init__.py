"""The fog as Modbus RTU master on an RS485 bus."""
