// The one registry of message types (meterledger/wire/types.py): the meter's (1-8), the
// fog's cooked data (10, 11) and the dispatch chain's (12, 13). Which types exist decides
// `unknown_type` in the envelope checks, so the list is explicit here too.
import { CHAIN_TYPES } from './chain.js';
import { COOKED_TYPES } from './cooked.js';
import { METER_TYPES } from './meter.js';
import { repr } from './pyfmt.js';
import { badFields, checkSchema, isInt } from './schema.js';

const TYPES = new Map([...METER_TYPES, ...COOKED_TYPES, ...CHAIN_TYPES]
  .map((mt) => [BigInt(mt.type), mt]));

/** The payload key holding the signer's id for a known type, else undefined. */
export function signerField(type) {
  const mt = TYPES.get(type);
  return mt === undefined ? undefined : BigInt(mt.signerField);
}

/** bad_fields unless the payload matches its type's schema and rule (PROTOCOL.md s. 4). */
export function checkFields(fields) {
  const t = fields.get(0n);
  const mt = isInt(t) ? TYPES.get(t) : undefined;
  if (mt === undefined) throw badFields(`no schema for message type ${repr(t)}`);
  checkSchema(mt, fields);
  if (mt.rule !== null) mt.rule(fields);
}
