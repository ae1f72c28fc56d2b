import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { removeDir } from './helpers.js';
import { auditRecords, setupCast, startServerProcess, type Cast, type ServerProcess } from './server-helpers.js';
import { call, closeAgents, detailsOf, loginFrom, type Res } from './source-client.js';

// Attacks on sign-in, against real server processes over real HTTP. Each test
// fails if the attack succeeds. Client source addresses are real (see
// source-client.ts). Here: the per-source rate limit on the sign-in routes.

after(closeAgents);

describe('adversary: per-source rate limit on the sign-in routes', () => {
  let srv: ServerProcess;
  let url: string;
  let cast: Cast;
  // The default max; a long window so it cannot roll over during a slow run.
  const LIMIT = 20;
  /** Within the limit: checked (401) or, once the name is locked for this address, refused unchecked. */
  const withinLimit = (a: Res, what: string) => {
    assert.ok(a.status === 401 || (a.status === 429 && /failed sign-ins/.test(a.text)), `${what} is within the limit: ${a.status} ${a.text}`);
  };

  before(async () => {
    srv = await startServerProcess({ config: { auth: { rateLimit: { max: LIMIT, window: '1h' } } } });
    url = srv.url;
    cast = await setupCast(url);
  });

  after(async () => {
    await srv?.stop();
    if (srv) removeDir(srv.dir);
  });

  it('native /v1/auth/login: past the limit a source gets 429 in the native shape, audited; other sources and crypto are not limited', async () => {
    const from = '127.0.0.5';
    // One name: after maxFailedLogins the attempts are refused by the lock, cheaply, and still count for the rate limit.
    for (let i = 0; i < LIMIT; i++) withinLimit(await loginFrom(url, from, 'someone', `not-the-password-${i}`), `attempt ${i + 1}`);
    const over = await loginFrom(url, from, 'auditor', cast.passwords.auditor!);
    assert.equal(over.status, 429, over.text);
    assert.match(over.contentType, /application\/json/);
    assert.equal(over.body.error.code, 'too_many_attempts');
    assert.match(over.body.error.message, /too many sign-in requests from this address/);
    assert.match(over.body.error.requestId, /^[0-9a-f]{16}$/);
    // Another source is not affected.
    assert.equal((await loginFrom(url, '127.0.0.6', 'auditor', cast.passwords.auditor!)).status, 200);
    // Crypto from the limited source is never limited.
    for (let i = 0; i < LIMIT + 10; i++) {
      const e = await call(url, 'POST', `/v1/keys/${cast.key}/encrypt`, { from, token: cast.appKey, body: { plaintext: 'aGVsbG8=' } });
      assert.equal(e.status, 200, e.text);
    }
    const recs = await auditRecords(url, cast.auditor);
    assert.ok(recs.some((r) => r.operation === 'auth.login' && r.result === 'too_many_attempts' && detailsOf(r).source === from && detailsOf(r).status === 429), 'the limited request is audited');
  });

  it('DSM /sys/v1/session/auth: past the limit a source gets 429 in the DSM shape (plain text), audited', async () => {
    const from = '127.0.0.7';
    for (let i = 0; i < LIMIT; i++) withinLimit(await call(url, 'POST', '/sys/v1/session/auth', { from, basic: `someone:not-the-password-${i}` }), `attempt ${i + 1}`);
    const over = await call(url, 'POST', '/sys/v1/session/auth', { from, basic: `auditor:${cast.passwords.auditor}` });
    assert.equal(over.status, 429, over.text);
    assert.match(over.contentType, /text\/plain/);
    assert.match(over.text, /^too many sign-in requests from this address/);
    const recs = await auditRecords(url, cast.auditor);
    assert.ok(recs.some((r) => r.operation === 'dsm.session.auth' && r.result === 'too_many_attempts' && detailsOf(r).source === from), 'the limited request is audited');
    assert.equal((await call(url, 'GET', '/v1/sys/health', { from })).status, 200);
  });
});

