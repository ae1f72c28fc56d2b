import type { StoreVerifyResult } from './audit-log.js';
import type { VerifyResult } from './chain.js';
import { checkCheckpoints, type Anchor, type Checkpoint, type WitnessEntry, type WitnessFailure } from './checkpoint.js';

// Verification against a witness: the checkpoints (and, from a sink file,
// copied records) say what the chain held when they were written; the
// database must still hold exactly that, and at least that much.

export interface WitnessInput {
  readonly checkpoints: readonly WitnessEntry<Checkpoint>[];
  /** (seq, hash) of audit records copied by a sink; unsigned, but outside the database. */
  readonly records?: readonly WitnessEntry<{ seq: number; hash: string }>[];
  /** Lines that claim to be checkpoints but are not well-formed: reported, never trusted. */
  readonly malformed?: readonly WitnessEntry<string>[];
}

export interface WitnessVerifyResult extends VerifyResult {
  readonly witness: {
    readonly checkpoints: number;
    readonly records: number;
    /** The newest trusted checkpoint: the log must reach at least this far. */
    readonly newest?: { seq: number; time: string; at: string };
    /** Every failure, oldest record first (at most MAX_REPORTED), and how many there were. */
    readonly failures: WitnessFailure[];
    readonly failureCount: number;
  };
}

const MAX_REPORTED = 100;

/** "file:line" → "file"; "#3" → "request". */
function sourceOf(at: string): string {
  const i = at.lastIndexOf(':');
  return i > 0 ? at.slice(0, i) : 'request';
}

/**
 * Checks the witness's checkpoints (signature, store, links), then walks the
 * chain with `verify` (verifyStore with the head key) against every trusted
 * anchor. `storeId` is the database's (meta "store_id").
 */
export async function verifyWithWitness(
  verify: (anchors: readonly Anchor[]) => Promise<StoreVerifyResult>,
  storeId: string | undefined,
  checkpointKey: Buffer,
  w: WitnessInput,
): Promise<WitnessVerifyResult> {
  const checked = checkCheckpoints(checkpointKey, storeId ?? '(none: the store id is missing)', w.checkpoints, sourceOf);
  const anchors: Anchor[] = [...checked.anchors, ...(w.records ?? []).map((r) => ({ at: r.at, seq: r.value.seq, hash: r.value.hash, what: 'record' as const }))];
  const res = await verify(anchors);
  const bad: WitnessFailure[] = (w.malformed ?? []).map((m) => ({ at: m.at, seq: 0, problem: 'signature', reason: `the checkpoint at ${m.at} is malformed (${m.value}); not trusted` }));
  const failures = [...bad, ...checked.failures, ...(res.anchorFailures ?? [])].sort((a, b) => a.seq - b.seq);
  let newest: { seq: number; time: string; at: string } | undefined;
  const trusted = new Set(checked.anchors.map((a) => a.at));
  for (const { at, value } of w.checkpoints) {
    if (trusted.has(at) && (!newest || value.seq > newest.seq)) newest = { seq: value.seq, time: value.time, at };
  }
  const witness = { checkpoints: w.checkpoints.length, records: w.records?.length ?? 0, ...(newest ? { newest } : {}), failures: failures.slice(0, MAX_REPORTED), failureCount: failures.length };
  const { anchorFailures: _, ...base } = res;
  if (!base.ok) return { ...base, witness };
  if (failures.length) return { ok: false, records: base.records, firstBroken: { seq: failures[0]!.seq, reason: failures[0]!.reason }, witness };
  return { ...base, witness };
}
