import { createAccess, SYSTEM, type Access, type AccessOptions } from '../access/access.js';
import { createQuorum, type Quorum } from '../access/quorum.js';
import { generatePassword } from '../access/secrets.js';
import { createAuditLog, type AuditLog } from '../audit/audit-log.js';
import { CHECKPOINT_KEY_INFO } from '../audit/checkpoint.js';
import type { CheckpointKeyHolder } from '../audit/checkpointer.js';
import { openBarrier } from '../barrier/barrier.js';
import { deriveKey } from '../crypto/kdf.js';
import { KeyhavenError } from '../errors.js';
import { createKeyStore, type KeyStore } from '../keys/key-store.js';
import type { Seal, SealKind, SealRecord } from '../seal/seal.js';
import { checkShare } from '../seal/shamir.js';
import { randomBytes } from 'node:crypto';
import type { Store } from '../storage/store.js';

// The key server's state: uninitialised → (init) → sealed ⇄ unsealed. Only an
// unsealed server holds the root key, and with it the services that need it;
// the audit log works in every state (records written while sealed join the
// chain and are covered by the next signed head).

const SEAL_META = 'seal';

export interface Services {
  readonly keys: KeyStore;
  readonly access: Access;
  readonly quorum: Quorum;
  readonly storeId: string;
}

export interface SealStatus {
  readonly initialized: boolean;
  readonly sealed: boolean;
  readonly kind: SealKind;
  readonly threshold?: number;
  readonly shares?: number;
  /** Valid shares entered so far (shamir). */
  readonly progress?: number;
}

export interface InitOutcome {
  readonly shares?: readonly string[];
  readonly admin: { readonly name: string; readonly password: string };
}

export interface ServerCore {
  readonly audit: AuditLog;
  readonly store: Store;
  status(): SealStatus;
  /** The unsealed services; throws `sealed` otherwise. */
  services(): Services;
  init(opts: { shares?: number | undefined; threshold?: number | undefined; adminName?: string | undefined }): Promise<InitOutcome>;
  /** Shamir: adds one share (unsealing once enough are in). Auto kinds: recovers the root key again. */
  unseal(share?: string): Promise<SealStatus>;
  seal(): Promise<void>;
  /** Scheduled work: rotations, destructions, approval expiry, session sweep. */
  tick(now?: Date): Promise<void>;
  close(): Promise<void>;
}

export interface CoreOptions {
  readonly store: Store;
  readonly seal: Seal;
  readonly auditFsync: boolean;
  readonly access?: Partial<AccessOptions>;
  /** Called with each scheduled change, for logs. */
  readonly onScheduled?: (what: { rotated: readonly string[]; destroyed: readonly string[]; expiredApprovals: number }) => void;
  /** Receives the audit checkpoint key on unseal; writes a last checkpoint on seal. */
  readonly checkpoints?: CheckpointKeyHolder;
}

export async function openServerCore(opts: CoreOptions): Promise<ServerCore> {
  const { store, seal } = opts;
  const audit = createAuditLog(store, { fsync: opts.auditFsync });
  let record = await readRecord(store, seal.kind);
  let services: Services | undefined;
  let keys: KeyStore | undefined;
  const shares = new Map<string, string>(); // share text by digest index, while collecting
  let unsealing: Promise<unknown> | undefined;

  // fresh: the first unseal, by init; otherwise the store was signed before, so a missing head means a deleted one.
  const unsealWith = async (rootKey: Buffer, fresh = false): Promise<void> => {
    let headIntact: boolean;
    try {
      const barrier = await openBarrier(store, rootKey);
      // A head that no longer matches the chain is left as it is, so verify keeps reporting it.
      headIntact = await audit.adoptHeadKey(deriveKey(rootKey, 'keyhaven audit head key v1'), !fresh);
      keys = createKeyStore({ store, barrier, audit });
      const access = createAccess({ store, barrier, audit, options: opts.access });
      const quorum = createQuorum({ store, audit, barrier });
      const storeId = await store.setMetaIfAbsent('store_id', randomBytes(8).toString('hex'));
      audit.setCheckpointKey(deriveKey(rootKey, CHECKPOINT_KEY_INFO));
      opts.checkpoints?.unsealed(deriveKey(rootKey, CHECKPOINT_KEY_INFO), storeId);
      services = { keys, access, quorum, storeId };
    } finally {
      rootKey.fill(0);
    }
    // Signs the head over everything written while sealed.
    const unsigned = audit.unsignedAtAdopt();
    await audit.record({ actor: 'system:seal', operation: 'sys.unseal', result: 'ok', details: { kind: seal.kind, ...(headIntact ? {} : { auditHeadBroken: true }), ...(unsigned ? { unsignedRecordsAdopted: unsigned } : {}) } });
  };

  const status = (): SealStatus => {
    const base = { initialized: record !== undefined, sealed: services === undefined, kind: seal.kind };
    if (seal.kind !== 'shamir' || !record) return base;
    return { ...base, threshold: Number(record.threshold), shares: Number(record.shares), progress: services ? 0 : shares.size };
  };

  // Auto kinds unseal themselves at start-up.
  if (record && !seal.needsShares) await unsealWith(await seal.unseal(record));

  const core: ServerCore = {
    audit,
    store,
    status,

    services() {
      if (services) return services;
      throw new KeyhavenError('sealed', record ? 'the server is sealed; unseal it first (keyhaven operator unseal)' : 'the server is not initialised; run keyhaven operator init');
    },

    async init(o) {
      if (record) throw new KeyhavenError('failed_precondition', 'the server is already initialised');
      if (unsealing) throw new KeyhavenError('failed_precondition', 'initialisation is already in progress');
      const adminName = o.adminName ?? 'admin';
      const run = (async () => {
        const made = await seal.initialize({ shares: o.shares, threshold: o.threshold });
        const rootKey = made.rootKey;
        await store.transaction(async (tx) => {
          if (await tx.getMeta(SEAL_META)) throw new KeyhavenError('failed_precondition', 'the server is already initialised');
          await tx.setMeta(SEAL_META, JSON.stringify(made.record));
        });
        record = made.record;
        await unsealWith(rootKey, true);
        const password = generatePassword();
        await services!.access.createUser(SYSTEM, { name: adminName, password, roles: ['security-admin'] });
        await audit.record({ actor: 'system:seal', operation: 'sys.init', result: 'ok', details: { kind: seal.kind, admin: adminName } });
        // A shamir server starts its life sealed: the shares are the only way in.
        if (seal.needsShares) await core.seal();
        return { shares: made.shares, admin: { name: adminName, password } };
      })();
      unsealing = run;
      try {
        return await run;
      } finally {
        unsealing = undefined;
      }
    },

    async unseal(share) {
      // Another server sharing the database may have run init since start-up.
      if (!record && !unsealing) {
        const found = await readRecord(store, seal.kind);
        record ??= found;
      }
      if (!record) throw new KeyhavenError('sealed', 'the server is not initialised; run keyhaven operator init');
      if (services) return status();
      if (unsealing) await unsealing.catch(() => {});
      if (services) return status();
      if (!seal.needsShares) {
        const p = seal.unseal(record).then(unsealWith);
        unsealing = p;
        try {
          await p;
        } finally {
          unsealing = undefined;
        }
        return status();
      }
      if (share === undefined) throw new KeyhavenError('invalid_argument', 'a share is required to unseal this server');
      const index = checkShare(record, share);
      shares.set(String(index), share);
      if (shares.size < Number(record.threshold)) return status();
      const entered = [...shares.values()];
      shares.clear();
      const p = seal.unseal(record, entered).then(unsealWith);
      unsealing = p;
      try {
        await p;
      } catch (e) {
        throw e instanceof KeyhavenError && e.code === 'config_invalid'
          ? new KeyhavenError('invalid_argument', 'the shares entered do not rebuild this server\'s root key; start again', { cause: e })
          : e;
      } finally {
        unsealing = undefined;
      }
      return status();
    },

    async seal() {
      if (!services) return;
      await audit.record({ actor: 'system:seal', operation: 'sys.seal', result: 'ok', details: { kind: seal.kind } });
      await audit.flush();
      await opts.checkpoints?.sealing();
      services = undefined;
      keys?.wipe();
      keys = undefined;
      audit.setHeadKey(undefined);
      shares.clear();
    },

    async tick(now = new Date()) {
      if (!record && !unsealing) {
        // Initialised by another server sharing the database: auto kinds unseal as at start-up.
        const found = await readRecord(store, seal.kind);
        if (record || unsealing || !found) return;
        record = found;
        if (!seal.needsShares) await core.unseal();
        return;
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
      await audit.flush();
      services = undefined;
      keys?.wipe();
      await seal.close();
    },
  };
  return core;
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
