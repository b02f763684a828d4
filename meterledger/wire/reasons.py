"""Every stable reason code a receiver reports, in one place (docs/PROTOCOL.md sections 3,
12, 15 and 23). Counters, logs, API answers and verify-chain use these strings; they never
change meaning. `tests/wire/test_reasons.py` checks that every reason the code raises is
listed here.
"""

from __future__ import annotations

# SPEC section 3, in the order receivers check (the first failure is the one reported)
ENVELOPE = (
    "too_large", "malformed", "not_deterministic", "forbidden_type", "out_of_range",
    "trailing_bytes",
    "bad_tag", "bad_structure", "bad_protected", "bad_kid", "bad_signature_encoding",
    "bad_payload", "unknown_type", "kid_mismatch", "sig_out_of_range", "high_s",
    "bad_signature", "bad_fields",
)
# encoding a value the deterministic CBOR subset cannot carry; a public key not on P-256
ENCODING = ("unencodable", "bad_public_key")
# the fog's ingest (section 12): what a receiver's policy refuses after the checks above
INGEST = (
    "topic_mismatch", "wrong_type", "revoked", "wrong_fog", "equivocation", "future_t",
    "prev_mismatch", "bad_batch",
)
# the dispatch chain (section 15): common checks, then each kind's rule
CHAIN = (
    "duplicate", "wrong_type", "unregistered", "wrong_chain", "nonce_reused", "nonce_gap",
    "not_permitted", "already_registered", "unknown_fog", "unknown_rules",
    "unknown_instruction", "rules_version", "rules_registered", "bad_genesis", "unavailable",
    "rules_invalid",
)
# the SPEC section 8 anchor rule and the aggregates an anchor carries (sections 15, 19)
ANCHOR = (
    "anchor_bad_checkpoint", "anchor_wrong_fog", "anchor_height", "anchor_prev",
    "anchor_size_shrank", "anchor_t_backwards", "anchor_consistency", "anchor_bad_aggregate",
    "anchor_aggregate_chain", "anchor_missing_aggregate", "anchor_aggregate_ivl",
    "anchor_bad_statement", "anchor_statement_repeated",
)
# the applications' kinds (section 25): green certificates
APPLICATIONS = (
    "application_disabled", "bad_params", "params_version", "generator_exists", "meter_taken",
    "unknown_participant", "unknown_certificate", "not_owner", "certificate_retired",
    "certificate_spent", "split_out_of_range",
    # carbon allowances and the notaries (section 26)
    "unknown_generator", "not_emitter", "already_allocated", "period_open",
    "no_verified_output", "period_closed", "insufficient_allowance", "already_settled",
    "not_renewable", "ccer_claimed", "bad_record", "unknown_source", "record_applied",
    "attest_repeated", "not_locked", "certificate_locked", "certificate_converted",
    "out_of_range", "params_frozen",
    # grid access and the P2P market (section 27)
    "not_enrolled", "already_enrolled", "unknown_line", "network_version", "not_admitted",
    "insufficient_points", "market_mode", "bad_cycle", "gate_closed", "gate_open",
    "reveal_closed", "cycle_closed", "cycle_open", "bid_below_floor", "quotes_exhausted",
    "requote_not_monotonic", "no_order", "already_committed", "no_commitment",
    "already_revealed", "reveal_mismatch", "unknown_contract", "not_party", "contract_closed",
    "signing_closed", "already_signed", "delivery_pending", "not_delivered",
    "already_reviewed", "line_in_use", "green_uncovered",
    "terms_mismatch",
    # tariffs and bills (section 28)
    "tariff_version", "tariff_retroactive", "unknown_tariff", "tariff_mismatch",
    "already_approved", "tariff_started", "tariff_not_in_force", "period_open",
    "receipt_repeated", "unknown_receipt", "period_overlap",
    # outage credits (section 28)
    "no_outage_record", "within_grace", "credit_mismatch", "credit_repeated",
    # points redeemed against bills (section 28)
    "points_not_accepted", "points_too_few",
    # closed outage records (sections 18, 28): an outage ending after the chain's time
    "outage_future",
    # device and operator traceability (section 29)
    "unknown_device", "device_registered", "device_state", "firmware_repeated",
    "ticket_unknown", "ticket_decided", "ticket_not_approved", "ticket_not_open",
    "ticket_expired", "ticket_executed", "not_ticket_holder", "operation_ticketed",
    "unknown_fault", "already_determined", "determination_mismatch",
    # home demand response (section 30)
    "unknown_offer", "offer_taken", "not_offered_to_you", "offer_lapsed", "meter_contracted",
    "contract_inactive", "unknown_event", "event_ended", "pref_lapsed", "prefs_exhausted",
    "event_exists", "event_started", "compensation_owed", "not_the_meters_fog",
    "contract_mismatch", "event_open", "report_repeated", "unknown_report", "nothing_owed",
)
# verify-chain's replay of stored blocks (section 15)
REPLAY = (
    "missing_block", "bad_height", "bad_prev", "t_backwards", "bad_ntx", "bad_txroot",
    "untrusted_sealer", "derived_state", "state_root",
    # a consortium validator's blocks (section 23): the app's block record, CometBFT's hash
    "bad_record", "bad_block_hash",
)

# a consortium block's proof (section 23: meterledger.wire.cometbft, in the order it checks)
COMETBFT = (
    "bad_header", "bad_commit", "bad_validators", "bad_block", "bad_tx_proof",
    "commit_wrong_chain", "commit_wrong_block", "validators_mismatch", "commit_wrong_size",
    "commit_unknown_signer", "commit_duplicate_signer", "commit_signer_order",
    "commit_bad_signature", "commit_insufficient_power", "tx_not_in_block",
)
ALL = frozenset((*ENVELOPE, *ENCODING, *INGEST, *CHAIN, *ANCHOR, *APPLICATIONS, *REPLAY, *COMETBFT))
