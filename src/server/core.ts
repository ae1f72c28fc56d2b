import { actorName, createAccess, hashNewPassword, SYSTEM, type Access, type AccessOptions, type Principal, type SignInLock } from '../access/access.js';
import { createQuorum, type Quorum } from '../access/quorum.js';
import { createRecoveries, type Recoveries } from '../access/recovery.js';
import { parseRoles } from '../access/roles.js';
import { generatePassword, hashesEqual, parseToken } from '../access/secrets.js';
import { createAuditLog, type AuditLog } from '../audit/audit-log.js';
import type { CheckpointKeyHolder } from '../audit/checkpointer.js';
import { CANARY_PATH, openBarrier } from '../barrier/barrier.js';
import { KeyhavenError } from '../errors.js';
import type { KeyStore } from '../keys/key-store.js';
import { openKeyhaven } from '../keys/open-keyhaven.js';
import { SEAL_META, type Seal, type SealKind, type SealRecord } from '../seal/seal.js';
import { checkShare } from '../seal/shamir.js';
import type { Store } from '../storage/store.js';

// The key server's state: uninitialised → (init) → sealed ⇄ unsealed. Only an
// unsealed server holds the root key, and with it the services that need it;
// the audit log works in every state (records written while sealed join the
// chain and are covered by the next signed head).

// Set by POST /v1/sys/seal ({by, at}); while present, auto kinds do not
// unseal themselves (at start, or at a tick on servers sharing the database).
const OPERATOR_SEAL_META = 'operator_seal';
// Written with init and removed by the first login of an init-made user:
// until then the answer (passwords, shares) may have been lost, so init may be redone.
const INIT_PENDING_META = 'init_unconfirmed';
const AUDIT_HEAD_META = 'audit_head';

export interface Services {
  readonly keys: KeyStore;
  readonly access: Access;
  readonly quorum: Quorum;
  readonly recoveries: Recoveries;
  readonly storeId: string;
  /** keyhaven dev: one person holds every role and the separation-of-duties floor is off. */
  readonly singlePersonDev: boolean;
}

export interface SealStatus {
  readonly initialized: boolean;
  readonly sealed: boolean;
  readonly kind: SealKind;
  readonly threshold?: number;
  readonly shares?: number;
  /** Valid shares entered so far (shamir). */
  readonly progress?: number;
  /** Present while an operator seal holds: only a security-admin (or the shares) lifts it. */
  readonly sealedBy?: 'operator';
  /** Initialised: false until the first login of a user made by init (init may be run again until then). */
  readonly initConfirmed?: boolean;
}

export interface InitOutcome {
  readonly shares?: readonly string[];
  readonly admin: { readonly name: string; readonly password: string };
  readonly keyAdmin: { readonly name: string; readonly password: string };
}

/** What an unseal request brings: a share (shamir), or a security-admin's credentials (auto kinds). */
export interface UnsealProof {
  readonly share?: string | undefined;
  readonly name?: string | undefined;
  readonly password?: string | undefined;
  /** A session token (or any bearer token: it identifies who tried). */
  readonly token?: string | undefined;
  /** The caller's address: password attempts count against (name, source) as at login. */
  readonly source?: string | undefined;
}

export interface InitOptions {
  shares?: number | undefined;
  threshold?: number | undefined;
  adminName?: string | undefined;
  keyAdminName?: string | undefined;
  /** Marks the init confirmed at once (keyhaven dev shows the password itself). */
  confirmed?: boolean | undefined;
}

export interface ServerCore {
  readonly audit: AuditLog;
  readonly store: Store;
  status(): SealStatus;
  /** The unsealed services; throws `sealed` otherwise. */
  services(): Services;
  init(opts: InitOptions): Promise<InitOutcome>;
  /**
   * Shamir: adds one share (unsealing once enough are in). Auto kinds: needs
   * an active security-admin (name and password, or a session token), then
   * recovers the root key again and lifts the operator seal. `identified`
   * learns who the credentials belong to (for the audit record), even when refused.
   */
  unseal(proof: UnsealProof, identified?: (p: Principal) => void): Promise<SealStatus>;
  /** With `by`: an operator seal, recorded durably (it survives a restart and seals servers sharing the database). */
  seal(by?: Principal): Promise<void>;
  /**
   * Called when the server is asked for its state (status, health, unseal):
   * a server that believes it is uninitialised reads the store now, and if
   * another server sharing the database has run init, takes the tick's path
   * at once (auto kinds unseal as at start-up unless an operator seal holds;
   * shamir waits for shares). Concurrent calls share one check, and a check
   * is not repeated within a second, so anonymous callers cannot make it work hard.
   */
  catchUp(): Promise<void>;
  /**
   * Applies key changes made by other servers sharing the database (rotation,
   * enable/disable, minimum versions, destroyed versions): one query for all
   * keys. Nothing to do while sealed.
   */
  refreshKeys(): Promise<void>;
  /** Scheduled work: rotations, destructions, approval expiry, session sweep. */
  tick(now?: Date): Promise<void>;
  close(): Promise<void>;
}

export interface CoreOptions {
  readonly store: Store;
  readonly seal: Seal;
  readonly auditFsync: boolean;
  readonly access?: Partial<AccessOptions>;
  /** Called when a tick seals or unseals the server (an operator seal set or lifted on a server sharing the database), for logs. */
  readonly onSealChange?: (state: 'sealed' | 'unsealed') => void;
  /** Set only by keyhaven dev (never from server.yaml): lifts the separation-of-duties rules. */
  readonly singlePersonDev?: boolean;
  /** Receives each stored batch of audit records from the first one (the start-up unseal's included), for logs. */
  readonly onAuditStored?: Parameters<AuditLog['onStored']>[0];
  /** Called when a failed sign-in locks a (name, source) pair, for logs. */
  readonly onSignInLock?: (lock: SignInLock) => void;
  /** Called with each scheduled change, for logs. */
  readonly onScheduled?: (what: { rotated: readonly string[]; destroyed: readonly string[]; expiredApprovals: number }) => void;
  /** Receives the audit checkpoint key on unseal; writes a last checkpoint on seal. */
  readonly checkpoints?: CheckpointKeyHolder;
}

export async function openServerCore(opts: CoreOptions): Promise<ServerCore> {
  const { store, seal } = opts;
  const audit = createAuditLog(store, { fsync: opts.auditFsync });
  if (opts.onAuditStored) audit.onStored(opts.onAuditStored);
  let record = await readRecord(store, seal.kind);
  let initPending = record !== undefined && (await store.getMeta(INIT_PENDING_META)) !== undefined;
  // Why the server is sealed, when an operator sealed it (here or on a server sharing the database).
  let sealedBy: 'operator' | undefined = record && (await store.getMeta(OPERATOR_SEAL_META)) !== undefined ? 'operator' : undefined;
  let services: Services | undefined;
  let keys: KeyStore | undefined;
  const shares = new Map<string, string>(); // share text by digest index, while collecting
  let unsealing: Promise<unknown> | undefined;
  let headKey: Buffer | undefined; // the audit head key in use (derived from the root key)

  // The first login of an init-made user ends the window in which init may be redone.
  const confirmInit = async (p: Principal): Promise<void> => {
    if (!initPending) return;
    await store.transaction(async (tx) => {
      if ((await tx.getMeta(INIT_PENDING_META)) === undefined) return;
      await tx.deleteMeta(INIT_PENDING_META);
      await audit.recordIn(tx, { actor: actorName(p), operation: 'sys.init.confirm', result: 'ok' });
    });
    initPending = false;
  };
  const confirming = (a: Access): Access => ({
    ...a,
    async login(name, password, clientAddress) {
      const out = await a.login(name, password, clientAddress);
      await confirmInit(out.principal);
      return out;
    },
  });

  /** Opens the services with the root key (wiped after); `lift` clears the operator seal with the unseal's audit record. */
  // fresh: the first unseal after init; otherwise the store was signed before, so a missing head means a deleted one.
  const unsealWith = async (rootKey: Buffer, lift?: { actor: string }, fresh = false): Promise<void> => {
    let headIntact: boolean;
    try {
      // A head that no longer matches the chain is left as it is, so verify keeps reporting it.
      const stack = await openKeyhaven({ store, rootKey, audit, expectSignedHead: !fresh });
      const { barrier, storeId } = stack;
      headIntact = stack.headIntact;
      headKey = stack.headKey;
      keys = stack.keys;
      const singlePersonDev = opts.singlePersonDev === true;
      const access = confirming(createAccess({ store, barrier, audit, options: opts.access, singlePersonDev, onLock: opts.onSignInLock }));
      const quorum = createQuorum({ store, audit, barrier, singlePersonDev });
      // A copy: the checkpointer wipes its key on seal, independently of the log.
      opts.checkpoints?.unsealed(Buffer.from(stack.checkpointKey), storeId);
      services = { keys, access, quorum, recoveries: createRecoveries({ store, audit }), storeId, singlePersonDev };
    } finally {
      rootKey.fill(0);
    }
    const unsigned = audit.unsignedAtAdopt();
    const details = { kind: seal.kind, ...(headIntact ? {} : { auditHeadBroken: true }), ...(unsigned ? { unsignedRecordsAdopted: unsigned } : {}) };
    if (lift) {
      await store.transaction(async (tx) => {
        const lifted = (await tx.getMeta(OPERATOR_SEAL_META)) !== undefined;
        await tx.deleteMeta(OPERATOR_SEAL_META);
        await audit.recordIn(tx, { actor: lift.actor, operation: 'sys.unseal', result: 'ok', details: { ...details, ...(lifted ? { operatorSealLifted: true } : {}) } });
      });
    } else {
      // Signs the head over everything written while sealed.
      await audit.record({ actor: 'system:seal', operation: 'sys.unseal', result: 'ok', details });
    }
    sealedBy = undefined;
  };

  /** Drops the root key and everything derived from it. */
  const dropServices = (): void => {
    services = undefined;
    keys?.wipe();
    keys = undefined;
    audit.setHeadKey(undefined);
    headKey = undefined;
    shares.clear();
  };

  const status = (): SealStatus => {
    const base = {
      initialized: record !== undefined,
      sealed: services === undefined,
      kind: seal.kind,
      ...(services === undefined && sealedBy ? { sealedBy } : {}),
      ...(record ? { initConfirmed: !initPending } : {}),
    };
    if (seal.kind !== 'shamir' || !record) return base;
    return { ...base, threshold: Number(record.threshold), shares: Number(record.shares), progress: services ? 0 : shares.size };
  };

  /** One unseal at a time; the root key is wiped whatever happens. */
  const exclusive = async (fn: () => Promise<void>): Promise<void> => {
    const p = fn();
    unsealing = p;
    try {
      await p;
    } finally {
      unsealing = undefined;
    }
  };

  // Auto kinds unseal themselves at start-up only, and not while an operator seal holds.
  if (record && !seal.needsShares && !sealedBy) await unsealWith(await seal.unseal(record));

  /**
   * The tick's path for a server that has not yet seen another server's init
   * (or learned of it from a refused init of its own): adopt the seal record,
   * and for auto kinds unseal as at start-up, unless an operator seal holds.
   * True when it acted.
   */
  const adoptPeerInit = async (): Promise<boolean> => {
    if (unsealing) return false;
    if (!record) {
      const found = await readRecord(store, seal.kind);
      if (record || unsealing || !found) return false;
      record = found;
      initPending = (await store.getMeta(INIT_PENDING_META)) !== undefined;
      sealedBy = (await store.getMeta(OPERATOR_SEAL_META)) !== undefined ? 'operator' : undefined;
      if (!seal.needsShares && !sealedBy && !unsealing && !services) await exclusive(async () => unsealWith(await seal.unseal(found)));
      return true;
    }
    if (!services && !sealedBy && !seal.needsShares) {
      // Initialised (by another server) but never unsealed here: unseal as at start-up, unless an
      // operator seal (or a redone init) came through another server since this server last looked.
      const [found, operatorSeal] = await Promise.all([readRecord(store, seal.kind), store.getMeta(OPERATOR_SEAL_META)]);
      if (unsealing || services) return false;
      if (operatorSeal !== undefined) {
        sealedBy = 'operator';
        return true;
      }
      if (!found) return false;
      record = found;
      await exclusive(async () => unsealWith(await seal.unseal(found)));
      return true;
    }
    return false;
  };

  let catchingUp: Promise<void> | undefined;
  let lastCatchUp = -Infinity;
  const CATCH_UP_EVERY_MS = 1000;

  const requireEntitled = (p: Principal): void => {
    if (p.kind === 'user' && p.roles.includes('security-admin')) return;
    throw new KeyhavenError('permission_denied', `${actorName(p)} may not unseal this server: a security-admin lifts the seal (keyhaven operator unseal)`);
  };

  /** Auto kinds: who may lift the seal, proven by a session token (no root key needed: credentials are stored as hashes). */
  const unsealByToken = async (token: string, identified?: (p: Principal) => void): Promise<void> => {
    const p = await tokenPrincipal(store, token);
    identified?.(p);
    requireEntitled(p);
    await unsealWith(await seal.unseal(record!), { actor: actorName(p) });
  };

  /** Auto kinds: name and password, checked the way login checks them (throttling and lockout included). */
  const unsealByPassword = async (name: string, password: string, source: string, identified?: (p: Principal) => void): Promise<void> => {
    const rootKey = await seal.unseal(record!);
    let p: Principal;
    try {
      const barrier = await openBarrier(store, rootKey);
      const access = confirming(createAccess({ store, barrier, audit, options: opts.access, onLock: opts.onSignInLock }));
      const out = await access.login(name, password, source);
      // The session login opened is not handed out: the unseal is the only thing it was for.
      await access.logout(out.token);
      p = out.principal;
      identified?.(p);
      requireEntitled(p);
    } catch (e) {
      rootKey.fill(0);
      throw e;
    }
    await unsealWith(rootKey, { actor: actorName(p) });
  };

  const core: ServerCore = {
    audit,
    store,
    status,

    services() {
      if (services) return services;
      if (!record) throw new KeyhavenError('sealed', 'the server is not initialised; run keyhaven operator init');
      throw new KeyhavenError('sealed', sealedBy ? 'the server was sealed by an operator; a security-admin unseals it (keyhaven operator unseal)' : 'the server is sealed; unseal it first (keyhaven operator unseal)');
    },

    async init(o) {
      if (unsealing) throw new KeyhavenError('failed_precondition', 'initialisation or unsealing is already in progress');
      const adminName = o.adminName ?? 'admin';
      const keyAdminName = o.keyAdminName ?? 'keyadmin';
      if (adminName === keyAdminName) throw new KeyhavenError('invalid_argument', 'the first security-admin and the first key-admin must be two different users');
      const run = async (): Promise<InitOutcome> => {
        // Another server sharing the database may have initialised or confirmed since.
        // Learned only when this init goes ahead: a refused one leaves the tick to pick up the other server's init.
        const known = (await readRecord(store, seal.kind)) ?? record;
        const pending = known !== undefined && (await store.getMeta(INIT_PENDING_META)) !== undefined;
        if (known && !pending) throw new KeyhavenError('failed_precondition', 'the server is already initialised');
        record = known;
        initPending = pending;
        // What a seal leaves outside the database (a key file, an HSM wrapping key) is adopted by
        // the next try, so a crash before the commit below leaves a server that can be initialised again.
        const made = await seal.initialize({ shares: o.shares, threshold: o.threshold });
        const rootKey = made.rootKey;
        const admin = { name: adminName, password: generatePassword() };
        const keyAdmin = { name: keyAdminName, password: generatePassword() };
        // Hashed before the transaction: it holds the write lock every server shares.
        const [adminHash, keyAdminHash] = await Promise.all([hashNewPassword(admin.password), hashNewPassword(keyAdmin.password)]);
        // Records written in the init transaction go unsigned; the unseal after it signs the head with the new root key.
        const previousHeadKey = headKey;
        audit.setHeadKey(undefined);
        // A batch already handed to the writer thread carries the old key: it must commit
        // before the transaction below deletes the head, or it would sign a new one with it.
        await audit.flush();
        let redo = false;
        try {
          // One transaction: the seal record, the barrier canary, both users and their passwords,
          // the audit records. A crash leaves either nothing of this init or all of it.
          await store.transaction(async (tx) => {
            const found = await tx.getMeta(SEAL_META);
            redo = found !== undefined;
            if (redo && (await tx.getMeta(INIT_PENDING_META)) === undefined) throw new KeyhavenError('failed_precondition', 'the server is already initialised');
            if (redo) {
              // Nobody has logged in since: only what the earlier init made is here. Audit records stay.
              if ((await tx.listKeys()).length > 0) throw new KeyhavenError('failed_precondition', 'the server holds keys; it cannot be initialised again');
              for (const id of await tx.deleteAllPrincipals()) await tx.barrierDelete(`principals/${id}/password`);
              await tx.barrierDelete(CANARY_PATH);
              await tx.deleteMeta(OPERATOR_SEAL_META);
              // The head was signed with the root key being replaced; the chain itself is kept whole.
              await tx.deleteMeta(AUDIT_HEAD_META);
            }
            await tx.setMeta(SEAL_META, JSON.stringify(made.record));
            if (o.confirmed) await tx.deleteMeta(INIT_PENDING_META);
            else await tx.setMeta(INIT_PENDING_META, JSON.stringify({ at: new Date().toISOString() }));
            const barrier = await openBarrier(tx, rootKey);
            const access = createAccess({ store: tx, barrier, audit, options: opts.access, singlePersonDev: opts.singlePersonDev === true });
            await access.createUser(SYSTEM, { name: admin.name, passwordHash: adminHash, roles: ['security-admin'] });
            await access.createUser(SYSTEM, { name: keyAdmin.name, passwordHash: keyAdminHash, roles: ['key-admin'] });
            await audit.recordIn(tx, { actor: 'system:seal', operation: 'sys.init', result: 'ok', details: { kind: seal.kind, admin: admin.name, keyAdmin: keyAdmin.name, ...(redo ? { redone: true } : {}) } });
          });
        } catch (e) {
          rootKey.fill(0);
          // Rolled back: the stored head is as it was.
          if (previousHeadKey) await audit.adoptHeadKey(previousHeadKey);
          throw e;
        }
        record = made.record;
        initPending = o.confirmed !== true;
        sealedBy = undefined;
        // A redone init replaces the root key: nothing derived from the old one stays.
        if (services) dropServices();
        // The first unseal signs the chain head (and sends the first checkpoint) with the new root key.
        await unsealWith(rootKey, undefined, true);
        if (seal.needsShares) {
          // A shamir server starts its life sealed: the shares are the only way in.
          await audit.flush();
          await opts.checkpoints?.sealing();
          dropServices();
        }
        return { ...(made.shares ? { shares: made.shares } : {}), admin, keyAdmin };
      };
      // Set before the first await: a second init in this process is refused, not interleaved.
      const p = run();
      unsealing = p;
      try {
        return await p;
      } finally {
        unsealing = undefined;
      }
    },

    catchUp() {
      // Only a server that never unsealed with the current record has anything to learn here.
      const behind = !unsealing && (!record || (!services && !sealedBy && !seal.needsShares));
      if (!behind) return Promise.resolve();
      if (catchingUp) return catchingUp;
      if (Date.now() - lastCatchUp < CATCH_UP_EVERY_MS) return Promise.resolve();
      catchingUp = adoptPeerInit()
        .then(
          () => undefined,
          // The caller still gets the current state; the tick tries again and logs the failure.
          () => undefined,
        )
        .finally(() => {
          lastCatchUp = Date.now();
          catchingUp = undefined;
        });
      return catchingUp;
    },

    async refreshKeys() {
      if (unsealing) return;
      await services?.keys.refreshChanged();
    },

    async unseal(proof, identified) {
      // Another server sharing the database may have run init since start-up: learn it now, not at the next tick.
      await core.catchUp();
      if (!record) throw new KeyhavenError('sealed', 'the server is not initialised; run keyhaven operator init');
      if (services) return status();
      if (unsealing) await unsealing.catch(() => {});
      if (services) return status();
      if (!seal.needsShares) {
        // Automatic unseal happens at process start only; after that a security-admin lifts the seal.
        try {
          if (proof.token !== undefined) await exclusive(() => unsealByToken(proof.token!, identified));
          else if (proof.name !== undefined && proof.password !== undefined) await exclusive(() => unsealByPassword(proof.name!, proof.password!, proof.source ?? 'unknown', identified));
          else throw new KeyhavenError('unauthenticated', 'unsealing this server needs a security-admin: run keyhaven operator unseal (it asks for a name and password, or uses the saved session)');
        } catch (e) {
          // Every refusal names the way in.
          if (e instanceof KeyhavenError && e.code === 'unauthenticated' && !e.message.includes('keyhaven operator unseal')) {
            throw new KeyhavenError('unauthenticated', `${e.message}; a security-admin unseals this server (keyhaven operator unseal)`);
          }
          throw e;
        }
        return status();
      }
      const share = proof.share;
      if (share === undefined) throw new KeyhavenError('invalid_argument', 'a share is required to unseal this server');
      const index = checkShare(record, share);
      // Refused rather than ignored: an operator who enters a share twice thinks progress moved, and should hear it did not.
      if (shares.has(String(index))) {
        throw new KeyhavenError('invalid_argument', `this share was already entered (${shares.size} of ${Number(record.threshold)} distinct shares in; progress kept): enter a different share`);
      }
      shares.set(String(index), share);
      if (shares.size < Number(record.threshold)) return status();
      const entered = [...shares.values()];
      shares.clear();
      try {
        // The shares are the proof: they lift an operator seal too.
        await exclusive(async () => unsealWith(await seal.unseal(record!, entered), { actor: 'system:seal' }));
      } catch (e) {
        throw e instanceof KeyhavenError && e.code === 'config_invalid'
          ? new KeyhavenError('invalid_argument', 'the shares entered do not rebuild this server\'s root key; start again', { cause: e })
          : e;
      }
      return status();
    },

    async seal(by) {
      if (by) {
        // Durable before the root key goes: a restart, or another server sharing the database, keeps it sealed.
        await store.transaction(async (tx) => {
          await tx.setMeta(OPERATOR_SEAL_META, JSON.stringify({ by: actorName(by), at: new Date().toISOString() }));
          await audit.recordIn(tx, { actor: actorName(by), operation: 'sys.seal', result: 'ok', details: { kind: seal.kind, operatorSeal: true } });
        });
        sealedBy = 'operator';
      }
      if (!services) return;
      if (!by) await audit.record({ actor: 'system:seal', operation: 'sys.seal', result: 'ok', details: { kind: seal.kind } });
      await audit.flush();
      await opts.checkpoints?.sealing();
      dropServices();
    },

    async tick(now = new Date()) {
      // Initialised by another server sharing the database: auto kinds unseal as at start-up.
      if (!record && !unsealing) {
        await adoptPeerInit();
        return;
      }
      if (await adoptPeerInit()) return;
      if (record && initPending && !unsealing) {
        // Until confirmed, init may be redone on another server sharing the database: a new seal record means a new root key.
        initPending = (await store.getMeta(INIT_PENDING_META)) !== undefined;
        const raw = await store.getMeta(SEAL_META);
        if (raw !== undefined && raw !== JSON.stringify(record) && !unsealing) {
          const found = (await readRecord(store, seal.kind))!;
          record = found;
          if (services) dropServices();
          shares.clear();
          sealedBy = (await store.getMeta(OPERATOR_SEAL_META)) !== undefined ? 'operator' : undefined;
          if (!seal.needsShares && !sealedBy) await exclusive(async () => unsealWith(await seal.unseal(found)));
          return;
        }
      }
      if (record && !unsealing) {
        // An operator seal seals every server sharing the database, and its lifting opens them again.
        const operatorSeal = (await store.getMeta(OPERATOR_SEAL_META)) !== undefined;
        if (operatorSeal && services) {
          sealedBy = 'operator';
          await audit.record({ actor: 'system:seal', operation: 'sys.seal', result: 'ok', details: { kind: seal.kind, operatorSeal: true } });
          await audit.flush();
          dropServices();
          opts.onSealChange?.('sealed');
          return;
        }
        if (!operatorSeal && !services && sealedBy === 'operator') {
          sealedBy = undefined;
          const r = record;
          if (!seal.needsShares && !unsealing) {
            await exclusive(async () => unsealWith(await seal.unseal(r)));
            opts.onSealChange?.('unsealed');
          }
          return;
        }
        if (operatorSeal && !services) sealedBy = 'operator';
      }
      const s = services;
      if (!s) return;
      const run = await s.keys.runScheduled(now, 'system:scheduler');
      const expiredApprovals = await s.quorum.expire(now);
      await s.access.sweep(now);
      // Picks up changes made by other servers sharing the database.
      await s.keys.refreshCached();
      if (run.rotated.length || run.destroyed.length || expiredApprovals) opts.onScheduled?.({ ...run, expiredApprovals });
    },

    async close() {
      await audit.close();
      services = undefined;
      keys?.wipe();
      await seal.close();
    },
  };
  return core;
}

/**
 * The principal behind a bearer token, read without the barrier (credentials
 * are stored as SHA-256 hashes): what lets a sealed server check who asks to unseal it.
 */
async function tokenPrincipal(store: Store, token: string): Promise<Principal> {
  const parsed = parseToken(token);
  if (!parsed) throw new KeyhavenError('unauthenticated', 'the token is not a keyhaven token');
  const cred = await store.findCredential(parsed.id);
  const row = cred ? await store.findPrincipalById(cred.principal_id) : undefined;
  const kindMatches = cred !== undefined && (cred.kind === 'api_key') === (parsed.kind === 'api_key');
  if (!cred || !row || !kindMatches || !hashesEqual(cred.hash, parsed.secretHash) || row.state !== 'active') throw new KeyhavenError('unauthenticated', 'the token is not valid');
  if (cred.revoked_at !== null) throw new KeyhavenError('unauthenticated', 'the token has been revoked');
  if (cred.expires_at !== null && Date.parse(cred.expires_at) <= Date.now()) throw new KeyhavenError('unauthenticated', 'the session has expired; log in again');
  return { id: row.id, name: row.name, kind: row.kind, roles: row.kind === 'user' ? parseRoles(JSON.parse(row.roles) as string[]) : [], via: cred.kind === 'api_key' ? 'api_key' : 'session' };
}

async function readRecord(store: Store, kind: SealKind): Promise<SealRecord | undefined> {
  const raw = await store.getMeta(SEAL_META);
  if (raw === undefined) {
    // A store made by the plugin's embedded mode (no seal record): its root key is a key file.
    if (kind === 'keyfile' && (await store.barrierGet('sys/canary'))) return { kind: 'keyfile' };
    return undefined;
  }
  let rec: SealRecord;
  try {
    rec = JSON.parse(raw) as SealRecord;
  } catch {
    throw new KeyhavenError('config_invalid', 'the stored seal record is unreadable');
  }
  if (rec.kind !== kind) {
    throw new KeyhavenError('config_invalid', `this database was initialised with the ${rec.kind} seal, but the configuration says ${kind}`);
  }
  return rec;
}
