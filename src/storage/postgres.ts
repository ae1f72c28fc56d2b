import { Kysely, Migrator, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import { KeyhavenError } from '../errors.js';
import { KyselyStore, type TransactionRunner } from './kysely-store.js';
import { migrationProviderFor } from './migrations.js';
import type { Database } from './schema.js';
import { GENESIS_HASH, type AppendAuditOptions, type AuditDraft, type AuditLinker, type AuditRow, type Store } from './store.js';

export interface PostgresOptions {
  /** postgres://user:password@host:port/database?... (the password never reaches messages). */
  readonly url: string;
  /** Connections in the pool (default 10). */
  readonly poolSize?: number;
  /** Told about errors on idle pooled connections (the pool drops them and reconnects). */
  readonly onIdleError?: (err: Error) => void;
  /**
   * The longest this server may sit idle inside a write transaction (a
   * stopped process, a partition, a long pause) before PostgreSQL ends the
   * transaction and so releases the write lock to the other servers (default 500 ms).
   */
  readonly lockHoldMs?: number;
  /** How long a writer waits for the write lock before failing with `unavailable` (default 5 s). */
  readonly lockWaitMs?: number;
}

// Every transaction (and every write outside one) takes this
// transaction-scoped advisory lock first, so writers are serialised across all
// processes sharing the database, as SQLite's `begin immediate` does:
// read-modify-write code (current_version + 1, the audit chain's last
// seq/hash) needs no retry logic. ASCII "khwrite1".
//
// The lock is held across round trips, so a holder that stops answering (a
// stopped or partitioned process, a long pause) would stall every server.
// PostgreSQL itself fences it: idle_in_transaction_session_timeout (lockHold)
// ends a session that sits idle inside a transaction, which rolls the
// transaction back and releases the lock. A resumed holder finds its session
// gone and cannot commit; nothing it wrote under the lost lock survives.
// Each process also queues its own writers, so at most one of its sessions
// holds or awaits the lock: a hung process costs the others one lockHold at
// most, not one per pooled connection it had waiting.
export const WRITE_LOCK_ID = 7739567292915410225n;
// Held (session scope, on its own connection) while migrating at start-up, so
// servers starting together migrate one at a time. ASCII "khmigrat".
const MIGRATE_LOCK_ID = 7739556259110740340n;

export const DEFAULT_LOCK_HOLD_MS = 500;
export const DEFAULT_LOCK_WAIT_MS = 5_000;
// SQLSTATE of a session PostgreSQL ended for idling inside a transaction.
const IDLE_IN_TRANSACTION_TIMEOUT = '25P03';
// Times a transaction that lost its session that way (this process was
// slow, not hung) is run again, once PostgreSQL confirms it rolled back.
const FENCED_RETRIES = 2;
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
  const lockHoldMs = opts.lockHoldMs ?? DEFAULT_LOCK_HOLD_MS;
  const lockWaitMs = opts.lockWaitMs ?? DEFAULT_LOCK_WAIT_MS;
  const types = new pg.TypeOverrides();
  types.setTypeParser(pg.types.builtins.INT8, parseInt8);
  const config: pg.PoolConfig = {
    connectionString: opts.url,
    types,
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    keepAlive: true,
    lock_timeout: lockWaitMs,
    idle_in_transaction_session_timeout: lockHoldMs,
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

  // Write transactions have a connection of their own (they run one at a
  // time anyway), so a stuck one can be found and cut (see `once`).
  const writePool = new pg.Pool({ ...config, max: 1 });
  writePool.on('error', (err) => opts.onIdleError?.(err));
  let writeClient: pg.PoolClient | undefined;
  // PostgreSQL ends a fenced session with an error message the client reads
  // when it runs again, often while the connection is checked out (no pool
  // listener then): without this, that would be an uncaught error. Counted,
  // so the transaction that owned the session knows it lost the lock.
  let fenced = 0;
  writePool.on('connect', (client) => {
    writeClient = client;
    client.on('error', (err) => {
      if ((err as { code?: unknown }).code === IDLE_IN_TRANSACTION_TIMEOUT) fenced += 1;
    });
  });
  writePool.on('remove', (client) => {
    if (writeClient === client) writeClient = undefined;
  });
  const writeDb = new Kysely<Database>({ dialect: new PostgresDialect({ pool: writePool }) });
  // A transaction's answers may stop coming (a half-open connection after a
  // partition: TCP keepalive would take hours to notice). Past this, its
  // connection is cut and its fate looked up, so this server's writes never
  // wait on a dead socket.
  const transactionDeadlineMs = lockWaitMs + 2 * lockHoldMs + 1000;
  const cutWriteConnection = (): void => {
    // node-postgres has no public way to drop a socket at once; end() waits for the peer.
    (writeClient as unknown as { connection?: { stream?: { destroy(): void } } } | undefined)?.connection?.stream?.destroy();
  };

  // Migrations run on a connection of their own: lockHold is for the write
  // lock of serving servers, not for a migration that may take its time.
  const migrationPool = new pg.Pool({ ...config, max: 1, idle_in_transaction_session_timeout: MIGRATE_WAIT_MS });
  migrationPool.on('error', () => {}); // reported by the awaited call instead
  const migrationDb = new Kysely<Database>({ dialect: new PostgresDialect({ pool: migrationPool }) });
  try {
    await admin.query('select pg_advisory_lock($1)', [MIGRATE_LOCK_ID.toString()]);
    // kysely's Migrator also takes its own advisory lock on PostgreSQL; ours
    // covers the bookkeeping tables it creates before taking that lock.
    const { error } = await new Migrator({ db: migrationDb, provider: migrationProviderFor('postgres') }).migrateToLatest();
    if (error) throw new KeyhavenError('config_invalid', `PostgreSQL database ${target} could not be migrated: ${reasonOf(error, opts.url)}`);
  } catch (e) {
    await migrationDb.destroy().catch(() => {});
    await db.destroy().catch(() => {});
    await writeDb.destroy().catch(() => {});
    if (e instanceof KeyhavenError) throw e;
    throw new KeyhavenError('config_invalid', `cannot prepare PostgreSQL database ${target}: ${reasonOf(e, opts.url)}`);
  } finally {
    // Ending the session releases the migration lock.
    await admin.end().catch(() => {});
  }
  await migrationDb.destroy().catch(() => {});

  // The transaction's id comes back with the lock, in the same round trip: if
  // the session is lost around the commit, its fate can still be looked up.
  const lock = sql<{ xid: number }>`select pg_advisory_xact_lock(${sql.lit(WRITE_LOCK_ID)}), txid_current() as xid`;
  // synchronous_commit=off: the commit returns once the record is in the
  // server's WAL buffers; a keyhaven crash loses nothing, a PostgreSQL crash
  // within about 3 x wal_writer_delay (600 ms by default) may lose the newest
  // records, never reorder or corrupt them. Same statement, no extra round trip.
  const lockRelaxed = sql<{ xid: number }>`select pg_advisory_xact_lock(${sql.lit(WRITE_LOCK_ID)}), txid_current() as xid, set_config('synchronous_commit', 'off', true)`;

  // This process's writers, one at a time (see WRITE_LOCK_ID).
  let writers: Promise<unknown> = Promise.resolve();
  // A writer waits its turn here at most lockWait, as it would for the lock
  // itself: a write awaited inside another transaction of this process would
  // otherwise wait for that transaction forever.
  const queued = <T>(fn: () => Promise<T>): Promise<T> => {
    let timer: NodeJS.Timeout | undefined;
    let gaveUp = false;
    const turn = writers.then(() => {
      clearTimeout(timer);
      if (gaveUp) return undefined;
      return fn();
    });
    writers = turn.catch(() => {});
    return Promise.race([
      turn as Promise<T>,
      new Promise<T>((_, reject) => {
        timer = setTimeout(() => {
          gaveUp = true;
          reject(new KeyhavenError('unavailable', `PostgreSQL write lock not obtained within ${lockWaitMs / 1000} s (this server's earlier writes still hold it)`));
        }, lockWaitMs);
        timer.unref();
      }),
    ]);
  };

  /** committed or aborted, from a new connection (pooled ones may be as dead as the lost one); undefined when that cannot be told. */
  const fateOf = async (xid: number): Promise<'committed' | 'aborted' | undefined> => {
    const c = new pg.Client({ ...config, connectionTimeoutMillis: lockWaitMs, query_timeout: lockWaitMs });
    c.on('error', () => {}); // reported by the awaited call instead
    try {
      await c.connect();
      // A session PostgreSQL is still ending shows its transaction in progress for a moment.
      for (let i = 0; i < 20; i++) {
        const { rows } = await c.query<{ status: string | null }>('select txid_status($1) as status', [xid]);
        const status = rows[0]?.status;
        if (status === 'committed' || status === 'aborted') return status;
        if (status !== 'in progress') return undefined;
        await new Promise((r) => setTimeout(r, 50));
      }
      return undefined;
    } catch {
      return undefined;
    } finally {
      void c.end().catch(() => {});
    }
  };

  // One try at a write transaction. `run` records the transaction's id once
  // the lock is held (a.xid) and its result before the commit (a.out), so a
  // session lost around the commit can still be told apart.
  const once = async <T>(run: (a: Attempt<T>) => Promise<T>): Promise<T> => {
    const before = fenced;
    const a: Attempt<T> = {};
    let cut = false;
    const watchdog = setTimeout(() => {
      cut = true;
      cutWriteConnection();
    }, transactionDeadlineMs);
    try {
      return await run(a);
    } catch (e) {
      const code = (e as { code?: unknown }).code;
      if (code === '55P03') {
        throw new KeyhavenError('unavailable', `PostgreSQL write lock not obtained within ${lockWaitMs / 1000} s`, { cause: e });
      }
      const idled = code === IDLE_IN_TRANSACTION_TIMEOUT || fenced > before;
      if (!idled && !sessionLost(e)) throw e;
      // The session ended under the transaction: before its lock (nothing
      // written), or later, when PostgreSQL knows whether it committed.
      const fate = a.xid === undefined ? 'aborted' : await fateOf(a.xid);
      if (fate === 'committed' && a.out) return a.out.value;
      if (fate === 'aborted') {
        const why = idled
          ? `this server sat idle for over ${lockHoldMs} ms inside a write transaction, so PostgreSQL ended it and released the write lock to the other servers`
          : cut
            ? `PostgreSQL did not answer a write transaction within ${transactionDeadlineMs / 1000} s, so its connection was dropped`
            : 'the connection to PostgreSQL was lost inside a write transaction';
        throw new Fenced(why, e);
      }
      throw e;
    } finally {
      clearTimeout(watchdog);
    }
  };

  // Runs attempts in this process's write queue; runs again one that
  // PostgreSQL confirms was rolled back because its session ended.
  const retried = <T>(run: (a: Attempt<T>) => Promise<T>, record: boolean): Promise<T> => {
    const called = Date.now();
    return queued(async () => {
      for (let attempt = 0; ; attempt++) {
        try {
          return await once(run);
        } catch (e) {
          if (!(e instanceof Fenced)) throw e;
          if (attempt >= FENCED_RETRIES) throw e.error;
          // A change whose caller has waited this long (this server was stopped) has likely been
          // retried elsewhere: doing it now could undo what came since (a second API key rotation).
          // Audit records describe what already happened, so they are written however late.
          if (!record && Date.now() - called > lockWaitMs) throw e.error;
        }
      }
    });
  };

  const runTransaction: TransactionRunner = <T>(fn: (trx: Kysely<Database>) => Promise<T>, o?: { durable?: boolean; record?: boolean }): Promise<T> => {
    const durable = o?.durable !== false;
    return retried<T>(
      (a) =>
        writeDb.transaction().execute(async (trx) => {
          a.xid = (await (durable ? lock : lockRelaxed).execute(trx)).rows[0]?.xid;
          a.out = { value: await fn(trx) };
          return a.out.value;
        }),
      o?.record === true,
    );
  };

  // The audit hot path (one batch of request records at a time): three round
  // trips instead of six. BEGIN travels with the lock; the chain head this
  // server wrote last is assumed, and one statement inserts the batch and the
  // signed head only if the stored chain still ends there (another server or
  // a change's own record may have written since: then the head is read and
  // the batch linked again, still under the lock); then COMMIT.
  let lastHead: { seq: number; hash: string } | undefined;
  const appendAudit: PostgresAuditAppend = async (drafts, link, opts) => {
    const durable = opts.fsync !== false;
    return retried<AuditRow[]>(async (a) => {
      const client = await writePool.connect();
      let lost: unknown;
      try {
        const begun = (await client.query(durable ? BEGIN_LOCK : BEGIN_LOCK_RELAXED)) as unknown as pg.QueryResult<{ xid: number }>[];
        a.xid = begun[1]?.rows[0]?.xid;
        let tail = lastHead ?? (await readTail(client));
        let linked = linkDrafts(drafts, link, tail);
        if (!(await insertLinked(client, linked, tail, opts))) {
          tail = await readTail(client);
          linked = linkDrafts(drafts, link, tail);
          if (!(await insertLinked(client, linked, tail, opts))) throw new Error('the audit chain head moved while this server held the write lock');
        }
        a.out = { value: linked };
        await client.query('commit');
        // Set here, inside this server's write queue, so the next batch sees it.
        const newest = linked[linked.length - 1]!;
        lastHead = { seq: newest.seq, hash: newest.hash };
        return linked;
      } catch (e) {
        lastHead = undefined;
        lost = e;
        if (!sessionLost(e)) await client.query('rollback').catch(() => {});
        throw e;
      } finally {
        // A connection whose session is gone is dropped, not pooled again.
        client.release(lost !== undefined && sessionLost(lost) ? (lost as Error) : undefined);
      }
    }, true);
  };

  return new PostgresStore(
    db,
    runTransaction,
    async () => {
      await Promise.all([db.destroy(), writeDb.destroy()]);
    },
    appendAudit,
  );
}

/** What one try at a write transaction has got to: its id once locked, its result before the commit. */
interface Attempt<T> {
  xid?: number;
  out?: { value: T };
}

type PostgresAuditAppend = (drafts: readonly AuditDraft[], link: AuditLinker, opts: AppendAuditOptions) => Promise<AuditRow[]>;

// One simple-protocol round trip: BEGIN, then the write lock with the
// transaction's id (and, relaxed, synchronous_commit=off for this transaction).
const BEGIN_LOCK = `begin; select pg_advisory_xact_lock(${WRITE_LOCK_ID}), txid_current() as xid`;
const BEGIN_LOCK_RELAXED = `${BEGIN_LOCK}, set_config('synchronous_commit', 'off', true)`;

// The batch goes in as one array per column (one statement text for every
// batch size, so it is prepared once per connection). The insert and the head
// update happen only if the chain still ends at ($1, $2); n tells.
const INSERT_LINKED = {
  name: 'keyhaven_audit_append_v1',
  text: `with tail as (
    select coalesce((select seq from audit order by seq desc limit 1), 0) as seq,
           coalesce((select hash from audit order by seq desc limit 1), '${GENESIS_HASH}') as hash
  ), ins as (
    insert into audit (seq, time, actor, operation, key_name, key_version, result, request_id, details, prev_hash, hash)
    select * from unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::integer[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[])
    where exists (select 1 from tail where tail.seq = $1::bigint and tail.hash = $2::text)
    returning seq
  ), head as (
    insert into meta (name, value) select 'audit_head', $14::text
    where $14::text is not null and exists (select 1 from ins)
    on conflict (name) do update set value = excluded.value
    returning 1
  )
  select count(*)::int as n from ins`,
} as const;

async function readTail(client: pg.PoolClient): Promise<{ seq: number; hash: string }> {
  const { rows } = await client.query<{ seq: number; hash: string }>('select seq, hash from audit order by seq desc limit 1');
  return rows[0] ?? { seq: 0, hash: GENESIS_HASH };
}

function linkDrafts(drafts: readonly AuditDraft[], link: AuditLinker, tail: { seq: number; hash: string }): AuditRow[] {
  let prev = tail.hash;
  let seq = tail.seq;
  return drafts.map((d) => {
    seq += 1;
    const hash = link(prev, seq, d);
    const row: AuditRow = { ...d, seq, prev_hash: prev, hash };
    prev = hash;
    return row;
  });
}

/** Inserts linked rows (and the signed head) if the chain still ends at `tail`; false if it does not. */
async function insertLinked(client: pg.PoolClient, rows: readonly AuditRow[], tail: { seq: number; hash: string }, opts: AppendAuditOptions): Promise<boolean> {
  const newest = rows[rows.length - 1];
  const col = <K extends keyof AuditRow>(k: K) => rows.map((r) => r[k]);
  const { rows: out } = await client.query<{ n: number }>({
    ...INSERT_LINKED,
    values: [
      tail.seq, tail.hash,
      col('seq'), col('time'), col('actor'), col('operation'), col('key_name'), col('key_version'), col('result'), col('request_id'), col('details'), col('prev_hash'), col('hash'),
      newest && opts.head ? opts.head(newest) : null,
    ],
  });
  return out[0]?.n === rows.length;
}

/** A transaction known to be rolled back because its session ended (idled past lockHold, or lost). */
class Fenced extends Error {
  readonly error: KeyhavenError;
  constructor(why: string, cause: unknown) {
    super('fenced');
    this.error = new KeyhavenError('unavailable', `${why}; nothing of it was written`, { cause });
  }
}

// SQLSTATE classes 08 (connection exception) and 57P0x (the server ended the session).
const SESSION_GONE = /^(08|57P0)/;
// node-postgres reports a dead socket without a SQLSTATE.
const SOCKET_GONE = /Connection terminated|not queryable|ECONNRESET|EPIPE/;

/** Whether an error says the session (and with it any open transaction) is gone. */
function sessionLost(e: unknown): boolean {
  const err = e as { code?: unknown; message?: unknown };
  if (typeof err?.code === 'string' && (SESSION_GONE.test(err.code) || err.code === 'ECONNRESET' || err.code === 'EPIPE')) return true;
  return typeof err?.message === 'string' && SOCKET_GONE.test(err.message);
}

type Args<K extends keyof Store> = Store[K] extends (...a: infer A) => unknown ? A : never;

// Writes made outside transaction() take the write lock too, so on PostgreSQL
// as on SQLite no write lands in the middle of another process's transaction
// (it would otherwise, between that transaction's reads and its writes).
// Inside a transaction the plain KyselyStore runs them as they are; reads
// never wait. Store methods that write belong in this list.
class PostgresStore extends KyselyStore {
  constructor(
    db: Kysely<Database>,
    runTransaction: TransactionRunner,
    onClose: () => Promise<void>,
    private readonly fastAppend: PostgresAuditAppend,
  ) {
    super(db, runTransaction, onClose);
  }

  override async appendAudit(drafts: readonly AuditDraft[], link: AuditLinker, opts: AppendAuditOptions = {}): Promise<AuditRow[]> {
    if (drafts.length === 0) return [];
    return this.fastAppend(drafts, link, opts);
  }
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
  override putScanReport(...a: Args<'putScanReport'>) { return this.transaction((tx) => tx.putScanReport(...a)); }
  override insertRecovery(...a: Args<'insertRecovery'>) { return this.transaction((tx) => tx.insertRecovery(...a)); }
  override updateRecovery(...a: Args<'updateRecovery'>) { return this.transaction((tx) => tx.updateRecovery(...a)); }
  override putLoginThrottle(...a: Args<'putLoginThrottle'>) { return this.transaction((tx) => tx.putLoginThrottle(...a)); }
  override deleteLoginThrottles(...a: Args<'deleteLoginThrottles'>) { return this.transaction((tx) => tx.deleteLoginThrottles(...a)); }
  override deleteExpiredLoginThrottles(...a: Args<'deleteExpiredLoginThrottles'>) { return this.transaction((tx) => tx.deleteExpiredLoginThrottles(...a)); }
}
