import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import BetterSqlite3 from 'better-sqlite3';
import { verifyStore } from '../audit/audit-log.js';
import { verifyRecords, type VerifyResult } from '../audit/chain.js';
import { deriveKey } from '../crypto/kdf.js';
import { KeyhavenError } from '../errors.js';
import { readKeyFile } from '../seal/keyfile.js';
import type { AuditRow, Store } from '../storage/store.js';

// Verification without a running server: a copy of the database (or the live
// file, read-only) and an exported JSON-lines file.

const COLUMNS = 'seq, time, actor, operation, key_name, key_version, result, request_id, details, prev_hash, hash';

/**
 * Verifies the audit chain of a SQLite database opened read-only. With the
 * root key file the signed head is checked too (the key derivation matches
 * the server's); without it only the hash chain.
 */
export async function verifyDatabase(path: string, rootKeyFile?: string): Promise<VerifyResult & { headChecked: boolean }> {
  let headKey: Buffer | undefined;
  if (rootKeyFile) {
    const rootKey = readKeyFile(rootKeyFile);
    try {
      headKey = deriveKey(rootKey, 'keyhaven audit head key v1');
    } finally {
      rootKey.fill(0);
    }
  }
  let db: BetterSqlite3.Database;
  try {
    db = new BetterSqlite3(path, { readonly: true, fileMustExist: true });
  } catch (e) {
    throw new KeyhavenError('config_invalid', `cannot open database ${path} read-only: ${(e as Error).message}`);
  }
  try {
    const tables = db.prepare<[], { name: string }>("select name from sqlite_master where type = 'table' and name in ('audit', 'meta')").all();
    if (tables.length !== 2) throw new KeyhavenError('config_invalid', `${path} is not a keyhaven database (no audit table)`);
    const page = db.prepare<[number, number], AuditRow>(`select ${COLUMNS} from audit where seq > ? order by seq limit ?`);
    const meta = db.prepare<[string], { value: string }>('select value from meta where name = ?');
    // verifyStore reads only these two; the rest of Store is never reached.
    const reader = {
      readAudit: async (after: number, limit: number) => page.all(after, limit),
      getMeta: async (name: string) => meta.get(name)?.value,
    } as Pick<Store, 'readAudit' | 'getMeta'> as Store;
    // One read transaction: the chain and its head come from the same snapshot
    // even while a server keeps appending.
    db.exec('begin');
    try {
      return { ...(await verifyStore(reader, headKey)), headChecked: headKey !== undefined };
    } finally {
      db.exec('commit');
    }
  } catch (e) {
    if (e instanceof KeyhavenError) throw e;
    throw new KeyhavenError('config_invalid', `cannot read the audit log in ${path}: ${(e as Error).message}`);
  } finally {
    db.close();
    headKey?.fill(0);
  }
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
  const input = createReadStream(path);
  const opened = new Promise<void>((resolve, reject) => {
    input.once('open', () => resolve());
    input.once('error', reject);
  });
  try {
    await opened;
  } catch (e) {
    throw new KeyhavenError('config_invalid', `cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
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
