"""How bytes reach ingest: MQTT (`mqtt`) and the RS485 bus (`rs485`)."""
