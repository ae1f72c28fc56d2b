import assert from 'node:assert/strict';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { KeyhavenError } from '../../../errors.js';
import { code } from '../../../../test/expect-error.js';
import { startVaultStandin, type VaultStandin } from '../../../../test/plugin-vault-standin.js';
import { createVaultAuth, type VaultAuth, type VaultAuthEvent, type VaultAuthMethod } from './vault-auth.js';
import { vaultErrorOf } from './vault-errors.js';
import { ownedTempDir } from '../../../../test/reaper.js';

// Login, renewal and re-login against a stand-in Vault over real HTTP, with
// the clock and the timers in the test's hands: renewal times are checked as
// the delays the module asks for, never by waiting.

interface Timer {
  fn: () => void;
  ms: number;
  cleared: boolean;
}

describe('vault auth (stand-in Vault, controlled timers)', () => {
  let vault: VaultStandin;
  let dir: string;
  let secretIdFile: string;
  let jwtFile: string;

  before(async () => {
    vault = await startVaultStandin();
    dir = ownedTempDir('kh-vault-auth-');
    secretIdFile = join(dir, 'secret-id');
    writeFileSync(secretIdFile, vault.approle.secretId, { mode: 0o600 });
    jwtFile = join(dir, 'jwt');
    writeFileSync(jwtFile, vault.kubernetes.jwt);
  });

  after(async () => {
    await vault.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function vaultPost(path: string, body: unknown, token?: string): Promise<unknown> {
    const res = await fetch(vault.url + path, { method: 'POST', headers: { 'content-type': 'application/json', ...(token ? { 'x-vault-token': token } : {}) }, body: JSON.stringify(body) });
    const text = await res.text();
    // revoke-self answers 204 without a body.
    const json = (text ? JSON.parse(text) : {}) as unknown;
    if (res.status >= 400) {
      const e = vaultErrorOf(res.status, json, text);
      throw new KeyhavenError(e.code, e.message);
    }
    return json;
  }

  /** renewSelf: sends renew-self with the token it is given (the one in use when it was called). */
  function setup(method: VaultAuthMethod, opts: { renewSelf?: (token: string | undefined) => Promise<unknown> } = {}) {
    const timers: Timer[] = [];
    const events: VaultAuthEvent[] = [];
    // Revocations run in the background after a login: kept apart so they do not interleave with the events asserted in order.
    const revocations: VaultAuthEvent[] = [];
    // eslint-disable-next-line prefer-const
    let auth: VaultAuth;
    const read = (p: string) => readFileSync(p);
    auth = createVaultAuth({
      method,
      readSecretFile: read,
      readFile: read,
      login: (mount, body) => vaultPost(`/v1/auth/${mount}/login`, body),
      renewSelf: () => (opts.renewSelf ? opts.renewSelf(auth.current()) : vaultPost('/v1/auth/token/renew-self', {}, auth.current())),
      revokeSelf: (old) => vaultPost('/v1/auth/token/revoke-self', {}, old),
      setTimer: (fn, ms) => {
        const t = { fn, ms, cleared: false, unref() {} };
        timers.push(t);
        return t;
      },
      clearTimer: (t) => void ((t as Timer).cleared = true),
      onEvent: (e) => void (e.type === 'revoked' || e.type === 'revoke_failed' ? revocations : events).push(e),
    });
    /** The one pending timer: its delay, and a way to fire it and wait for what it started. */
    const pending = () => {
      const live = timers.filter((t) => !t.cleared);
      assert.equal(live.length, 1, `one timer pending (${live.length})`);
      return live[0]!;
    };
    const fire = async (expected = 1) => {
      const t = pending();
      t.cleared = true;
      const n = events.length;
      t.fn();
      // The timer's work is HTTP to the stand-in: wait for its event, not for time.
      for (let i = 0; i < 1000 && events.length < n + expected; i++) await new Promise((r) => setTimeout(r, 5));
      assert.ok(events.length >= n + expected, 'the timer did what was expected');
    };
    /** Waits for the background revocation of a replaced token (HTTP to the stand-in, not a timer). */
    const revoked = async (n: number) => {
      for (let i = 0; i < 1000 && revocations.length < n; i++) await new Promise((r) => setTimeout(r, 5));
      assert.ok(revocations.length >= n, `${n} revocation(s) attempted`);
      return revocations;
    };
    return { auth, timers, events, pending, fire, revoked };
  }

  it('AppRole: logs in, renews at 2/3 of the lease, logs in again when the max TTL nears', async () => {
    vault.approle.ttlSeconds = 90;
    vault.approle.maxTtlSeconds = 100;
    const { auth, events, pending, fire, revoked } = setup({ kind: 'approle', mount: 'approle', roleId: vault.approle.roleId, secretIdFile });
    const logins = () => vault.count('/v1/auth/approle/login');
    const n0 = logins();
    const t1 = await auth.token();
    assert.equal(logins(), n0 + 1);
    assert.equal(vault.tokens.get(t1)?.policy, 'transit');
    assert.deepEqual(events.at(-1), { type: 'login', method: 'AppRole login at auth/approle', leaseSeconds: 90, renewable: true, reason: 'start' });
    assert.equal(pending().ms, 60_000);
    // Renewal well inside the max TTL: the full lease again, and the next renewal at 2/3 of it.
    await fire();
    assert.deepEqual(events.at(-1), { type: 'renewed', leaseSeconds: 90 });
    assert.equal(auth.current(), t1, 'renew-self keeps the token');
    assert.equal(pending().ms, 60_000);
    // The max TTL is 20 s away: Vault caps the renewal, and a lease under half the login's means the next step is a login.
    vault.tokens.set(t1, { ...vault.tokens.get(t1)!, maxAt: Date.now() + 20_000 });
    await fire();
    const capped = events.at(-1) as { type: string; leaseSeconds: number };
    assert.equal(capped.type, 'renewed');
    assert.ok(capped.leaseSeconds > 0 && capped.leaseSeconds <= 20, String(capped.leaseSeconds));
    assert.equal(pending().ms, (capped.leaseSeconds * 1000 * 2) / 3);
    await fire();
    assert.equal(events.at(-1)!.type, 'login');
    assert.equal((events.at(-1) as { reason: string }).reason, 'lease ending');
    assert.notEqual(auth.current(), t1);
    assert.equal(logins(), n0 + 2);
    // The replaced token still had 20 s to live: revoked, so logins do not leave live tokens behind.
    assert.deepEqual(await revoked(1), [{ type: 'revoked' }]);
    assert.ok(vault.revoked.includes(t1));
    assert.ok(vault.tokens.get(t1)!.expiresAt < Date.now(), 'the stand-in no longer accepts it');
    auth.close();
    assert.equal(events.filter((e) => JSON.stringify(e).includes(t1)).length, 0, 'no event carries the token');
  });

  it('a renewal under way when Vault refuses the token: the new login wins, and its timer stays (stand-in)', async () => {
    vault.approle.ttlSeconds = 90;
    vault.approle.maxTtlSeconds = 0;
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    // The renewal is sent with the token in use then, and Vault's answer is late.
    const s = setup({ kind: 'approle', mount: 'approle', roleId: vault.approle.roleId, secretIdFile }, {
      renewSelf: async (t) => {
        await held;
        return vaultPost('/v1/auth/token/renew-self', {}, t);
      },
    });
    const t1 = await s.auth.token();
    const timer = s.pending();
    timer.cleared = true;
    timer.fn();
    const refreshed = s.auth.refresh(t1);
    // A login running beside the renewal would show up here; give it the chance (it must wait instead).
    for (let i = 0; i < 40 && !s.events.some((e) => e.type === 'login' && e.reason === 'Vault refused the token'); i++) await new Promise((r) => setTimeout(r, 5));
    release();
    assert.equal(await refreshed, true);
    // Both done (the renewal's answer included) before looking at the token in use.
    for (let i = 0; i < 1000 && !s.events.some((e) => e.type === 'renewed'); i++) await new Promise((r) => setTimeout(r, 5));
    const t2 = s.auth.current()!;
    assert.notEqual(t2, t1, 'the login\'s token is in use, not the renewed one');
    assert.ok(vault.tokens.get(t2)!.expiresAt > Date.now());
    assert.deepEqual(s.events.slice(-2).map((e) => e.type), ['renewed', 'login']);
    // One timer: the login's (2/3 of its 90 s lease).
    assert.equal(s.pending().ms, 60_000);
    assert.deepEqual(await s.revoked(1), [{ type: 'revoked' }]);
    assert.ok(vault.revoked.includes(t1));
    s.auth.close();
  });

  it('AppRole: a failed renewal (token revoked) leads to a new login; a non-renewable token is replaced by a login', async () => {
    vault.approle.ttlSeconds = 30;
    vault.approle.maxTtlSeconds = 0;
    vault.approle.renewable = true;
    const { auth, events, fire } = setup({ kind: 'approle', mount: 'approle', roleId: vault.approle.roleId, secretIdFile });
    const t1 = await auth.token();
    vault.tokens.delete(t1);
    await fire(2);
    assert.deepEqual(events.slice(-2).map((e) => e.type), ['renew_failed', 'login']);
    assert.notEqual(auth.current(), t1);
    // A renewal that grants nothing (the max TTL is reached): a login, not a token taken for one that never expires.
    const t2 = auth.current()!;
    vault.tokens.set(t2, { ...vault.tokens.get(t2)!, maxAt: Date.now() + 500 });
    await fire(2);
    assert.deepEqual(events.slice(-2).map((e) => e.type), ['renew_failed', 'login']);
    assert.notEqual(auth.current(), t2);
    auth.close();

    vault.approle.renewable = false;
    try {
      const s = setup({ kind: 'approle', mount: 'approle', roleId: vault.approle.roleId, secretIdFile });
      await s.auth.token();
      const renewals = vault.count('/v1/auth/token/renew-self');
      assert.equal(s.pending().ms, 20_000);
      await s.fire();
      assert.equal(s.events.at(-1)!.type, 'login');
      assert.equal(vault.count('/v1/auth/token/renew-self'), renewals, 'a non-renewable token is not renewed');
      s.auth.close();
    } finally {
      vault.approle.renewable = true;
    }
  });

  it('a failed login keeps the token in use and tries again later; a refused one is unauthenticated', async () => {
    vault.approle.ttlSeconds = 30;
    const { auth, events, pending, fire } = setup({ kind: 'approle', mount: 'approle', roleId: vault.approle.roleId, secretIdFile });
    const t1 = await auth.token();
    vault.tokens.delete(t1);
    vault.mode = 'sealed';
    try {
      await fire(2);
      assert.deepEqual(events.slice(-2).map((e) => e.type), ['renew_failed', 'login_failed']);
      assert.equal((events.at(-1) as { code: string }).code, 'sealed');
      assert.equal(auth.current(), t1, 'kept until replaced');
      assert.equal(pending().ms, 1000);
    } finally {
      vault.mode = 'ok';
    }
    await fire();
    assert.equal(events.at(-1)!.type, 'login');
    auth.close();
    // A wrong secret ID: Vault's 400 is the caller's fault.
    const wrong = join(dir, 'wrong');
    writeFileSync(wrong, 'wrong-secret', { mode: 0o600 });
    const w = setup({ kind: 'approle', mount: 'approle', roleId: vault.approle.roleId, secretIdFile: wrong });
    await assert.rejects(w.auth.token(), code('unauthenticated', /^Vault refused the AppRole login at auth\/approle: invalid role or secret ID/));
    w.auth.close();
  });

  it('refresh: a refused token is replaced by one login, shared by concurrent callers and limited to one per 2 s', async () => {
    vault.approle.ttlSeconds = 0;
    const { auth } = setup({ kind: 'approle', mount: 'approle', roleId: vault.approle.roleId, secretIdFile });
    const t1 = await auth.token();
    const n = vault.count('/v1/auth/approle/login');
    const results = await Promise.all([auth.refresh(t1), auth.refresh(t1), auth.refresh(t1)]);
    assert.deepEqual(results, [true, true, true]);
    assert.equal(vault.count('/v1/auth/approle/login'), n + 1);
    const t2 = auth.current()!;
    assert.equal(await auth.refresh(t2), false, 'a second refusal within 2 s: no new login');
    assert.equal(vault.count('/v1/auth/approle/login'), n + 1);
    auth.close();
    vault.approle.ttlSeconds = 60;
  });

  it('Kubernetes: sends role and the service account token, read again at every login', async () => {
    const { auth } = setup({ kind: 'kubernetes', mount: 'kubernetes', role: 'kms', jwtFile });
    await auth.token();
    assert.equal(vault.requests.at(-1)!.body.jwt, vault.kubernetes.jwt);
    // The kubelet rotated the token file: the next login sends the new one (which the stand-in refuses).
    writeFileSync(jwtFile, 'eyJrotated');
    try {
      await assert.rejects(auth.refresh(auth.current()!), code('unauthenticated', /Kubernetes login at auth\/kubernetes \(role kms\): permission denied/));
      assert.equal(vault.requests.at(-1)!.body.jwt, 'eyJrotated');
    } finally {
      writeFileSync(jwtFile, vault.kubernetes.jwt);
      auth.close();
    }
  });

  it('token file: read once, read again on refresh; a file with something else than one token line is refused', async () => {
    const f = join(dir, 'token');
    writeFileSync(f, 'hvs.first\n', { mode: 0o600 });
    const { auth, events } = setup({ kind: 'token', tokenFile: f });
    assert.equal(await auth.token(), 'hvs.first');
    writeFileSync(f, 'hvs.second');
    assert.equal(await auth.refresh('hvs.first'), true);
    assert.equal(auth.current(), 'hvs.second');
    assert.deepEqual(events.at(-1), { type: 'token_reloaded', file: f });
    const g = join(dir, 'token2');
    writeFileSync(g, 'two words\n', { mode: 0o600 });
    const bad = setup({ kind: 'token', tokenFile: g });
    await assert.rejects(bad.auth.token(), code('config_invalid', /does not hold one line of printable characters/));
    assert.ok(!events.some((e) => JSON.stringify(e).includes('hvs.')), 'no event carries a token');
  });
});
