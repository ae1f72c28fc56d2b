import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { resolve } from 'node:path';
import type * as P from 'pkcs11js';
import { KeyhavenError } from '../errors.js';
import { requireOptional } from '../optional-package.js';

/**
 * What the HSM users (the server's pkcs11 seal, the plugin's pkcs11 provider)
 * share: loading a PKCS#11 module once per process, finding a token by label
 * or slot, opening a session and logging in. The callers decide what a
 * refused PIN means for them; this module never retries a login.
 */

export type Pkcs11Api = typeof P;

// C_Initialize is per process and per module, so users of one module share
// one loaded instance; the last one to release it finalizes it.
export interface LoadedModule {
  readonly api: Pkcs11Api;
  readonly lib: P.PKCS11;
  users: number;
  readonly finalizeOnRelease: boolean;
  readonly path: string;
}
const modules = new Map<string, LoadedModule>();

// pkcs11js is an optional dependency (a native build): loaded only once a config names a module.
function loadApi(who: string): Pkcs11Api {
  return requireOptional('pkcs11js', who, () => createRequire(import.meta.url)('pkcs11js') as Pkcs11Api);
}

/** Loads and initializes the module, or shares the instance already loaded. `who` names the user in errors ("the pkcs11 seal"). */
export function acquireModule(modulePath: string, who: string): LoadedModule {
  const key = resolve(modulePath);
  const have = modules.get(key);
  if (have) {
    have.users += 1;
    return have;
  }
  if (!existsSync(key)) throw new KeyhavenError('config_invalid', `PKCS#11 module ${modulePath} does not exist`);
  const api = loadApi(who);
  const lib = new api.PKCS11();
  try {
    lib.load(key);
  } catch (e) {
    throw new KeyhavenError('config_invalid', `cannot load PKCS#11 module ${modulePath}: ${(e as Error).message}`);
  }
  let finalizeOnRelease = true;
  try {
    lib.C_Initialize();
  } catch (e) {
    if (ckr(e) === 'CKR_CRYPTOKI_ALREADY_INITIALIZED') {
      // Someone else in this process owns the initialization.
      finalizeOnRelease = false;
    } else {
      safely(() => lib.close());
      throw new KeyhavenError('config_invalid', `PKCS#11 module ${modulePath} failed to initialize (${ckr(e) ?? 'error'}): check its configuration`);
    }
  }
  const loaded: LoadedModule = { api, lib, users: 1, finalizeOnRelease, path: key };
  modules.set(key, loaded);
  return loaded;
}

/** Drops one use; the last use finalizes the module, so the next acquire sees the tokens afresh. */
export function releaseModule(loaded: LoadedModule): void {
  loaded.users -= 1;
  if (loaded.users > 0) return;
  if (modules.get(loaded.path) === loaded) modules.delete(loaded.path);
  if (loaded.finalizeOnRelease) safely(() => loaded.lib.C_Finalize());
  safely(() => loaded.lib.close());
}

/** The CKR_* name of a PKCS#11 error (never carries caller data), if it is one. */
export function ckr(e: unknown): string | undefined {
  const m = e instanceof Error ? /^(CKR_[A-Z0-9_]+)/.exec(e.message) : null;
  return m?.[1];
}

export function safely(fn: () => void): void {
  try {
    fn();
  } catch {
    // Cleanup must not hide the error that led here.
  }
}

export function attrUlong(b: Buffer | undefined): number {
  return b && b.length > 0 ? b.readUIntLE(0, Math.min(b.length, 6)) : -1;
}

export function attrBool(b: Buffer | undefined): boolean {
  return !!b && b.length > 0 && b[0] !== 0;
}

export function slotNumber(h: Buffer): bigint {
  return h.length >= 8 ? h.readBigUInt64LE(0) : BigInt(h.readUInt32LE(0));
}

/** PKCS#11 pads labels and serials with blanks. */
export function trimPadded(s: string): string {
  return s.replace(/[ \0]+$/, '');
}

export interface TokenSelector {
  readonly module: string;
  readonly tokenLabel?: string | undefined;
  readonly slot?: number | undefined;
}

export interface FoundToken {
  readonly slot: Buffer;
  /** The token's label, unpadded. */
  readonly label: string;
  readonly serial: string;
  readonly flags: number;
}

/** The initialized token the selector names; config_invalid (naming the tokens seen) when there is none or it is ambiguous. */
export function findToken(loaded: LoadedModule, sel: TokenSelector): FoundToken {
  const { api, lib } = loaded;
  const tokens = lib.C_GetSlotList(true).map((slot) => {
    const info = lib.C_GetTokenInfo(slot);
    return { slot, label: trimPadded(info.label), serial: trimPadded(info.serialNumber), flags: info.flags, initialized: (info.flags & api.CKF_TOKEN_INITIALIZED) !== 0 };
  });
  const seen = tokens.filter((t) => t.initialized).map((t) => `"${t.label}" (slot ${slotNumber(t.slot)})`);
  const seenText = seen.length > 0 ? seen.join(', ') : 'none';
  if (sel.slot !== undefined) {
    const t = tokens.find((x) => slotNumber(x.slot) === BigInt(sel.slot as number));
    if (!t || !t.initialized) {
      throw new KeyhavenError('config_invalid', `PKCS#11 module ${sel.module} has no initialized token in slot ${sel.slot} (tokens found: ${seenText})`);
    }
    if (sel.tokenLabel && t.label !== sel.tokenLabel) {
      throw new KeyhavenError('config_invalid', `the token in slot ${sel.slot} is labelled "${t.label}", not "${sel.tokenLabel}" as configured`);
    }
    return t;
  }
  const matches = tokens.filter((x) => x.initialized && x.label === sel.tokenLabel);
  if (matches.length === 0) {
    throw new KeyhavenError('config_invalid', `no token labelled "${sel.tokenLabel}" in PKCS#11 module ${sel.module} (tokens found: ${seenText})`);
  }
  if (matches.length > 1) {
    throw new KeyhavenError('config_invalid', `${matches.length} tokens are labelled "${sel.tokenLabel}" in PKCS#11 module ${sel.module}: name the token by slot number`);
  }
  return matches[0]!;
}

/** Why the token will not take the user PIN before any login is tried (no PIN set, PIN locked), if it will not. */
export function loginBlocked(loaded: LoadedModule, flags: number): { noPin: true } | { refused: string } | undefined {
  const { api } = loaded;
  if ((flags & api.CKF_USER_PIN_INITIALIZED) === 0) return { noPin: true };
  if ((flags & api.CKF_USER_PIN_LOCKED) !== 0) return { refused: 'the user PIN is locked; unlock it with the security officer PIN' };
  return undefined;
}

/** Opens a session; a token that will not open one is unavailable. `token` names it in the error. */
export function openSession(loaded: LoadedModule, slot: Buffer, rw: boolean, token: string): Buffer {
  const { api, lib } = loaded;
  try {
    return lib.C_OpenSession(slot, api.CKF_SERIAL_SESSION | (rw ? api.CKF_RW_SESSION : 0));
  } catch (e) {
    throw new KeyhavenError('unavailable', `cannot open a session on token ${token} (${ckr(e) ?? 'error'})`, { cause: e });
  }
}

/**
 * Logs the user in once. Returns undefined when logged in (login state is per
 * process: an earlier login counts), or why the token refused the PIN: the
 * caller must then never try that PIN again, or it may lock the token. Other
 * failures throw unavailable.
 */
export function loginUser(loaded: LoadedModule, session: Buffer, pin: string, token: string): string | undefined {
  const { api, lib } = loaded;
  try {
    lib.C_Login(session, api.CKU_USER, pin);
    return undefined;
  } catch (e) {
    const code = ckr(e);
    if (code === 'CKR_USER_ALREADY_LOGGED_IN') return undefined;
    if (code === 'CKR_PIN_INCORRECT') return 'wrong PIN';
    if (code === 'CKR_PIN_LOCKED') return 'the user PIN is locked';
    if (code === 'CKR_PIN_LEN_RANGE' || code === 'CKR_PIN_INVALID' || code === 'CKR_PIN_EXPIRED') return code;
    throw new KeyhavenError('unavailable', `cannot log in to token ${token} (${code ?? 'error'})`);
  }
}

/** Secret keys of the token with this label (at most `max`). */
export function findSecretKeys(loaded: LoadedModule, session: Buffer, keyLabel: string, max = 2): Buffer[] {
  const { api, lib } = loaded;
  lib.C_FindObjectsInit(session, [
    { type: api.CKA_CLASS, value: api.CKO_SECRET_KEY },
    { type: api.CKA_TOKEN, value: true },
    { type: api.CKA_LABEL, value: keyLabel },
  ]);
  try {
    return lib.C_FindObjects(session, max);
  } finally {
    lib.C_FindObjectsFinal(session);
  }
}

/** The PKCS#11 v2.40 CK_GCM_PARAMS layout (with ulIvBits), which SoftHSM2 and current HSMs use. */
export function aesGcm(loaded: LoadedModule, iv: Buffer, aad: Buffer, tagBytes: number): P.Mechanism {
  const { api } = loaded;
  return { mechanism: api.CKM_AES_GCM, parameter: { type: api.CK_PARAMS_AES_GCM_v240, iv, ivBits: iv.length * 8, aad, tagBits: tagBytes * 8 } as P.AesGCM };
}
