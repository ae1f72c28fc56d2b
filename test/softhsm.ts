import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, type TestContext } from 'node:test';
import type * as P from 'pkcs11js';
import { KeyhavenError, type ErrorCode } from '../src/errors.js';
import { requireDependency } from './require.js';

// Real SoftHSM2 tokens for the pkcs11 tests (unit tests in src/ and end-to-end
// tests in test/). pkcs11js loads the module in-process, so SOFTHSM2_CONF must
// be set (initSoftHsm) before anything loads it.

const MODULE_CANDIDATES = [
  process.env.SOFTHSM2_MODULE,
  '/usr/lib/softhsm/libsofthsm2.so',
  '/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so',
  '/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so',
  '/usr/local/lib/softhsm/libsofthsm2.so',
].filter((p): p is string => !!p);
/** The SoftHSM2 PKCS#11 module, or '' when none is installed. */
export const SOFTHSM_MODULE = MODULE_CANDIDATES.find((p) => existsSync(p)) ?? '';

function loadApi(): typeof P | undefined {
  try {
    return createRequire(import.meta.url)('pkcs11js') as typeof P;
  } catch {
    return undefined;
  }
}
/** pkcs11js, or undefined when it does not load. */
const pkcs11Api = loadApi();
const hasUtil = spawnSync('softhsm2-util', ['--version'], { stdio: 'ignore' }).status === 0;
export const softhsmAvailable = SOFTHSM_MODULE !== '' && hasUtil && pkcs11Api !== undefined;
const missing = !pkcs11Api ? 'pkcs11js does not load' : SOFTHSM_MODULE === '' ? 'the SoftHSM2 module (libsofthsm2.so) is not installed' : 'softhsm2-util is not installed (apt-get install softhsm2)';

/** requireDependency for SoftHSM2 + pkcs11js: whether the test may go on. */
export function requireSoftHsm(t: TestContext): boolean {
  return requireDependency(t, softhsmAvailable, missing);
}

/**
 * A fresh SoftHSM2 configuration (dir/softhsm2.conf) and token folder
 * (dir/tokens) with the given tokens initialized; sets SOFTHSM2_CONF so this
 * process and the processes it starts next use it. Returns the token folder.
 */
export function initSoftHsm(dir: string, labels: string[], pin: string, soPin: string): string {
  const tokenDir = join(dir, 'tokens');
  mkdirSync(tokenDir, { recursive: true });
  const conf = join(dir, 'softhsm2.conf');
  writeFileSync(conf, `directories.tokendir = ${tokenDir}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`);
  process.env.SOFTHSM2_CONF = conf;
  for (const label of labels) {
    execFileSync('softhsm2-util', ['--init-token', '--free', '--label', label, '--pin', pin, '--so-pin', soPin], { stdio: 'pipe', env: process.env });
  }
  return tokenDir;
}

/**
 * Tokens for one test file: a temp folder with the tokens initialized before
 * its tests (when SoftHSM2 is here), removed after them. `dir` is the folder.
 */
export function useSoftHsmTokens(prefix: string, labels: string[], pin: string, soPin: string): { readonly dir: string } {
  const state = { dir: '' };
  before(() => {
    if (!softhsmAvailable) return;
    state.dir = mkdtempSync(join(tmpdir(), prefix));
    initSoftHsm(state.dir, labels, pin, soPin);
  });
  after(() => {
    if (state.dir) rmSync(state.dir, { recursive: true, force: true });
  });
  return state;
}

/**
 * A session on a token through a module instance of its own (C_Initialize is
 * per process: only while nothing else in this process holds the module);
 * logs in when given a PIN.
 */
export function withTokenSession<T>(label: string, pin: string | undefined, fn: (a: typeof P, lib: P.PKCS11, session: Buffer, slot: Buffer) => T): T {
  const a = pkcs11Api as typeof P;
  const lib = new a.PKCS11();
  lib.load(SOFTHSM_MODULE);
  lib.C_Initialize();
  try {
    const slot = lib.C_GetSlotList(true).find((s) => lib.C_GetTokenInfo(s).label.trim() === label);
    assert.ok(slot, `token ${label} exists`);
    const session = lib.C_OpenSession(slot, a.CKF_SERIAL_SESSION | a.CKF_RW_SESSION);
    try {
      if (pin !== undefined) lib.C_Login(session, a.CKU_USER, pin);
      return fn(a, lib, session, slot);
    } finally {
      lib.C_CloseSession(session);
    }
  } finally {
    lib.C_Finalize();
    lib.close();
  }
}

/**
 * A rejection check for HSM errors: a KeyhavenError with the code, matching
 * the problem, and showing none of the PINs nor the secret's bytes.
 */
export function failsWithoutSecrets(code: ErrorCode, problem: RegExp, pins: readonly string[], secret?: Buffer): (e: unknown) => true {
  return (e: unknown) => {
    assert.ok(e instanceof KeyhavenError, `expected a KeyhavenError, got ${String(e)}`);
    assert.equal(e.code, code, `code: ${e.message}`);
    assert.match(e.message, problem);
    for (const p of pins) assert.ok(!e.message.includes(p), `message shows a PIN: ${e.message}`);
    if (secret) for (const f of [secret.toString('hex'), secret.toString('base64')]) assert.ok(!e.message.includes(f), `message leaks the secret's bytes: ${e.message}`);
    return true;
  };
}
