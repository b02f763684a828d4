"""The consortium backend: the chain's state machine as an ABCI 2.0 application of CometBFT
(docs/PROTOCOL.md section 23)."""
