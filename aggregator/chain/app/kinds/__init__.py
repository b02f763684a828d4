"""The chain's transaction kinds, one module each, registered here explicitly.

Adding a kind: its body schema and body rules in `meterledger.wire.chain` (the contract the
fog and auditors check too), one module here with KIND, ROLE and check() (see `base`), and
one line in KINDS below.
"""

from __future__ import annotations

from aggregator.chain.app.kinds import (
    anchor,
    attest,
    bl_approve,
    bl_credit,
    bl_receipt,
    bl_redeem,
    bl_tariff,
    cb_allocate,
    cb_ccer,
    cb_settle,
    cb_transfer,
    dr_accept,
    dr_event,
    dr_offer,
    dr_pref,
    dr_report,
    dr_settle,
    dv_alarm,
    dv_approve,
    dv_determine,
    dv_execute,
    dv_firmware,
    dv_maintain,
    dv_register,
    dv_status,
    dv_ticket,
    fault,
    gc_lock,
    gc_retire,
    gc_split,
    gc_transfer,
    generator,
    instruction,
    mk_access,
    mk_cancel,
    mk_clear,
    mk_commit,
    mk_enroll,
    mk_network,
    mk_order,
    mk_reveal,
    mk_review,
    mk_settle,
    mk_sign,
    mk_transfer,
    params,
    register,
    report,
    rules,
)
from aggregator.chain.app.kinds.base import KindRule

KINDS: dict[str, KindRule] = {m.KIND: m for m in (register, anchor, instruction, report,
                                                      fault, rules, params, generator,
                                                      gc_transfer, gc_split, gc_retire,
                                                      gc_lock, cb_allocate, cb_transfer,
                                                      cb_settle, cb_ccer, attest, mk_enroll,
                                                      mk_access, mk_transfer, mk_network,
                                                      mk_order, mk_cancel, mk_commit,
                                                      mk_reveal, mk_clear, mk_sign,
                                                      mk_settle, mk_review, bl_tariff,
                                                      bl_approve, bl_receipt, bl_credit, bl_redeem,
                                                      # section 29: devices, tickets
                                                      dv_register, dv_status, dv_maintain,
                                                      dv_firmware, dv_ticket, dv_approve,
                                                      dv_execute, dv_alarm, dv_determine,
                                                      # section 30: demand response
                                                      dr_offer, dr_accept, dr_pref, dr_event,
                                                      dr_report, dr_settle)}
