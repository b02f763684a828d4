"""MeterLedger's shared library: the wire contract (`meterledger.wire`), plumbing the services
share (`meterledger.infra`), HTTP clients of the fog and chain APIs (`meterledger.clients`), the
error root (`meterledger.errors`) and the `meterledger` console script (`meterledger.cli`)."""
