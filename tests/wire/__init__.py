"""Tests: the wire contract (meterledger.wire) against golden vectors and independent references."""
