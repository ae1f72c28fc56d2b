import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { injectApi, openTestApp, type TestApp } from '../../test/server-app.js';

// Break-glass recovery, adversary tests: each fails while one person can
// open a recovery and decrypt in it alone.

let t: TestApp;
const b64 = (s: string) => Buffer.from(s).toString('base64');
const api = (method: string, path: string, opts: { token?: string; body?: unknown; headers?: Record<string, string> } = {}) => injectApi(t, method, path, opts);

describe('break-glass recovery adversary', () => {
  let ciphertext: string;

  before(async () => {
    t = await openTestApp();
    const enc = await api('POST', '/v1/keys/k1/encrypt', { token: t.tokens.granted, body: { plaintext: b64('backup secret') } });
    assert.equal(enc.status, 200, enc.text);
    ciphertext = enc.body.ciphertext;
  });

  after(async () => {
    await t?.close();
  });

  it('the security-admin who made the break-glass app (and so holds its API key) cannot approve its recovery', async () => {
    // The normal set-up: the security-admin creates the app and receives its key;
    // the key-admin grants decrypt; a quorum of one covers recovery.start.
    const made = await api('POST', '/v1/apps', { token: t.tokens.admin, body: { name: 'bg', breakGlass: true } });
    assert.equal(made.status, 200, made.text);
    const bg: string = made.body.apiKey;
    assert.equal((await api('PUT', '/v1/apps/bg/grants/k1', { token: t.tokens.keyAdmin, body: { operations: ['decrypt'] } })).status, 200);
    const q = await api('PUT', '/v1/sys/quorum', { token: t.tokens.admin, body: { required: 1, operations: ['recovery.start'], ttlS: 3600 } });
    assert.equal(q.status, 200, q.text);

    // The security-admin alone: starts a recovery with the key it was handed, then approves it.
    const r = await api('POST', '/v1/recoveries', { token: bg, body: { reason: 'nothing is lost' } });
    assert.equal(r.status, 202, r.text);
    const approve = await api('POST', `/v1/approvals/${r.body.approval.id}/approve`, { token: t.tokens.admin, body: {} });
    const d = await api('POST', '/v1/keys/k1/decrypt', { token: bg, body: { ciphertext }, headers: { 'x-keyhaven-recovery': r.body.recovery.id } });
    assert.notEqual(d.status, 200, `one person decrypted: approval ${approve.status} ${approve.body.state}, plaintext ${d.body.plaintext}`);
    assert.equal(approve.status, 403, approve.text);
  });

  it('an app with no decrypt grant cannot open recoveries (nor file approval requests for them) at will', async () => {
    // "stranger" holds no grant on any key: a recovery gives it nothing to read, yet each
    // one is an audit record, a row kept for ever and, under a quorum, a request in every approver's queue.
    const r = await api('POST', '/v1/recoveries', { token: t.tokens.stranger, body: { reason: 'urgent, approve now', cluster: 'prod' } });
    assert.equal(r.status, 403, r.text);
  });
});
