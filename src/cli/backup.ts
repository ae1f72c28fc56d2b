import { closeSync, existsSync, fstatSync, fsyncSync, openSync, readSync, statSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { verifyStore } from '../audit/audit-log.js';
import { CANARY_PATH, openBarrier } from '../barrier/barrier.js';
import { KeyhavenError } from '../errors.js';
import { openAuditKeys, STORE_ID_META } from '../keys/open-keyhaven.js';
import { SEAL_META, type Seal, type SealRecord } from '../seal/seal.js';
import { sqliteReader } from '../storage/sqlite-reader.js';

// Backups of a SQLite store and the check that a backup restores. Both read
// the source through SQLite's own locking, so a running server keeps writing.

/** Meta row holding the seal record (server stores; the plugin's embedded store has none). */

export interface BackupResult {
  readonly path: string;
  readonly bytes: number;
  readonly pages: number;
}

function fsyncPath(path: string): void {
  const fd = openSync(path, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Copies a live SQLite store to `dest` with SQLite's online backup API: one
 * consistent snapshot (WAL included) while other processes keep writing.
 * The copy is a single self-contained file (rollback journal mode, no -wal),
 * mode 0600; an existing `dest` is never overwritten.
 */
export async function backupSqlite(src: string, dest: string): Promise<BackupResult> {
  let st;
  try {
    st = statSync(src);
  } catch (e) {
    throw new KeyhavenError('config_invalid', `cannot read the database ${src}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  if (!st.isFile()) throw new KeyhavenError('config_invalid', `the database ${src} is not a regular file`);
  // Claimed before SQLite touches it: the copy holds key material (sealed) and the audit log, so 0600 from the first byte.
  try {
    closeSync(openSync(dest, 'wx', 0o600));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new KeyhavenError('already_exists', `${dest} already exists; refusing to overwrite it (choose a new file name)`);
    throw new KeyhavenError('config_invalid', `cannot create the backup file ${dest}: ${code ?? 'error'}`);
  }
  try {
    let db: BetterSqlite3.Database;
    try {
      db = new BetterSqlite3(src, { readonly: true, fileMustExist: true });
    } catch (e) {
      throw new KeyhavenError('config_invalid', `cannot open the database ${src}: ${(e as Error).message}`);
    }
    try {
      db.pragma('busy_timeout = 5000');
      const tables = db.prepare<[], { n: number }>("select count(*) as n from sqlite_master where type = 'table' and name in ('audit', 'meta', 'barrier')").get();
      if (tables?.n !== 3) throw new KeyhavenError('config_invalid', `${src} is not a keyhaven database`);
      // All remaining pages in one step: the copy is taken under one read
      // lock, so writers committing meanwhile never restart it.
      await db.backup(dest, { progress: () => 0x7fffffff });
    } catch (e) {
      if (e instanceof KeyhavenError) throw e;
      throw new KeyhavenError('unavailable', `the backup of ${src} failed: ${(e as Error).message}`);
    } finally {
      db.close();
    }
    const out = new BetterSqlite3(dest, { fileMustExist: true });
    let pages: number;
    try {
      // One file to store and to hand to restore-check; a server reopening it switches back to WAL.
      out.pragma('journal_mode = DELETE');
      const check = out.pragma('quick_check', { simple: true }) as string;
      if (check !== 'ok') throw new KeyhavenError('integrity', `the backup copy ${dest} fails SQLite's quick_check: ${check}`);
      pages = out.pragma('page_count', { simple: true }) as number;
    } finally {
      out.close();
    }
    fsyncPath(dest);
    fsyncPath(dirname(dest));
    return { path: dest, bytes: statSync(dest).size, pages };
  } catch (e) {
    for (const f of [dest, `${dest}-journal`]) {
      try {
        unlinkSync(f);
      } catch {
        // not there
      }
    }
    throw e;
  }
}

/** How the root key of the copy is recovered: the same seals as the server. */
export type RootKeySource = { keyFile: string } | { seal: Seal; shares?: readonly string[] };

export interface CheckStep {
  readonly name: 'file' | 'store' | 'root key' | 'canary' | 'audit' | 'keys';
  readonly ok: boolean;
  readonly detail: string;
}

export interface RestoreCheckResult {
  readonly ok: boolean;
  readonly path: string;
  readonly steps: readonly CheckStep[];
}

/** A failed step: ends the check, its message is the step's detail. */
class StepFailed extends Error {}

const HEADER = Buffer.from('SQLite format 3\0', 'latin1');

/**
 * The file itself, before SQLite reads it: a regular file with a SQLite
 * header whose page count fits in its size. A copy cut short (a full disk, an
 * interrupted transfer) is named as truncated rather than "malformed".
 */
function checkFile(path: string): { detail: string; wal: boolean } {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new StepFailed(code === 'ENOENT' ? `${path} does not exist` : `cannot read ${path}: ${code ?? 'error'}`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new StepFailed(`${path} is not a regular file`);
    const head = Buffer.alloc(100);
    const n = readSync(fd, head, 0, 100, 0);
    if (n === 0) throw new StepFailed(`${path} is empty`);
    if (n < 100 || !head.subarray(0, 16).equals(HEADER)) throw new StepFailed(`${path} is not a SQLite database (no SQLite header)`);
    const rawSize = head.readUInt16BE(16);
    const pageSize = rawSize === 1 ? 65536 : rawSize;
    const pages = head.readUInt32BE(28);
    // The header's page count is valid only when written by the same change as the counter beside it.
    const countValid = head.readUInt32BE(24) === head.readUInt32BE(92) && pages > 0;
    if (countValid && st.size < pages * pageSize) {
      throw new StepFailed(`${path} is truncated: it holds ${st.size} bytes, its header says ${pages} pages of ${pageSize} bytes (${pages * pageSize} bytes)`);
    }
    const mode = st.mode & 0o777;
    // Bytes 18-19 are 2 in WAL mode: such a copy is complete only with its -wal file (a plain cp of a live store).
    const wal = head[18] === 2;
    const warn = (mode & 0o077) !== 0 ? ' (WARNING: readable by group or others; chmod 600 it)' : '';
    return { wal, detail: `${st.size} bytes, ${countValid ? pages : '?'} pages, mode ${mode.toString(8).padStart(4, '0')}${warn}${wal ? ', WAL mode (a copy needs its -wal file; operator backup writes a single file)' : ''}` };
  } finally {
    closeSync(fd);
  }
}

/**
 * Proves a backup restores, without writing it: opens the copy read-only,
 * recovers the root key from the seal material, checks it against the
 * barrier canary, verifies the audit chain and its signed head, and decrypts
 * one key version's material. Every failure is reported with the step it
 * happened in; `ok` only when every step passed.
 */
export async function restoreCheck(path: string, source: (record: SealRecord | undefined) => Promise<RootKeySource>): Promise<RestoreCheckResult> {
  const steps: CheckStep[] = [];
  const pass = (name: CheckStep['name'], detail: string) => steps.push({ name, ok: true, detail });
  let current: CheckStep['name'] = 'file';
  let db: BetterSqlite3.Database | undefined;
  let made: string[] = [];
  let rootKey: Buffer | undefined;
  let headKey: Buffer | undefined;
  let checkpointKey: Buffer | undefined;
  try {
    const file = checkFile(path);
    pass('file', file.detail);
    current = 'store';
    // SQLite makes a WAL-mode file's -wal and -shm even for a read-only open; those it made are removed after.
    if (file.wal) made = [`${path}-wal`, `${path}-shm`].filter((f) => !existsSync(f));
    try {
      db = new BetterSqlite3(path, { readonly: true, fileMustExist: true });
      const q = db.pragma('quick_check', { simple: true }) as string;
      if (q !== 'ok') throw new StepFailed(`${path} is damaged (SQLite quick_check: ${q})`);
    } catch (e) {
      if (e instanceof StepFailed) throw e;
      throw new StepFailed(`${path} cannot be read as a SQLite database: ${(e as Error).message}`);
    }
    const tables = db.prepare<[], { name: string }>("select name from sqlite_master where type = 'table' and name in ('audit', 'meta', 'barrier', 'keys', 'key_versions')").all();
    if (tables.length !== 5) throw new StepFailed(`${path} is not a keyhaven database (missing ${['audit', 'meta', 'barrier', 'keys', 'key_versions'].filter((t) => !tables.some((r) => r.name === t)).join(', ')})`);
    // One read transaction: every step sees the same snapshot.
    db.exec('begin');
    const reader = sqliteReader(db);
    const rawRecord = await reader.getMeta(SEAL_META);
    let record: SealRecord | undefined;
    if (rawRecord !== undefined) {
      try {
        record = JSON.parse(rawRecord) as SealRecord;
      } catch {
        throw new StepFailed('the stored seal record is unreadable');
      }
    }
    const counts = db.prepare<[], { keys: number; records: number }>('select (select count(*) from keys) as keys, (select count(*) from audit) as records').get()!;
    const storeId = (await reader.getMeta(STORE_ID_META)) ?? '?';
    pass('store', `keyhaven database, store id ${storeId}, ${record ? `${record.kind} seal` : 'embedded store (key file, no seal record)'}, ${counts.keys} key(s), ${counts.records} audit record(s)`);

    current = 'root key';
    const src = await source(record);
    if ('keyFile' in src) {
      if (record && record.kind !== 'keyfile') throw new StepFailed(`this store is sealed with ${record.kind}, not a key file: give its ${record.kind === 'shamir' ? 'shares (--share-file or --shares)' : 'HSM (--config with its seal.pkcs11)'}`);
      const { readKeyFile } = await import('../seal/keyfile.js');
      rootKey = readKeyFile(src.keyFile);
      pass('root key', `read from ${src.keyFile}`);
    } else {
      if (!record) {
        if (src.seal.kind !== 'keyfile') throw new StepFailed(`this store has no seal record (an embedded store): give its key file with --root-key-file, not a ${src.seal.kind} seal`);
        record = { kind: 'keyfile' };
      }
      rootKey = await src.seal.unseal(record, src.shares);
      pass('root key', `recovered with the ${src.seal.kind} seal${src.seal.kind === 'shamir' ? ` (${src.shares?.length ?? 0} share(s) given)` : ''}`);
    }

    current = 'canary';
    if ((await reader.barrierGet(CANARY_PATH)) === undefined) throw new StepFailed('the store has no barrier canary (never initialised, or its barrier table was emptied)');
    let barrier;
    try {
      barrier = await openBarrier(reader, rootKey);
    } catch {
      throw new StepFailed(`the root key does not open this store (canary): wrong key file, shares or HSM key for this backup`);
    }
    pass('canary', `${CANARY_PATH} decrypts with the root key`);

    current = 'audit';
    ({ headKey, checkpointKey } = await openAuditKeys(reader, rootKey));
    const v = await verifyStore(reader, headKey);
    if (!v.ok) throw new StepFailed(`the audit chain is broken at record ${v.firstBroken!.seq}: ${v.firstBroken!.reason} (${v.records} record(s) before it verified)`);
    pass('audit', `${v.records} record(s), hash chain and signed head verified`);

    current = 'keys';
    const key = db
      .prepare<[], { id: string; name: string; version: number }>(
        "select k.id, k.name, v.version from keys k join key_versions v on v.key_id = k.id where v.state = 'active' and k.state != 'destroyed' order by k.name, v.version desc limit 1",
      )
      .get();
    if (!key) {
      pass('keys', 'no key with live material in this store (nothing to decrypt)');
    } else {
      const at = `keys/${key.id}/versions/${key.version}`;
      let material: Buffer | undefined;
      try {
        material = await barrier.get(reader, at);
      } catch {
        throw new StepFailed(`the material of key "${key.name}" version ${key.version} does not decrypt (damaged row ${at})`);
      }
      if (!material) throw new StepFailed(`the material of key "${key.name}" version ${key.version} is missing (no row ${at})`);
      material.fill(0);
      pass('keys', `key "${key.name}" version ${key.version}: material decrypts`);
    }
    return { ok: true, path, steps };
  } catch (e) {
    let detail: string;
    if (e instanceof StepFailed || e instanceof KeyhavenError) detail = e.message;
    // SQLite's own errors (a page damaged past the header): named, with the file.
    else if (e instanceof Error && e.name === 'SqliteError') detail = `${path} cannot be read: ${e.message}`;
    else throw e;
    steps.push({ name: current, ok: false, detail });
    return { ok: false, path, steps };
  } finally {
    if (db?.inTransaction) db.exec('commit');
    db?.close();
    for (const f of made) {
      try {
        unlinkSync(f);
      } catch {
        // not made after all
      }
    }
    rootKey?.fill(0);
    headKey?.fill(0);
    checkpointKey?.fill(0);
  }
}
