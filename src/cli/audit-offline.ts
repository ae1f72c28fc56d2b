import { createReadStream, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import BetterSqlite3 from 'better-sqlite3';
import { verifyStore } from '../audit/audit-log.js';
import { parseCheckpoint, type Checkpoint, type WitnessEntry } from '../audit/checkpoint.js';
import { verifyWithWitness, type WitnessInput, type WitnessVerifyResult } from '../audit/checkpoint-verify.js';
import { verifyRecords, type VerifyResult } from '../audit/chain.js';
import { KeyhavenError } from '../errors.js';
import { openAuditKeys, STORE_ID_META } from '../keys/open-keyhaven.js';
import { readKeyFile } from '../seal/keyfile.js';
import { sqliteReader } from '../storage/sqlite-reader.js';
import type { AuditRow } from '../storage/store.js';

// Verification without a running server: a copy of the database (or the live
// file, read-only) and an exported JSON-lines file.


/**
 * Verifies the audit chain of a SQLite database opened read-only. With the
 * root key file the signed head is checked too (the key derivation matches
 * the server's); without it only the hash chain.
 */

/** A read stream that has opened, or a readable error naming the file (never its content). */
async function openForReading(path: string, what: string): Promise<ReturnType<typeof createReadStream>> {
  const input = createReadStream(path);
  try {
    await new Promise<void>((resolve, reject) => {
      input.once('open', () => resolve());
      input.once('error', reject);
    });
  } catch (e) {
    throw new KeyhavenError('config_invalid', `cannot read ${what}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  return input;
}

export async function verifyDatabase(path: string, rootKeyFile?: string, witness?: WitnessInput): Promise<(VerifyResult | WitnessVerifyResult) & { headChecked: boolean }> {
  let headKey: Buffer | undefined;
  let checkpointKey: Buffer | undefined;
  if (witness && !rootKeyFile) throw new KeyhavenError('invalid_argument', '--witness needs --root-key-file: checkpoints are signed with a key derived from the root key');
  // Read before the database is opened: a bad key file is named before anything else.
  const rootKey = rootKeyFile ? readKeyFile(rootKeyFile) : undefined;
  let db: BetterSqlite3.Database;
  try {
    db = new BetterSqlite3(path, { readonly: true, fileMustExist: true });
  } catch (e) {
    rootKey?.fill(0);
    throw new KeyhavenError('config_invalid', `cannot open database ${path} read-only: ${(e as Error).message}`);
  }
  try {
    const tables = db.prepare<[], { name: string }>("select name from sqlite_master where type = 'table' and name in ('audit', 'meta')").all();
    if (tables.length !== 2) throw new KeyhavenError('config_invalid', `${path} is not a keyhaven database (no audit table)`);
    // verifyStore reads only audit pages, meta and barrier entries.
    const reader = sqliteReader(db);
    // The same derivation as the server and the embedded store; a key that does not open this database is refused here.
    if (rootKey) ({ headKey, checkpointKey } = await openAuditKeys(reader, rootKey));
    // One read transaction: the chain and its head come from the same snapshot
    // even while a server keeps appending.
    db.exec('begin');
    try {
      if (witness) {
        const res = await verifyWithWitness((anchors) => verifyStore(reader, headKey, { anchors }), await reader.getMeta(STORE_ID_META), checkpointKey!, witness);
        return { ...res, headChecked: true };
      }
      return { ...(await verifyStore(reader, headKey)), headChecked: headKey !== undefined };
    } finally {
      db.exec('commit');
    }
  } catch (e) {
    if (e instanceof KeyhavenError) throw e;
    throw new KeyhavenError('config_invalid', `cannot read the audit log in ${path}: ${(e as Error).message}`);
  } finally {
    db.close();
    rootKey?.fill(0);
    headKey?.fill(0);
    checkpointKey?.fill(0);
  }
}

const HEX64 = /^[0-9a-f]{64}$/;

/** A JSON object at the start of the line, or after a syslog header ("<pri>1 … - {…}"). */
function jsonOf(line: string): unknown {
  const t = line.trim();
  if (t === '') return undefined;
  const start = t.startsWith('{') ? 0 : t.startsWith('<') ? t.indexOf(' - {') + 3 : -1;
  if (start < 0 || (start > 0 && start < 3)) return undefined;
  try {
    return JSON.parse(t.slice(start));
  } catch {
    return undefined;
  }
}

/**
 * Reads a witness: one file, or every regular file in a folder (by name).
 * Checkpoint lines ({"checkpoint":{…}}) and copied audit records are kept;
 * every other line (server logs, blank lines) is skipped.
 */
export async function readWitness(path: string): Promise<WitnessInput> {
  let files: string[];
  try {
    files = statSync(path).isDirectory()
      ? readdirSync(path)
          .sort()
          .map((n) => join(path, n))
          .filter((f) => statSync(f).isFile())
      : [path];
  } catch (e) {
    throw new KeyhavenError('config_invalid', `cannot read the witness ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  const checkpoints: WitnessEntry<Checkpoint>[] = [];
  const records: WitnessEntry<{ seq: number; hash: string }>[] = [];
  const malformed: WitnessEntry<string>[] = [];
  for (const file of files) {
    const input = await openForReading(file, `the witness file ${file}`);
    const lines = createInterface({ input, crlfDelay: Infinity });
    let n = 0;
    try {
      for await (const line of lines) {
        n += 1;
        const v = jsonOf(line);
        if (typeof v !== 'object' || v === null) continue;
        const o = v as Record<string, unknown>;
        const at = `${file}:${n}`;
        if ('checkpoint' in o) {
          const c = parseCheckpoint(o.checkpoint);
          if (typeof c === 'string') malformed.push({ at, value: c });
          else checkpoints.push({ at, value: c });
        } else if (Number.isSafeInteger(o.seq) && (o.seq as number) > 0 && typeof o.hash === 'string' && HEX64.test(o.hash) && typeof o.prev_hash === 'string' && typeof o.operation === 'string') {
          records.push({ at, value: { seq: o.seq as number, hash: o.hash } });
        }
      }
    } finally {
      lines.close();
      input.destroy();
    }
  }
  if (checkpoints.length === 0 && malformed.length === 0) {
    throw new KeyhavenError('invalid_argument', `the witness ${path} holds no checkpoints (is audit.checkpoint or an audit sink configured on the server?)`);
  }
  return { checkpoints, records, malformed };
}

export interface FileVerifyResult extends VerifyResult {
  readonly firstSeq?: number;
  readonly lastSeq?: number;
  readonly lastHash?: string;
}

const nullable = (v: unknown, t: 'string' | 'number') => v === null || typeof v === t;

function asRow(v: unknown): AuditRow | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const r = v as Record<string, unknown>;
  const ok =
    Number.isSafeInteger(r.seq) &&
    typeof r.time === 'string' &&
    typeof r.actor === 'string' &&
    typeof r.operation === 'string' &&
    nullable(r.key_name, 'string') &&
    nullable(r.key_version, 'number') &&
    typeof r.result === 'string' &&
    nullable(r.request_id, 'string') &&
    nullable(r.details, 'string') &&
    typeof r.prev_hash === 'string' &&
    typeof r.hash === 'string';
  return ok ? (r as unknown as AuditRow) : undefined;
}

/**
 * Verifies an exported JSON-lines file: each record links to the one before,
 * starting from the first line's own seq and prev_hash (an export may begin
 * after record 1). It proves the file is internally consistent; comparing its
 * last hash with the live log ties it to the server.
 */
export async function verifyExportFile(path: string): Promise<FileVerifyResult> {
  const input = await openForReading(path, path);
  const lines = createInterface({ input, crlfDelay: Infinity });
  let batch: AuditRow[] = [];
  let prev: string | undefined;
  let expect: number | undefined;
  let firstSeq: number | undefined;
  let records = 0;
  let lineNo = 0;
  let lastHash: string | undefined;
  const flush = (): VerifyResult | undefined => {
    if (batch.length === 0) return undefined;
    const res = verifyRecords(batch, prev, expect);
    if (!res.ok) return { ok: false, records: records + res.records, firstBroken: res.firstBroken! };
    records += res.records;
    const last = batch[batch.length - 1]!;
    prev = last.hash;
    expect = last.seq + 1;
    lastHash = last.hash;
    batch = [];
    return undefined;
  };
  try {
    for await (const line of lines) {
      lineNo += 1;
      if (line.trim() === '') continue;
      let row: AuditRow | undefined;
      try {
        row = asRow(JSON.parse(line));
      } catch {
        row = undefined;
      }
      const seqHere = (expect ?? firstSeq ?? 1) + batch.length;
      if (!row) {
        const broken = flush();
        if (broken) return broken;
        return { ok: false, records, firstBroken: { seq: seqHere, reason: `line ${lineNo} is not an audit record (malformed JSON or fields)` } };
      }
      if (firstSeq === undefined) {
        firstSeq = row.seq;
        prev = row.prev_hash;
        expect = row.seq;
      }
      batch.push(row);
      if (batch.length >= 1000) {
        const broken = flush();
        if (broken) return broken;
      }
    }
  } finally {
    lines.close();
    input.destroy();
  }
  const broken = flush();
  if (broken) return broken;
  if (firstSeq === undefined) throw new KeyhavenError('invalid_argument', `${path} holds no audit records`);
  return { ok: true, records, firstSeq, lastSeq: expect! - 1, lastHash: lastHash! };
}
