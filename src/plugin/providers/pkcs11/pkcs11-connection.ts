import { randomBytes } from 'node:crypto';
import { KeyhavenError, type ErrorCode } from '../../../errors.js';
import type { Logger } from '../../../log/logger.js';
import {
  acquireModule,
  aesGcm,
  attrBool,
  attrUlong,
  ckr,
  findSecretKeys,
  findToken,
  loginBlocked,
  loginUser,
  openSession,
  releaseModule,
  safely,
  slotNumber,
  trimPadded,
  type LoadedModule,
  type TokenSelector,
} from '../../../hsm/pkcs11-token.js';
import type { Clock } from '../../runtime/deadline.js';
import { aad, header, IV_BYTES, keyRef, pkcs11KeyId, TAG_BYTES, type ParsedEnvelope } from './pkcs11-envelope.js';
import { classify, fail, failAmbiguous, scopeOf, type Scope } from './pkcs11-errors.js';

/**
 * The pkcs11 backend's transport: one logged-in connection to the token, its
 * sessions and the keys it reads by label.
 *
 * pkcs11js calls are synchronous, so one operation (Init + Encrypt/Decrypt)
 * runs to its end before any other JavaScript runs: operations never
 * interleave on a session. One session is kept only to hold the login
 * (closing a token's last session logs the user out); operations run on
 * separate work sessions, and a work session left in an unknown state by a
 * failure is closed rather than reused.
 */

export interface TokenConnectionOptions extends TokenSelector {
  /** The token's user PIN. Never logged; never tried again after the token refused it. */
  readonly pin: string;
  readonly keyLabel: string;
  readonly previousKeyLabels?: readonly string[];
  readonly logger?: Pick<Logger, 'info' | 'warn'>;
  /** The runtime's clock: a second try on a new connection starts only before the call's deadline. */
  readonly now: Clock;
}

const KEY_BYTES = 32;
const IDLE_SESSIONS = 2;

export interface TokenKey {
  readonly label: string;
  readonly handle: Buffer;
  readonly keyId: string;
  readonly ref: Buffer;
}

export interface Conn {
  readonly loaded: LoadedModule;
  readonly slot: Buffer;
  readonly serial: string;
  /** `"label"`, for messages. */
  readonly token: string;
  /** Holds the login; no operation runs on it. */
  readonly anchor: Buffer;
  readonly idle: Buffer[];
  keys: ResolvedKeys;
}

interface ResolvedKeys {
  readonly current: TokenKey;
  readonly byKeyId: ReadonlyMap<string, TokenKey>;
  readonly byRef: ReadonlyMap<string, TokenKey>;
  /** previousKeyLabels that cannot be used now, and why. */
  readonly unusable: readonly { readonly label: string; readonly why: string }[];
}

export interface TokenConnection {
  /**
   * Runs fn on a work session of a logged-in connection (a new session when
   * newSession); what a failure spoiled is thrown away. A connection made
   * earlier that turns out stale (a token put back, a key replaced) is made
   * anew and fn run once more, if the deadline has not passed.
   */
  run<T>(fn: (c: Conn, s: Buffer, fresh: boolean) => T, deadlineAt: number, newSession?: boolean): T;
  /** Checks that the token is still the same one (serial) and re-reads the keys by label. */
  recheck(c: Conn, s: Buffer): void;
  close(): void;
}

export function createTokenConnection(opts: TokenConnectionOptions): TokenConnection {
  const previous = [...(opts.previousKeyLabels ?? [])];
  const logger = opts.logger;
  let conn: Conn | undefined;
  // Set once the token refused the PIN: another try could lock the token, so
  // every later call is refused without calling C_Login.
  let pinRefused: string | undefined;
  let closed = false;
  let lastLoggedKeyIds = '';

  function refusePin(token: string, why: string): KeyhavenError {
    pinRefused = token;
    return fail('unauthenticated', `the HSM refused the PIN for token ${token} (${why}; not retried, to avoid locking the token): fix the PIN and restart the plugin`, 'connection');
  }

  function readKey(c: Pick<Conn, 'loaded' | 'token' | 'serial'>, s: Buffer, label: string, current: boolean): TokenKey {
    const { api, lib } = c.loaded;
    const what = `key "${label}" on token ${c.token}`;
    let found: Buffer[];
    let values: (Buffer | undefined)[];
    try {
      found = findSecretKeys(c.loaded, s, label, 2);
      if (found.length === 0) throw fail('not_found', `no secret key labelled "${label}" on token ${c.token}`, 'connection');
      if (found.length > 1) throw fail('config_invalid', `several keys on token ${c.token} are labelled "${label}"; refusing to guess which one to use`, 'connection');
      values = lib
        .C_GetAttributeValue(s, found[0]!, [
          { type: api.CKA_KEY_TYPE },
          { type: api.CKA_VALUE_LEN },
          { type: api.CKA_EXTRACTABLE },
          { type: api.CKA_SENSITIVE },
          { type: api.CKA_ENCRYPT },
          { type: api.CKA_DECRYPT },
          { type: api.CKA_ID },
        ])
        .map((a) => a.value as Buffer | undefined);
    } catch (e) {
      throw classify(e, `cannot read ${what}`);
    }
    const [type, len, extractable, sensitive, encrypt, decrypt, id] = values;
    const bad = (code: ErrorCode, why: string) => fail(code, `${what} ${why}`, 'connection');
    if (attrUlong(type) !== api.CKK_AES) throw bad('config_invalid', 'is not an AES key');
    if (attrUlong(len) !== KEY_BYTES) throw bad('config_invalid', `is AES-${attrUlong(len) * 8}; the pkcs11 provider needs AES-256`);
    if (!attrBool(decrypt)) throw bad('permission_denied', 'may not decrypt (CKA_DECRYPT is false)');
    if (current && !attrBool(encrypt)) throw bad('permission_denied', 'may not encrypt (CKA_ENCRYPT is false)');
    // As the server's pkcs11 seal: a key that can leave the HSM defeats the point. Keys
    // only kept to decrypt old data are not refused for it (that data needs them).
    if (current && (attrBool(extractable) || !attrBool(sensitive))) {
      throw bad('config_invalid', 'can be exported (CKA_EXTRACTABLE true or CKA_SENSITIVE false); the pkcs11 provider needs a sensitive, non-extractable key');
    }
    if (!id || id.length === 0) throw bad('config_invalid', 'has no CKA_ID; give it a unique one (pkcs11-tool --id) so that its key_id names this key only');
    const keyId = pkcs11KeyId(c.serial, Buffer.from(id));
    return { label, handle: found[0]!, keyId, ref: keyRef(keyId) };
  }

  function resolveKeys(c: Pick<Conn, 'loaded' | 'token' | 'serial'>, s: Buffer): ResolvedKeys {
    const current = readKey(c, s, opts.keyLabel, true);
    const all = [current];
    const unusable: { label: string; why: string }[] = [];
    for (const label of previous) {
      try {
        all.push(readKey(c, s, label, false));
      } catch (e) {
        const err = classify(e, `cannot read key "${label}"`);
        // A lost connection spoils the current key too; anything else only this old key.
        if (scopeOf(err) === 'connection' && err.code === 'unavailable') throw err;
        unusable.push({ label, why: err.message });
      }
    }
    const byKeyId = new Map<string, TokenKey>();
    const byRef = new Map<string, TokenKey>();
    for (const k of all) {
      const same = byKeyId.get(k.keyId);
      if (same) throw fail('config_invalid', `keys "${same.label}" and "${k.label}" on token ${c.token} have the same CKA_ID; give each key its own`, 'connection');
      byKeyId.set(k.keyId, k);
      byRef.set(k.ref.toString('hex'), k);
    }
    return { current, byKeyId, byRef, unusable };
  }

  function announce(c: Conn): void {
    const ids = JSON.stringify([[...c.keys.byKeyId.values()].map((k) => [k.label, k.keyId]), c.keys.unusable]);
    if (ids === lastLoggedKeyIds) return;
    lastLoggedKeyIds = ids;
    logger?.info(
      { tokenLabel: c.token, serial: c.serial, slot: String(slotNumber(c.slot)), keyLabel: c.keys.current.label, keyId: c.keys.current.keyId, previousKeyIds: [...c.keys.byKeyId.values()].filter((k) => k !== c.keys.current).map((k) => k.keyId) },
      'pkcs11 token key in use',
    );
    for (const u of c.keys.unusable) logger?.warn({ tokenLabel: c.token, keyLabel: u.label, reason: u.why }, 'pkcs11: a key of previousKeyLabels cannot be used; Decrypt refuses ciphertexts made with it');
  }

  /** Loads the module, finds the token, logs in once and reads the keys. */
  function connect(): Conn {
    if (closed) throw new KeyhavenError('unavailable', 'the pkcs11 provider is closed');
    if (pinRefused !== undefined) {
      throw fail('unauthenticated', `the HSM refused the PIN for token ${pinRefused} earlier; not trying again, to avoid locking the token: fix the PIN and restart the plugin`, 'connection');
    }
    if (conn) return conn;
    const loaded = acquireModule(opts.module, 'the pkcs11 provider');
    let anchor: Buffer | undefined;
    let work: Buffer | undefined;
    try {
      let found;
      try {
        found = findToken(loaded, opts);
      } catch (e) {
        // A token that was there can be pulled or re-initialized: an outage, not a configuration to fix.
        if (e instanceof KeyhavenError) throw fail('unavailable', e.message, 'connection');
        throw classify(e, `cannot list the tokens of PKCS#11 module ${opts.module}`);
      }
      const token = `"${found.label}"`;
      const blocked = loginBlocked(loaded, found.flags);
      if (blocked && 'noPin' in blocked) throw fail('config_invalid', `token ${token} has no user PIN set: initialize it first`, 'connection');
      if (blocked) throw refusePin(token, blocked.refused);
      anchor = openSession(loaded, found.slot, false, token);
      const refused = loginUser(loaded, anchor, opts.pin, token);
      if (refused !== undefined) throw refusePin(token, refused);
      const base = { loaded, token, serial: found.serial };
      work = openSession(loaded, found.slot, false, token);
      const keys = resolveKeys(base, work);
      const c: Conn = { ...base, slot: found.slot, anchor, idle: [work], keys };
      work = undefined;
      conn = c;
      announce(c);
      return c;
    } catch (e) {
      if (work) safely(() => loaded.lib.C_CloseSession(work as Buffer));
      if (anchor) safely(() => loaded.lib.C_CloseSession(anchor as Buffer));
      releaseModule(loaded);
      throw classify(e, `cannot use token of PKCS#11 module ${opts.module}`);
    }
  }

  function drop(): void {
    const c = conn;
    conn = undefined;
    if (!c) return;
    for (const s of c.idle.splice(0)) safely(() => c.loaded.lib.C_CloseSession(s));
    safely(() => c.loaded.lib.C_CloseSession(c.anchor));
    releaseModule(c.loaded);
  }

  function once<T>(fn: (c: Conn, s: Buffer, fresh: boolean) => T, newSession: boolean): T {
    const fresh = conn === undefined;
    const c = connect();
    let s: Buffer | undefined;
    try {
      s = (newSession ? undefined : c.idle.pop()) ?? openSession(c.loaded, c.slot, false, c.token);
    } catch (e) {
      drop();
      throw classify(e, `cannot open a session on token ${c.token}`);
    }
    let scope: Scope = 'operation';
    try {
      return fn(c, s, fresh);
    } catch (e) {
      const err = classify(e, `token ${c.token} failed`);
      scope = scopeOf(err);
      throw err;
    } finally {
      if (scope === 'operation' && conn === c && c.idle.length < IDLE_SESSIONS) c.idle.push(s);
      else safely(() => c.loaded.lib.C_CloseSession(s as Buffer));
      if (scope === 'connection' && conn === c) drop();
    }
  }

  return {
    run(fn, deadlineAt, newSession = false) {
      const hadConn = conn !== undefined;
      try {
        return once(fn, newSession);
      } catch (e) {
        if (hadConn && scopeOf(e) === 'connection' && pinRefused === undefined && !closed && opts.now() < deadlineAt) return once(fn, newSession);
        throw e;
      }
    },
    recheck(c, s) {
      // Catches a token pulled or re-initialized, a key deleted, replaced or relabelled.
      let serial: string;
      try {
        serial = trimPadded(c.loaded.lib.C_GetTokenInfo(c.slot).serialNumber);
      } catch (e) {
        throw classify(e, `token ${c.token} does not answer`);
      }
      if (serial !== c.serial) throw fail('unavailable', `token ${c.token} was replaced (serial ${c.serial} is now ${serial})`, 'connection');
      c.keys = resolveKeys(c, s);
      announce(c);
    },
    close() {
      closed = true;
      drop();
    },
  };
}

/** CKM_AES_GCM in the token with a fresh IV; returns the whole envelope (header, ciphertext, tag). */
export function encryptInToken(c: Conn, s: Buffer, k: TokenKey, plaintext: Buffer): Buffer {
  const iv = randomBytes(IV_BYTES);
  const head = header(k.ref, iv);
  const { lib } = c.loaded;
  let out: Buffer;
  try {
    lib.C_EncryptInit(s, aesGcm(c.loaded, iv, aad(head), TAG_BYTES), k.handle);
    out = lib.C_Encrypt(s, plaintext, Buffer.alloc(plaintext.length + TAG_BYTES + 16));
  } catch (e) {
    throw classify(e, `token ${c.token} could not encrypt with key "${k.label}"`);
  }
  if (out.length !== plaintext.length + TAG_BYTES) {
    throw fail('internal', `token ${c.token} returned ${out.length} bytes of AES-GCM output for ${plaintext.length} bytes of input`, 'session');
  }
  return Buffer.concat([head, out]);
}

/** Opens an envelope in the token; a failed tag check is `integrity` (marked ambiguous when the token's answer is also what a passing fault looks like). */
export function decryptInToken(c: Conn, s: Buffer, k: TokenKey, env: ParsedEnvelope): Buffer {
  const { lib } = c.loaded;
  try {
    lib.C_DecryptInit(s, aesGcm(c.loaded, env.iv, aad(env.head), TAG_BYTES), k.handle);
  } catch (e) {
    throw classify(e, `token ${c.token} refused to decrypt with key "${k.label}"`);
  }
  const out = Buffer.alloc(env.body.length);
  let plain: Buffer;
  try {
    plain = lib.C_Decrypt(s, env.body, out);
  } catch (e) {
    const code = ckr(e);
    // SoftHSM2 reports a failed GCM tag check as CKR_GENERAL_ERROR, others as
    // CKR_ENCRYPTED_DATA_INVALID; both end the operation. CKR_GENERAL_ERROR is
    // also what a token's passing fault looks like: the caller tries it once
    // more on a new session before believing it.
    const altered = `the token could not decrypt the ciphertext with key "${k.label}" (${code}): it was altered, or it was not made with this key`;
    if (code === 'CKR_GENERAL_ERROR') throw failAmbiguous(altered);
    if (code === 'CKR_ENCRYPTED_DATA_INVALID' || code === 'CKR_ENCRYPTED_DATA_LEN_RANGE') throw fail('integrity', altered, 'operation');
    throw classify(e, `token ${c.token} could not decrypt with key "${k.label}"`);
  }
  const expected = env.body.length - TAG_BYTES;
  if (plain.length !== expected) {
    out.fill(0);
    throw fail('integrity', `the token returned ${plain.length} bytes of plaintext, expected ${expected}`, 'session');
  }
  const result = Buffer.from(plain);
  out.fill(0);
  return result;
}
