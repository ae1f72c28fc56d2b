import { Kysely, Migrator, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import { KeyhavenError } from '../errors.js';
import { KyselyStore, type TransactionRunner } from './kysely-store.js';
import { migrationProviderFor } from './migrations.js';
import type { Database } from './schema.js';
import type { Store } from './store.js';

export interface PostgresOptions {
  /** postgres://user:password@host:port/database?... (the password never reaches messages). */
  readonly url: string;
  /** Connections in the pool (default 10). */
  readonly poolSize?: number;
  /** Told about errors on idle pooled connections (the pool drops them and reconnects). */
  readonly onIdleError?: (err: Error) => void;
}

// Every transaction (and every write outside one) takes this
// transaction-scoped advisory lock first, so writers are serialised across all
// processes sharing the database, as SQLite's `begin immediate` does:
// read-modify-write code (current_version + 1, the audit chain's last
// seq/hash) needs no retry logic. ASCII "khwrite1".
export const WRITE_LOCK_ID = 7739567292915410225n;
// Held (session scope, on its own connection) while migrating at start-up, so
// servers starting together migrate one at a time. ASCII "khmigrat".
const MIGRATE_LOCK_ID = 7739556259110740340n;

// A writer waits this long for the write lock before failing with
// `unavailable`, instead of piling up behind a stuck transaction.
const LOCK_TIMEOUT_MS = 10_000;
// A transaction left open this long (a hung process) is ended by the server,
// which releases the write lock for everyone else.
const IDLE_IN_TRANSACTION_MS = 60_000;
const CONNECT_TIMEOUT_MS = 10_000;
const MIGRATE_WAIT_MS = 300_000;

/** int8 (audit.seq, count(*)) as JS numbers; refuses values beyond 2^53. */
function parseInt8(v: string): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw new RangeError(`int8 value ${v} is beyond JavaScript's safe integer range`);
  return n;
}

/** host:port/database, for messages; never the user's password. */
export function describeTarget(url: string): string {
  try {
    const u = new URL(url);
    const host = u.hostname || u.searchParams.get('host') || 'localhost';
    const port = u.port || u.searchParams.get('port') || '5432';
    const db = decodeURIComponent(u.pathname.replace(/^\//, '')) || u.searchParams.get('dbname') || decodeURIComponent(u.username) || '(default)';
    return `${host}:${port}/${db}`;
  } catch {
    return '(an unparsable URL)';
  }
}

function secretsOf(url: string): string[] {
  try {
    const u = new URL(url);
    const out = [u.password, decodeURIComponent(u.password), u.searchParams.get('password') ?? ''];
    return out.filter((s) => s.length > 0);
  } catch {
    return [url];
  }
}

/** The reason an error gives, with the URL's password blanked should it appear. */
function reasonOf(e: unknown, url: string): string {
  const err = e as { message?: string; code?: string; errors?: { message?: string }[] };
  // Node reports a refused connection to every address of a name as an AggregateError with no message.
  let reason = err?.message || err?.errors?.map((x) => x.message).filter(Boolean).join('; ') || err?.code || String(e);
  for (const s of secretsOf(url)) reason = reason.split(s).join('***');
  return reason;
}

export async function openPostgresStore(opts: PostgresOptions): Promise<Store> {
  const target = describeTarget(opts.url);
  const types = new pg.TypeOverrides();
  types.setTypeParser(pg.types.builtins.INT8, parseInt8);
  const config: pg.PoolConfig = {
    connectionString: opts.url,
    types,
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    keepAlive: true,
    lock_timeout: LOCK_TIMEOUT_MS,
    idle_in_transaction_session_timeout: IDLE_IN_TRANSACTION_MS,
  };

  // A dedicated connection checks the server is there and holds the
  // migration lock; the pool is built only once that has worked.
  // Others wait here while one server migrates: allow longer than a write.
  let admin: pg.Client | undefined;
  try {
    // The constructor parses the URL and throws on a malformed one.
    admin = new pg.Client({ ...config, lock_timeout: MIGRATE_WAIT_MS });
    admin.on('error', () => {}); // reported by the awaited call instead
    await admin.connect();
  } catch (e) {
    await admin?.end().catch(() => {});
    throw new KeyhavenError('config_invalid', `cannot connect to PostgreSQL at ${target}: ${reasonOf(e, opts.url)}`);
  }

  const pool = new pg.Pool({ ...config, max: opts.poolSize ?? 10 });
  // An idle client whose server connection drops emits on the pool; without
  // a listener that would be an uncaught error and end the process.
  pool.on('error', (err) => opts.onIdleError?.(err));
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });

  try {
    await admin.query('select pg_advisory_lock($1)', [MIGRATE_LOCK_ID.toString()]);
    // kysely's Migrator also takes its own advisory lock on PostgreSQL; ours
    // covers the bookkeeping tables it creates before taking that lock.
    const { error } = await new Migrator({ db, provider: migrationProviderFor('postgres') }).migrateToLatest();
    if (error) throw new KeyhavenError('config_invalid', `PostgreSQL database ${target} could not be migrated: ${reasonOf(error, opts.url)}`);
  } catch (e) {
    await db.destroy().catch(() => {});
    if (e instanceof KeyhavenError) throw e;
    throw new KeyhavenError('config_invalid', `cannot prepare PostgreSQL database ${target}: ${reasonOf(e, opts.url)}`);
  } finally {
    // Ending the session releases the migration lock.
    await admin.end().catch(() => {});
  }

  const lock = sql`select pg_advisory_xact_lock(${sql.lit(WRITE_LOCK_ID)})`;
  // synchronous_commit=off: the commit returns once the record is in the
  // server's WAL buffers; a keyhaven crash loses nothing, a PostgreSQL crash
  // within about 3 x wal_writer_delay (600 ms by default) may lose the newest
  // records, never reorder or corrupt them. Same statement, no extra round trip.
  const lockRelaxed = sql`select pg_advisory_xact_lock(${sql.lit(WRITE_LOCK_ID)}), set_config('synchronous_commit', 'off', true)`;

  const runTransaction: TransactionRunner = async <T>(fn: (trx: Kysely<Database>) => Promise<T>, o?: { durable?: boolean }): Promise<T> => {
    try {
      return await db.transaction().execute(async (trx) => {
        await (o?.durable === false ? lockRelaxed : lock).execute(trx);
        return fn(trx);
      });
    } catch (e) {
      if ((e as { code?: unknown }).code === '55P03') {
        throw new KeyhavenError('unavailable', `PostgreSQL write lock not obtained within ${LOCK_TIMEOUT_MS / 1000} s`, { cause: e });
      }
      throw e;
    }
  };

  return new PostgresStore(db, runTransaction, () => db.destroy());
}

type Args<K extends keyof Store> = Store[K] extends (...a: infer A) => unknown ? A : never;

// Writes made outside transaction() take the write lock too, so on PostgreSQL
// as on SQLite no write lands in the middle of another process's transaction
// (it would otherwise, between that transaction's reads and its writes).
// Inside a transaction the plain KyselyStore runs them as they are; reads
// never wait. Store methods that write belong in this list.
class PostgresStore extends KyselyStore {
  override setMeta(...a: Args<'setMeta'>) { return this.transaction((tx) => tx.setMeta(...a)); }
  override setMetaIfAbsent(...a: Args<'setMetaIfAbsent'>) { return this.transaction((tx) => tx.setMetaIfAbsent(...a)); }
  override deleteMeta(...a: Args<'deleteMeta'>) { return this.transaction((tx) => tx.deleteMeta(...a)); }
  override barrierPut(...a: Args<'barrierPut'>) { return this.transaction((tx) => tx.barrierPut(...a)); }
  override barrierDelete(...a: Args<'barrierDelete'>) { return this.transaction((tx) => tx.barrierDelete(...a)); }
  override insertKey(...a: Args<'insertKey'>) { return this.transaction((tx) => tx.insertKey(...a)); }
  override updateKey(...a: Args<'updateKey'>) { return this.transaction((tx) => tx.updateKey(...a)); }
  override insertKeyVersion(...a: Args<'insertKeyVersion'>) { return this.transaction((tx) => tx.insertKeyVersion(...a)); }
  override updateKeyVersion(...a: Args<'updateKeyVersion'>) { return this.transaction((tx) => tx.updateKeyVersion(...a)); }
  override deleteKey(...a: Args<'deleteKey'>) { return this.transaction((tx) => tx.deleteKey(...a)); }
  override insertPrincipal(...a: Args<'insertPrincipal'>) { return this.transaction((tx) => tx.insertPrincipal(...a)); }
  override updatePrincipal(...a: Args<'updatePrincipal'>) { return this.transaction((tx) => tx.updatePrincipal(...a)); }
  override deletePrincipal(...a: Args<'deletePrincipal'>) { return this.transaction((tx) => tx.deletePrincipal(...a)); }
  override insertCredential(...a: Args<'insertCredential'>) { return this.transaction((tx) => tx.insertCredential(...a)); }
  override updateCredential(...a: Args<'updateCredential'>) { return this.transaction((tx) => tx.updateCredential(...a)); }
  override deleteExpiredSessions(...a: Args<'deleteExpiredSessions'>) { return this.transaction((tx) => tx.deleteExpiredSessions(...a)); }
  override putGrant(...a: Args<'putGrant'>) { return this.transaction((tx) => tx.putGrant(...a)); }
  override deleteGrant(...a: Args<'deleteGrant'>) { return this.transaction((tx) => tx.deleteGrant(...a)); }
  override insertApproval(...a: Args<'insertApproval'>) { return this.transaction((tx) => tx.insertApproval(...a)); }
  override updateApproval(...a: Args<'updateApproval'>) { return this.transaction((tx) => tx.updateApproval(...a)); }
  override upsertPluginReport(...a: Args<'upsertPluginReport'>) { return this.transaction((tx) => tx.upsertPluginReport(...a)); }
  override putLoginThrottle(...a: Args<'putLoginThrottle'>) { return this.transaction((tx) => tx.putLoginThrottle(...a)); }
  override deleteLoginThrottles(...a: Args<'deleteLoginThrottles'>) { return this.transaction((tx) => tx.deleteLoginThrottles(...a)); }
  override deleteExpiredLoginThrottles(...a: Args<'deleteExpiredLoginThrottles'>) { return this.transaction((tx) => tx.deleteExpiredLoginThrottles(...a)); }
}
