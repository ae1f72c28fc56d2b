import { randomBytes, timingSafeEqual } from 'node:crypto';
import type * as P from 'pkcs11js';
import { KeyhavenError } from '../errors.js';
import { KEY_BYTES } from '../crypto/aead.js';
import {
  acquireModule,
  aesGcm,
  attrBool as bool,
  attrUlong as ulong,
  ckr,
  findSecretKeys,
  findToken,
  loginBlocked,
  loginUser,
  openSession,
  releaseModule,
  safely,
  type LoadedModule as Loaded,
  type TokenSelector,
} from '../hsm/pkcs11-token.js';
import { requireKind } from './record.js';
import type { InitResult, Seal, SealRecord } from './seal.js';

/**
 * PKCS#11 seal: the root key is stored wrapped (AES-256-GCM) by a
 * non-extractable AES-256 key that never leaves the HSM token; only the
 * wrapped blob is kept in the record.
 */

/** The module path and the token, by label or by slot number (both: they must agree). */
export interface Pkcs11SealOptions extends TokenSelector {
  /** The token's user PIN. Never logged, never retried after a refusal. */
  readonly pin: string;
  /** Label of the AES key that wraps the root key. */
  readonly keyLabel: string;
}

export interface Pkcs11Record extends SealRecord {
  readonly kind: 'pkcs11';
  readonly keyLabel: string;
  readonly mechanism: typeof MECHANISM;
  /** base64 */
  readonly iv: string;
  /** base64: ciphertext || 16-byte tag */
  readonly wrapped: string;
}

const MECHANISM = 'CKM_AES_GCM';
const AAD = Buffer.from('keyhaven root key v1');
const IV_BYTES = 12;
const TAG_BYTES = 16;
const WRAPPED_BYTES = KEY_BYTES + TAG_BYTES;

/** Strict base64: a value that does not re-encode to itself was altered. */
function base64Field(value: unknown, name: string, bytes: number): Buffer {
  const b = typeof value === 'string' ? Buffer.from(value, 'base64') : undefined;
  if (!b || b.toString('base64') !== value || b.length !== bytes) {
    throw new KeyhavenError('integrity', `the stored pkcs11 seal record is damaged: ${name} must be ${bytes} bytes of base64`);
  }
  return b;
}

function pkcs11Record(record: SealRecord | undefined): Pkcs11Record & { ivBytes: Buffer; wrappedBytes: Buffer } {
  requireKind(record, 'pkcs11');
  const r = record as Record<string, unknown>;
  if (typeof r.keyLabel !== 'string' || r.keyLabel === '') {
    throw new KeyhavenError('config_invalid', 'the stored pkcs11 seal record is malformed: it names no key label');
  }
  if (r.mechanism !== MECHANISM) {
    throw new KeyhavenError('config_invalid', `the stored pkcs11 seal record uses mechanism "${String(r.mechanism)}"; this version supports ${MECHANISM}`);
  }
  const ivBytes = base64Field(r.iv, 'iv', IV_BYTES);
  const wrappedBytes = base64Field(r.wrapped, 'wrapped', WRAPPED_BYTES);
  return { kind: 'pkcs11', keyLabel: r.keyLabel, mechanism: MECHANISM, iv: r.iv as string, wrapped: r.wrapped as string, ivBytes, wrappedBytes };
}

function validate(opts: Pkcs11SealOptions): void {
  const bad = (why: string): never => {
    throw new KeyhavenError('config_invalid', `pkcs11 seal: ${why}`);
  };
  if (!opts || typeof opts.module !== 'string' || opts.module === '') bad('the PKCS#11 module path is missing');
  if (typeof opts.keyLabel !== 'string' || opts.keyLabel === '') bad('the key label is missing');
  if (typeof opts.pin !== 'string' || opts.pin === '') bad('the PIN is missing');
  const hasLabel = typeof opts.tokenLabel === 'string' && opts.tokenLabel !== '';
  const hasSlot = opts.slot !== undefined;
  if (hasSlot && !(Number.isSafeInteger(opts.slot) && (opts.slot as number) >= 0)) bad(`slot must be a non-negative whole number, got ${String(opts.slot)}`);
  if (!hasLabel && !hasSlot) bad('name the token by label or by slot number');
}

interface Open {
  readonly loaded: Loaded;
  readonly session: Buffer;
  readonly rw: boolean;
  readonly token: string;
}

export function pkcs11Seal(opts: Pkcs11SealOptions): Seal {
  validate(opts);
  const keyLabel = opts.keyLabel;
  let open: Open | undefined;
  // Set once the token refused the PIN: a retry could lock the token, so
  // every later call is refused without calling C_Login.
  let pinRefused: string | undefined;

  function refusePin(token: string, why: string): KeyhavenError {
    pinRefused = token;
    return new KeyhavenError('config_invalid', `the HSM refused the PIN for token ${token} (${why}; not retried, to avoid locking the token): fix the PIN in the configuration and restart`);
  }

  /** Logs in once per seal; reuses the session while it works. */
  function connect(rw: boolean): Open {
    if (pinRefused !== undefined) {
      throw new KeyhavenError('config_invalid', `the HSM refused the PIN for token ${pinRefused} earlier; not trying again, to avoid locking the token: fix the PIN in the configuration and restart`);
    }
    if (open && (open.rw || !rw)) return open;
    disconnect();
    const loaded = acquireModule(opts.module, 'the pkcs11 seal');
    let session: Buffer | undefined;
    try {
      const { slot, label: found, flags } = findToken(loaded, opts);
      const token = `"${found}"`;
      const blocked = loginBlocked(loaded, flags);
      if (blocked && 'noPin' in blocked) throw new KeyhavenError('config_invalid', `token ${token} has no user PIN set: initialize it first`);
      if (blocked) throw refusePin(token, blocked.refused);
      session = openSession(loaded, slot, rw, token);
      const refused = loginUser(loaded, session, opts.pin, token);
      if (refused !== undefined) throw refusePin(token, refused);
      open = { loaded, session, rw, token };
      return open;
    } catch (e) {
      if (session) safely(() => loaded.lib.C_CloseSession(session as Buffer));
      releaseModule(loaded);
      throw e;
    }
  }

  function disconnect(): void {
    const o = open;
    open = undefined;
    if (!o) return;
    safely(() => o.loaded.lib.C_CloseSession(o.session));
    releaseModule(o.loaded);
  }

  /** Runs fn on a logged-in session; any failure drops the session so the next call starts clean. */
  function withSession<T>(rw: boolean, fn: (o: Open) => T): T {
    const o = connect(rw);
    try {
      return fn(o);
    } catch (e) {
      disconnect();
      throw e;
    }
  }

  function findKey(o: Open): Buffer | null {
    const found = findSecretKeys(o.loaded, o.session, keyLabel);
    if (found.length > 1) {
      throw new KeyhavenError('config_invalid', `several keys on token ${o.token} are labelled "${keyLabel}"; refusing to guess which one wraps the root key`);
    }
    return found[0] ?? null;
  }

  function checkKey(o: Open, key: Buffer, forInit: boolean): void {
    const { api, lib } = o.loaded;
    const attrs = lib.C_GetAttributeValue(o.session, key, [
      { type: api.CKA_KEY_TYPE },
      { type: api.CKA_VALUE_LEN },
      { type: api.CKA_EXTRACTABLE },
      { type: api.CKA_SENSITIVE },
      { type: api.CKA_ENCRYPT },
      { type: api.CKA_DECRYPT },
    ]);
    const [type, len, extractable, sensitive, encrypt, decrypt] = attrs.map((a) => a.value as Buffer | undefined);
    const what = `key "${keyLabel}" on token ${o.token}`;
    if (ulong(type) !== api.CKK_AES) throw new KeyhavenError('config_invalid', `${what} is not an AES key`);
    if (ulong(len) !== KEY_BYTES) throw new KeyhavenError('config_invalid', `${what} is AES-${ulong(len) * 8}; the seal needs AES-256`);
    if (!bool(decrypt) || (forInit && !bool(encrypt))) {
      throw new KeyhavenError('config_invalid', `${what} is not allowed to ${forInit ? 'encrypt and decrypt' : 'decrypt'} (CKA_ENCRYPT / CKA_DECRYPT)`);
    }
    // A key that can leave the HSM defeats the point of this seal.
    if (forInit && (bool(extractable) || !bool(sensitive))) {
      throw new KeyhavenError('config_invalid', `${what} can be exported (CKA_EXTRACTABLE true or CKA_SENSITIVE false); the seal needs a non-extractable key`);
    }
  }

  function generateKey(o: Open): Buffer {
    const { api, lib } = o.loaded;
    try {
      return lib.C_GenerateKey(o.session, { mechanism: api.CKM_AES_KEY_GEN }, [
        { type: api.CKA_CLASS, value: api.CKO_SECRET_KEY },
        { type: api.CKA_KEY_TYPE, value: api.CKK_AES },
        { type: api.CKA_VALUE_LEN, value: KEY_BYTES },
        { type: api.CKA_LABEL, value: keyLabel },
        { type: api.CKA_ID, value: randomBytes(16) },
        { type: api.CKA_TOKEN, value: true },
        { type: api.CKA_PRIVATE, value: true },
        { type: api.CKA_SENSITIVE, value: true },
        { type: api.CKA_EXTRACTABLE, value: false },
        { type: api.CKA_ENCRYPT, value: true },
        { type: api.CKA_DECRYPT, value: true },
        { type: api.CKA_WRAP, value: false },
        { type: api.CKA_UNWRAP, value: false },
      ]);
    } catch (e) {
      throw new KeyhavenError('config_invalid', `token ${o.token} could not generate AES-256 key "${keyLabel}" (${ckr(e) ?? 'error'})`);
    }
  }

  function gcm(o: Open, iv: Buffer): P.Mechanism {
    return aesGcm(o.loaded, iv, AAD, TAG_BYTES);
  }

  function decrypt(o: Open, key: Buffer, iv: Buffer, wrapped: Buffer): Buffer {
    const { lib } = o.loaded;
    const out = Buffer.alloc(WRAPPED_BYTES);
    try {
      lib.C_DecryptInit(o.session, gcm(o, iv), key);
    } catch (e) {
      throw new KeyhavenError('config_invalid', `token ${o.token} refused AES-GCM decryption with key "${keyLabel}" (${ckr(e) ?? 'error'})`);
    }
    let plain: Buffer;
    try {
      plain = lib.C_Decrypt(o.session, wrapped, out);
    } catch (e) {
      // SoftHSM2 reports a failed GCM tag check as CKR_GENERAL_ERROR, others as CKR_ENCRYPTED_DATA_INVALID.
      throw new KeyhavenError(
        'integrity',
        `the HSM could not decrypt the wrapped root key with key "${keyLabel}" (${ckr(e) ?? 'error'}): the stored seal record was altered, or the key is not the one that wrapped it`,
      );
    }
    if (plain.length !== KEY_BYTES) {
      out.fill(0);
      throw new KeyhavenError('integrity', `the unwrapped root key has ${plain.length} bytes, expected ${KEY_BYTES}`);
    }
    const key32 = Buffer.from(plain);
    out.fill(0);
    return key32;
  }

  return {
    kind: 'pkcs11',
    needsShares: false,

    async initialize(): Promise<InitResult> {
      return withSession(true, (o) => {
        const { lib } = o.loaded;
        let key = findKey(o);
        if (key) checkKey(o, key, true);
        else key = generateKey(o);
        const rootKey = randomBytes(KEY_BYTES);
        const iv = randomBytes(IV_BYTES);
        let wrapped: Buffer;
        try {
          lib.C_EncryptInit(o.session, gcm(o, iv), key);
          wrapped = Buffer.from(lib.C_Encrypt(o.session, rootKey, Buffer.alloc(WRAPPED_BYTES + 16)));
        } catch (e) {
          throw new KeyhavenError('config_invalid', `token ${o.token} could not encrypt with AES-GCM under key "${keyLabel}" (${ckr(e) ?? 'error'})`);
        }
        // Read it back before handing out a record: a blob the HSM cannot
        // open again would lose the root key for good.
        if (wrapped.length !== WRAPPED_BYTES) {
          throw new KeyhavenError('internal', `the HSM returned ${wrapped.length} bytes of wrapped root key, expected ${WRAPPED_BYTES}`);
        }
        const back = decrypt(o, key, iv, wrapped);
        const same = timingSafeEqual(back, rootKey);
        back.fill(0);
        if (!same) throw new KeyhavenError('internal', 'the HSM did not give back the root key it wrapped');
        const record: Pkcs11Record = { kind: 'pkcs11', keyLabel, mechanism: MECHANISM, iv: iv.toString('base64'), wrapped: wrapped.toString('base64') };
        return { rootKey, record };
      });
    },

    async unseal(record: SealRecord): Promise<Buffer> {
      const r = pkcs11Record(record);
      if (r.keyLabel !== keyLabel) {
        throw new KeyhavenError('config_invalid', `the root key was wrapped with key "${r.keyLabel}", but the configuration names key "${keyLabel}"`);
      }
      return withSession(false, (o) => {
        const key = findKey(o);
        if (!key) {
          throw new KeyhavenError('config_invalid', `no AES key labelled "${keyLabel}" on token ${o.token}: the root key was wrapped with it and cannot be recovered without it`);
        }
        checkKey(o, key, false);
        return decrypt(o, key, r.ivBytes, r.wrappedBytes);
      });
    },

    async close(): Promise<void> {
      disconnect();
    },
  };
}
