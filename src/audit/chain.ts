import { createHash, createHmac } from 'node:crypto';
import { GENESIS_HASH, type AuditDraft, type AuditRow } from '../storage/store.js';

// Each record's hash covers the previous record's hash and every field of its
// own, in a fixed order, so any edit, deletion, insertion or reordering breaks
// the chain from that record on.
export function linkRecord(prevHash: string, seq: number, d: AuditDraft): string {
  const body = JSON.stringify([seq, d.time, d.actor, d.operation, d.key_name, d.key_version, d.result, d.request_id, d.details]);
  return createHash('sha256').update(prevHash).update('\n').update(body).digest('hex');
}

// The chain head (last seq and hash) is stored with an HMAC under a key
// derived from the root key, updated in the same transaction as the records.
// It catches what a bare hash chain cannot: records cut from the end, and
// records appended (or a chain rewritten) by someone without the root key.
export function headMac(key: Buffer, seq: number, hash: string): string {
  return createHmac('sha256', key).update(`keyhaven audit head v1\n${seq}\n${hash}`).digest('hex');
}

/** The stored chain head value for the newest record, signed with the head key. */
export function headValue(key: Buffer): (last: AuditRow) => string {
  return (last) => JSON.stringify({ seq: last.seq, hash: last.hash, mac: headMac(key, last.seq, last.hash) });
}

export interface VerifyResult {
  readonly ok: boolean;
  readonly records: number;
  /** The first record whose hash or link does not hold. */
  readonly firstBroken?: { seq: number; reason: string };
}

/** Verifies records in order; `prev` is the expected hash before the first one. */
export function verifyRecords(rows: Iterable<AuditRow>, prev = GENESIS_HASH, expectSeq = 1): VerifyResult {
  let records = 0;
  for (const row of rows) {
    if (row.seq !== expectSeq) return { ok: false, records, firstBroken: { seq: row.seq, reason: `expected record ${expectSeq}, found ${row.seq} (deleted or reordered)` } };
    if (row.prev_hash !== prev) return { ok: false, records, firstBroken: { seq: row.seq, reason: 'previous-hash link does not match' } };
    if (linkRecord(prev, row.seq, row) !== row.hash) return { ok: false, records, firstBroken: { seq: row.seq, reason: 'record content does not match its hash (edited)' } };
    prev = row.hash;
    expectSeq += 1;
    records += 1;
  }
  return { ok: true, records };
}
