import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import Fastify from 'fastify';
import type { LightMyRequestResponse } from 'fastify';
import { collapseDsmSlashes } from './dsm/dialect.js';
import { nativeDialect } from './native/dialect.js';
import { installPipeline } from './pipeline/pipeline.js';
import { createServerMetrics } from './metrics.js';
import { openTestApp, type TestApp } from '../../test/server-app.js';

// Route behaviour of the whole pipeline, in process (app.inject, a real
// SQLite file, the real core): each dialect's error shapes, the route-table
// check, key visibility, authentication and authorization, fail-closed audit.

const AUDIT_FAILED = 'the audit record could not be written; request refused';
const TEXT = 'text/plain; charset=utf-8';

const b64 = (s: string) => Buffer.from(s).toString('base64');
const basic = (user: string, pass: string) => `Basic ${b64(`${user}:${pass}`)}`;
const bearer = (t: string) => ({ authorization: `Bearer ${t}` });

/** A native error answer: status, code, message, and the requestId equal to the x-request-id header. */
function nativeError(r: LightMyRequestResponse, status: number, code: string, message?: RegExp): void {
  assert.equal(r.statusCode, status, r.body);
  assert.match(String(r.headers['content-type']), /^application\/json/);
  const body = r.json() as { error: { code: string; message: string; requestId: string } };
  assert.deepEqual(Object.keys(body), ['error']);
  assert.equal(body.error.code, code, r.body);
  if (message) assert.match(body.error.message, message);
  assert.equal(body.error.requestId, r.headers['x-request-id']);
}

/** A Vault error answer: {"errors": [...]} and nothing else. */
function vaultError(r: LightMyRequestResponse, status: number, first: RegExp): string[] {
  assert.equal(r.statusCode, status, r.body);
  assert.match(String(r.headers['content-type']), /^application\/json/);
  const body = r.json() as { errors: string[] };
  assert.deepEqual(Object.keys(body), ['errors']);
  assert.match(body.errors[0]!, first);
  return body.errors;
}

/** A DSM error answer: a status and a plain-text message. */
function dsmError(r: LightMyRequestResponse, status: number, message: RegExp): void {
  assert.equal(r.statusCode, status, r.body);
  assert.equal(r.headers['content-type'], TEXT);
  assert.match(r.body, message);
}

describe('server pipeline and dialects (in process)', () => {
  let t: TestApp;
  before(async () => {
    t = await openTestApp({ bodyLimit: 16 * 1024 });
  });
  after(async () => {
    await t?.close();
  });

  /** The audit record of a request, by its id. */
  const recordOf = async (r: LightMyRequestResponse) => {
    const id = String(r.headers['x-request-id']);
    const rows = (await t.store.readAudit(0, 100_000)).filter((row) => row.request_id === id);
    assert.equal(rows.length, 1, `one audit record for request ${id}`);
    return { ...rows[0]!, details: JSON.parse(String(rows[0]!.details ?? '{}')) as Record<string, unknown> };
  };

  describe('error shapes', () => {
    it('bad JSON: each dialect answers 400 in its own shape, and the request is audited', async () => {
      const native = await t.inject({ method: 'POST', url: '/v1/keys/k1/encrypt', headers: { ...bearer(t.tokens.granted), 'content-type': 'application/json' }, payload: '{"plaintext":' });
      nativeError(native, 400, 'invalid_argument', /^request body is not valid JSON$/);
      const vault = await t.inject({ method: 'POST', url: '/v1/transit/encrypt/k1', headers: { 'x-vault-token': t.tokens.granted }, payload: '{"plaintext":' });
      vaultError(vault, 400, /^failed to parse JSON input/);
      const dsm = await t.inject({ method: 'POST', url: '/crypto/v1/encrypt', headers: { authorization: basic('granted', t.tokens.granted), 'content-type': 'application/json' }, payload: '{"key":' });
      dsmError(dsm, 400, /^request body is not valid JSON$/);
      for (const [r, op] of [[native, 'crypto.encrypt'], [vault, 'transit.encrypt'], [dsm, 'dsm.encrypt']] as const) {
        const rec = await recordOf(r);
        assert.equal(rec.operation, op);
        assert.equal(rec.result, 'invalid_argument');
        assert.equal(rec.details.status, 400);
      }
    });

    it('unknown route: native 404, Vault 404 or 405 (a known path, another method), DSM 404 text; audited as http.unknown with the path', async () => {
      const native = await t.inject({ method: 'GET', url: '/v1/nothing-here?x=1' });
      nativeError(native, 404, 'not_found', /^no route GET \/v1\/nothing-here$/);
      const outside = await t.inject({ method: 'GET', url: '/elsewhere' });
      nativeError(outside, 404, 'not_found', /^no route GET \/elsewhere$/);
      vaultError(await t.inject({ method: 'GET', url: '/v1/transit/nothing' }), 404, /^unsupported path$/);
      vaultError(await t.inject({ method: 'GET', url: '/v1/transit/encrypt/k1' }), 405, /^unsupported operation$/);
      vaultError(await t.inject({ method: 'GET', url: '/v1/auth/token/nothing' }), 404, /^unsupported path$/);
      dsmError(await t.inject({ method: 'GET', url: '/crypto/v1/nothing' }), 404, /^no route GET \/crypto\/v1\/nothing$/);
      dsmError(await t.inject({ method: 'GET', url: '/sys/v1/nothing' }), 404, /^no route GET \/sys\/v1\/nothing$/);
      // Not a DSM path: the prefix is a whole path segment.
      nativeError(await t.inject({ method: 'GET', url: '/crypto/v1x' }), 404, 'not_found');
      const rec = await recordOf(native);
      assert.equal(rec.operation, 'http.unknown');
      assert.equal(rec.result, 'not_found');
      assert.equal(rec.details.route, 'GET /v1/nothing-here');
      const v405 = await recordOf(await t.inject({ method: 'GET', url: '/v1/transit/decrypt/k1' }));
      assert.equal(v405.result, 'invalid_argument');
    });

    it('a body over the limit: 413 in each dialect\'s shape', async () => {
      const big = JSON.stringify({ plaintext: 'A'.repeat(20 * 1024) });
      nativeError(await t.inject({ method: 'POST', url: '/v1/keys/k1/encrypt', headers: { ...bearer(t.tokens.granted), 'content-type': 'application/json' }, payload: big }), 413, 'too_large');
      vaultError(await t.inject({ method: 'POST', url: '/v1/transit/encrypt/k1', headers: { 'x-vault-token': t.tokens.granted, 'content-type': 'application/json' }, payload: big }), 413, /larger than the server accepts/);
      dsmError(await t.inject({ method: 'POST', url: '/crypto/v1/encrypt', headers: { authorization: basic('granted', t.tokens.granted), 'content-type': 'application/json' }, payload: big }), 413, /larger than the server accepts/);
    });

    it('a POST without a body is read as {} where the body is optional; an explicit null or an empty JSON body is refused', async () => {
      const bare = await t.inject({ method: 'POST', url: '/v1/keys/k2/rotate', headers: bearer(t.tokens.keyAdmin) });
      assert.equal(bare.statusCode, 200, bare.body);
      assert.equal((bare.json() as { currentVersion: number }).currentVersion, 2);
      nativeError(await t.inject({ method: 'POST', url: '/v1/keys/k2/rotate', headers: { ...bearer(t.tokens.keyAdmin), 'content-type': 'application/json' }, payload: 'null' }), 400, 'invalid_argument');
      nativeError(await t.inject({ method: 'POST', url: '/v1/keys/k2/rotate', headers: { ...bearer(t.tokens.keyAdmin), 'content-type': 'application/json' }, payload: '' }), 400, 'invalid_argument', /body is empty/);
      // A body that is sent is the body validated: {} does not stand in for it.
      nativeError(await t.inject({ method: 'POST', url: '/v1/keys/k2/rotate', headers: bearer(t.tokens.keyAdmin), payload: { extra: 1 } }), 400, 'invalid_argument', /body/);
      assert.equal((await t.core.services().keys.get('k2')).currentVersion, 2, 'only the bare POST rotated');
    });

    it('a URL the router refuses (bad percent-encoding) is answered in the dialect of its path and audited', async () => {
      nativeError(await t.inject({ method: 'GET', url: '/v1/keys/%zz' }), 400, 'invalid_argument', /not validly encoded/);
      vaultError(await t.inject({ method: 'GET', url: '/v1/transit/keys/%zz' }), 400, /not validly encoded/);
      dsmError(await t.inject({ method: 'GET', url: '/crypto/v1/keys/%zz' }), 400, /not validly encoded/);
    });
  });

  describe('authentication', () => {
    it('no credentials: native 401, Vault 403 "permission denied", DSM 401', async () => {
      nativeError(await t.inject({ method: 'GET', url: '/v1/keys' }), 401, 'unauthenticated', /authentication required/);
      vaultError(await t.inject({ method: 'GET', url: '/v1/transit/keys/k1' }), 403, /^permission denied$/);
      dsmError(await t.inject({ method: 'GET', url: '/crypto/v1/keys' }), 401, /authentication required/);
    });

    it('malformed and unknown credentials are refused with a precise message that never echoes them', async () => {
      const secret = 'kha_0123456789abcdef_' + 'x'.repeat(43);
      const cases: [LightMyRequestResponse, RegExp][] = [
        [await t.inject({ method: 'GET', url: '/v1/keys', headers: { authorization: 'Token abc' } }), /must be "Bearer <token>"/],
        [await t.inject({ method: 'GET', url: '/v1/keys', headers: bearer(secret) }), /./],
        // Basic is a DSM credential only.
        [await t.inject({ method: 'GET', url: '/v1/keys', headers: { authorization: basic('granted', t.tokens.granted) } }), /must be "Bearer <token>"/],
      ];
      for (const [r, m] of cases) {
        nativeError(r, 401, 'unauthenticated', m);
        assert.ok(!r.body.includes(secret) && !r.body.includes(t.tokens.granted), 'no credential in the answer');
      }
      const errors = vaultError(await t.inject({ method: 'GET', url: '/v1/transit/keys/k1', headers: { 'x-vault-token': 'bad token' } }), 403, /^permission denied$/);
      assert.match(errors[1]!, /X-Vault-Token header must hold/);
      // X-Vault-Token is read on Vault paths only; elsewhere it is no credential.
      nativeError(await t.inject({ method: 'GET', url: '/v1/keys/k1', headers: { 'x-vault-token': t.tokens.granted } }), 401, 'unauthenticated');
      dsmError(await t.inject({ method: 'GET', url: '/crypto/v1/keys', headers: { authorization: basic('key-admin', 'a password') } }), 401, /must be an app API key/);
      dsmError(await t.inject({ method: 'GET', url: '/crypto/v1/keys', headers: { authorization: basic('stranger', t.tokens.granted) } }), 401, /app-id does not match the API key/);
      // The right app and key work, as Basic and as Bearer.
      assert.equal((await t.inject({ method: 'GET', url: '/crypto/v1/keys', headers: { authorization: basic('granted', t.tokens.granted) } })).statusCode, 200);
      assert.equal((await t.inject({ method: 'GET', url: '/crypto/v1/keys', headers: bearer(t.tokens.granted) })).statusCode, 200);
      for (const line of t.logs()) assert.ok(!line.includes(t.tokens.granted) && !line.includes(secret), 'no credential in the logs');
    });
  });

  describe('authorization', () => {
    it('a route refused to a principal: 403 in each dialect\'s shape, audited with the operation and the refusal', async () => {
      const native = await t.inject({ method: 'POST', url: '/v1/keys', headers: bearer(t.tokens.granted), payload: { name: 'n1' } });
      nativeError(native, 403, 'permission_denied', /^app:granted may not key\.create$/);
      vaultError(await t.inject({ method: 'POST', url: '/v1/transit/keys/n1', headers: { 'x-vault-token': t.tokens.granted } }), 403, /^permission denied$/);
      dsmError(await t.inject({ method: 'POST', url: '/crypto/v1/keys', headers: { authorization: basic('granted', t.tokens.granted) }, payload: { name: 'n1', obj_type: 'AES' } }), 403, /may not dsm\.key\.create/);
      const rec = await recordOf(native);
      assert.deepEqual([rec.operation, rec.result, rec.actor, rec.details.role], ['key.create', 'permission_denied', 'app:granted', 'app']);
      await assert.rejects(t.core.services().keys.get('n1'), /does not exist/);
    });

    // Who may call what, as the roles in DESIGN.md say: expected status class per principal.
    const matrix: { route: [string, string, unknown?]; allowed: readonly string[] }[] = [
      { route: ['GET', '/v1/keys'], allowed: ['admin', 'keyAdmin', 'auditor'] },
      { route: ['POST', '/v1/keys/k2/rotate'], allowed: ['keyAdmin'] },
      { route: ['GET', '/v1/users'], allowed: ['admin'] },
      { route: ['GET', '/v1/apps'], allowed: ['admin', 'keyAdmin'] },
      { route: ['GET', '/v1/audit/verify'], allowed: ['auditor'] },
      { route: ['POST', '/v1/keys/k1/encrypt', { plaintext: b64('m') }], allowed: ['granted'] },
      { route: ['GET', '/v1/auth/whoami'], allowed: ['admin', 'keyAdmin', 'auditor', 'granted', 'stranger'] },
      { route: ['GET', '/v1/transit/keys/k1'], allowed: ['admin', 'keyAdmin', 'auditor', 'granted'] },
      { route: ['POST', '/v1/transit/encrypt/k1', { plaintext: b64('m') }], allowed: ['granted'] },
      { route: ['GET', '/crypto/v1/keys'], allowed: ['admin', 'keyAdmin', 'auditor', 'granted', 'stranger'] },
    ];
    const who = ['admin', 'keyAdmin', 'auditor', 'granted', 'stranger', 'anonymous'] as const;
    for (const { route, allowed } of matrix) {
      it(`${route[0]} ${route[1]}: only ${allowed.join(', ')}`, async () => {
        for (const p of who) {
          const token = p === 'anonymous' ? undefined : t.tokens[p];
          const headers = token === undefined ? {} : route[1].startsWith('/v1/transit') ? { 'x-vault-token': token } : bearer(token);
          const r = await t.inject({ method: route[0] as 'GET', url: route[1], headers, ...(route[2] ? { payload: route[2] as object } : {}) });
          if (allowed.includes(p)) assert.ok(r.statusCode < 400, `${p}: ${r.statusCode} ${r.body}`);
          else assert.ok(r.statusCode === 401 || r.statusCode === 403, `${p} must be refused: ${r.statusCode} ${r.body}`);
        }
      });
    }
  });

  describe('visibleKey', () => {
    it('an app without a grant gets the same answer for a key that exists and one that does not, in all three dialects', async () => {
      const strip = (r: LightMyRequestResponse) => [r.statusCode, r.headers['content-type'], r.body.replaceAll(String(r.headers['x-request-id']), 'ID').replace(/k1|nokey/g, 'NAME')];
      const pairs: [LightMyRequestResponse, LightMyRequestResponse][] = [
        [await t.inject({ method: 'GET', url: '/v1/keys/k1', headers: bearer(t.tokens.stranger) }), await t.inject({ method: 'GET', url: '/v1/keys/nokey', headers: bearer(t.tokens.stranger) })],
        [await t.inject({ method: 'GET', url: '/v1/transit/keys/k1', headers: { 'x-vault-token': t.tokens.stranger } }), await t.inject({ method: 'GET', url: '/v1/transit/keys/nokey', headers: { 'x-vault-token': t.tokens.stranger } })],
        [await t.inject({ method: 'POST', url: '/crypto/v1/keys/info', headers: bearer(t.tokens.stranger), payload: { name: 'k1' } }), await t.inject({ method: 'POST', url: '/crypto/v1/keys/info', headers: bearer(t.tokens.stranger), payload: { name: 'nokey' } })],
      ];
      for (const [exists, missing] of pairs) {
        assert.equal(exists.statusCode, 403, exists.body);
        assert.deepEqual(strip(exists), strip(missing));
      }
      // The app that holds a grant sees the key; an admin sees a missing key as missing.
      assert.equal((await t.inject({ method: 'GET', url: '/v1/keys/k1', headers: bearer(t.tokens.granted) })).statusCode, 200);
      assert.equal((await t.inject({ method: 'GET', url: '/v1/transit/keys/k1', headers: { 'x-vault-token': t.tokens.granted } })).statusCode, 200);
      assert.equal((await t.inject({ method: 'POST', url: '/crypto/v1/keys/info', headers: bearer(t.tokens.granted), payload: { name: 'k1' } })).statusCode, 200);
      nativeError(await t.inject({ method: 'GET', url: '/v1/keys/nokey', headers: bearer(t.tokens.keyAdmin) }), 404, 'not_found');
      // Listing: an app sees only its granted keys.
      const listed = (await t.inject({ method: 'GET', url: '/crypto/v1/keys', headers: bearer(t.tokens.granted) })).json() as { name: string }[];
      assert.deepEqual([...new Set(listed.map((o) => o.name))], ['k1']);
      assert.deepEqual((await t.inject({ method: 'GET', url: '/crypto/v1/keys', headers: bearer(t.tokens.stranger) })).json(), []);
    });
  });

  describe('audit and metrics', () => {
    it('each request is audited once, with the key named by the path, the cluster and uid headers', async () => {
      const r = await t.inject({ method: 'POST', url: '/v1/keys/k1/encrypt', headers: { ...bearer(t.tokens.granted), 'x-keyhaven-cluster': 'c1', 'x-keyhaven-uid': 'u-1' }, payload: { plaintext: b64('hello') } });
      assert.equal(r.statusCode, 200, r.body);
      const rec = await recordOf(r);
      assert.deepEqual([rec.operation, rec.key_name, rec.result, rec.details.cluster, rec.details.uid, rec.details.status], ['crypto.encrypt', 'k1', 'ok', 'c1', 'u-1', 200]);
      assert.ok(!JSON.stringify(rec).includes(b64('hello')), 'no plaintext in the record');
      // A refused read of a key names it too (the path names it), an unknown name is not recorded as a key.
      const refused = await recordOf(await t.inject({ method: 'POST', url: '/v1/keys/k2/rotate', headers: bearer(t.tokens.auditor) }));
      assert.equal(refused.key_name, 'k2');
    });

    it('/metrics counts requests by route template, and whatever reaches no route as "unknown"', async () => {
      await t.inject({ method: 'GET', url: '/v1/keys', headers: bearer(t.tokens.keyAdmin) });
      await t.inject({ method: 'GET', url: '/v1/no-such-thing' });
      const text = (await t.inject({ method: 'GET', url: '/metrics' })).body;
      assert.match(text, /keyhaven_http_requests_total\{route="\/v1\/keys",method="GET",status_class="2xx"\} [1-9]/);
      assert.match(text, /keyhaven_http_requests_total\{route="unknown",method="GET",status_class="4xx"\} [1-9]/);
      assert.match(text, /keyhaven_http_request_duration_seconds_count\{route="\/v1\/keys",method="GET"\} [1-9]/);
      assert.ok(!text.includes('no-such-thing'), 'no caller-chosen path as a label');
    });

    it('fail closed: when the audit record cannot be written, every dialect answers 503 in its shape and no result leaves', async () => {
      const db = new Database(t.dbPath);
      try {
        db.exec(`CREATE TRIGGER refuse_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'refused by the test'); END`);
        const native = await t.inject({ method: 'POST', url: '/v1/keys/k1/encrypt', headers: bearer(t.tokens.granted), payload: { plaintext: b64('secret-1') } });
        nativeError(native, 503, 'audit_failed', new RegExp(`^${AUDIT_FAILED}$`));
        assert.ok(!native.body.includes('ciphertext'));
        const vault = await t.inject({ method: 'POST', url: '/v1/transit/encrypt/k1', headers: { 'x-vault-token': t.tokens.granted }, payload: { plaintext: b64('secret-2') } });
        assert.deepEqual(vaultError(vault, 503, new RegExp(`^${AUDIT_FAILED}$`)), [AUDIT_FAILED]);
        dsmError(await t.inject({ method: 'POST', url: '/crypto/v1/keys/info', headers: bearer(t.tokens.granted), payload: { name: 'k1' } }), 503, new RegExp(`^${AUDIT_FAILED}$`));
        // Refusals and unknown routes too.
        nativeError(await t.inject({ method: 'GET', url: '/v1/keys' }), 503, 'audit_failed');
        vaultError(await t.inject({ method: 'GET', url: '/v1/transit/nothing' }), 503, new RegExp(`^${AUDIT_FAILED}$`));
      } finally {
        db.exec('DROP TRIGGER IF EXISTS refuse_audit');
        db.close();
      }
      assert.ok(t.logs().some((l) => l.includes('audit record could not be written')), 'the failure is logged');
      // Counted for the alert on audit failures: the five refused above, at least.
      const m = /^keyhaven_audit_write_failures_total (\S+)$/m.exec((await t.inject({ method: 'GET', url: '/metrics' })).body);
      assert.ok(m && Number(m[1]) >= 5, `audit failures counted: ${m?.[1]}`);
    });
  });

  describe('a doubled leading slash (a DSM base URL ending in "/", as the SmartKey plugin\'s sample config has)', () => {
    const dsmBasic = () => ({ authorization: basic('granted', t.tokens.granted) });
    /** The CBC body the SmartKey plugin sends: its configured IV on every call. */
    const iv = Buffer.alloc(16, 7).toString('base64');

    it('collapseDsmSlashes touches only a leading run of slashes before a DSM prefix', () => {
      assert.equal(collapseDsmSlashes('//sys/v1/session/auth'), '/sys/v1/session/auth');
      assert.equal(collapseDsmSlashes('///crypto/v1/keys?x=1'), '/crypto/v1/keys?x=1');
      assert.equal(collapseDsmSlashes('//crypto/v1'), '/crypto/v1');
      for (const same of ['/sys/v1/session/auth', '/crypto/v1//keys', '//crypto/v1x', '//v1/keys', '//v1/transit/encrypt/k1', '//', '/', '']) {
        assert.equal(collapseDsmSlashes(same), same);
      }
    });

    it('//sys/v1/session/auth signs an app in with HTTP Basic, as /sys/v1/session/auth does', async () => {
      const r = await t.inject({ method: 'POST', url: '//sys/v1/session/auth', headers: dsmBasic() });
      assert.equal(r.statusCode, 200, r.body);
      const body = r.json() as { token_type: string; access_token: string };
      assert.equal(body.token_type, 'Bearer');
      assert.match(body.access_token, /^khs_/);
      const rec = await recordOf(r);
      assert.equal(rec.operation, 'dsm.session.auth');
      assert.equal(rec.actor, 'app:granted');
      // The session works on a doubled-slash crypto path too.
      const read = await t.inject({ method: 'POST', url: '//crypto/v1/keys/info', headers: bearer(body.access_token), payload: { name: 'k1' } });
      assert.equal(read.statusCode, 200, read.body);
      // Wrong credentials get DSM's refusal, the same as on the single-slash path, not a 404.
      const wrong = { authorization: basic('granted', 'kha_0123456789abcdef_' + 'x'.repeat(43)) };
      const refusedHere = await t.inject({ method: 'POST', url: '//sys/v1/session/auth', headers: wrong });
      dsmError(refusedHere, 401, /\S/);
      assert.equal(refusedHere.body, (await t.inject({ method: 'POST', url: '/sys/v1/session/auth', headers: wrong })).body);
    });

    it('//crypto/v1/keys/{kid}: GET, encrypt and decrypt with HTTP Basic answer as the single-slash paths do', async () => {
      const info = await t.inject({ method: 'POST', url: '/crypto/v1/keys/info', headers: dsmBasic(), payload: { name: 'k1' } });
      const kid = (info.json() as { kid: string }).kid;
      const single = await t.inject({ method: 'GET', url: `/crypto/v1/keys/${kid}`, headers: dsmBasic() });
      const doubled = await t.inject({ method: 'GET', url: `//crypto/v1/keys/${kid}`, headers: dsmBasic() });
      assert.equal(doubled.statusCode, 200, doubled.body);
      assert.deepEqual(doubled.json(), single.json());
      assert.equal((await recordOf(doubled)).operation, 'dsm.key.read');

      const plain = Buffer.from('a 32-byte seed for the apiserver').toString('base64');
      const enc = (url: string) => t.inject({ method: 'POST', url, headers: { ...dsmBasic(), 'content-type': 'application/json' }, payload: { alg: 'AES', mode: 'CBC', iv, plain } });
      const e1 = await enc(`/crypto/v1/keys/${kid}/encrypt`);
      const e2 = await enc(`//crypto/v1/keys/${kid}/encrypt`);
      assert.equal(e2.statusCode, 200, e2.body);
      // A fixed IV makes CBC deterministic: the same answer on both paths shows the same key and route.
      assert.deepEqual(e2.json(), e1.json());
      const rec = await recordOf(e2);
      assert.equal(rec.operation, 'dsm.encrypt');
      assert.equal(rec.key_name, 'k1');
      const cipher = (e2.json() as { cipher: string }).cipher;
      const dec = await t.inject({ method: 'POST', url: `//crypto/v1/keys/${kid}/decrypt`, headers: { ...dsmBasic(), 'content-type': 'application/json' }, payload: { alg: 'AES', mode: 'CBC', iv, cipher } });
      assert.equal(dec.statusCode, 200, dec.body);
      assert.equal((dec.json() as { plain: string }).plain, plain);
      // Refusals keep DSM's shape there too.
      const stranger = (url: string) => t.inject({ method: 'POST', url, headers: { authorization: basic('stranger', t.tokens.stranger), 'content-type': 'application/json' }, payload: { alg: 'AES', mode: 'CBC', iv, plain } });
      const denied = await stranger(`//crypto/v1/keys/${kid}/encrypt`);
      dsmError(denied, 403, /^no encrypt grant on security object /);
      assert.equal(denied.body, (await stranger(`/crypto/v1/keys/${kid}/encrypt`)).body);
    });

    it('an unknown DSM path or a bad URL behind "//" is answered in DSM\'s text form and audited as http.unknown', async () => {
      const r = await t.inject({ method: 'POST', url: '//crypto/v1/nothing?x=1', headers: dsmBasic() });
      dsmError(r, 404, /^no route POST \/crypto\/v1\/nothing$/);
      const rec = await recordOf(r);
      assert.equal(rec.operation, 'http.unknown');
      assert.equal(rec.result, 'not_found');
      assert.equal(rec.details.route, 'POST /crypto/v1/nothing');
      dsmError(await t.inject({ method: 'GET', url: '//sys/v1/nothing' }), 404, /^no route GET \/sys\/v1\/nothing$/);
      dsmError(await t.inject({ method: 'GET', url: '///crypto/v1/keys/%zz' }), 400, /not validly encoded/);
      // Only the leading run is collapsed: a doubled slash inside a DSM path is an unknown route, as before.
      dsmError(await t.inject({ method: 'GET', url: '/crypto/v1//keys' }), 404, /^no route GET \/crypto\/v1\/\/keys$/);
    });

    it('native /v1 and Vault paths with doubled slashes answer as before: 404 in their own shape', async () => {
      nativeError(await t.inject({ method: 'GET', url: '//v1/sys/health' }), 404, 'not_found', /^no route GET \/\/v1\/sys\/health$/);
      nativeError(await t.inject({ method: 'GET', url: '//v1/keys', headers: bearer(t.tokens.keyAdmin) }), 404, 'not_found', /^no route GET \/\/v1\/keys$/);
      nativeError(await t.inject({ method: 'GET', url: '/v1//keys', headers: bearer(t.tokens.keyAdmin) }), 404, 'not_found', /^no route GET \/v1\/\/keys$/);
      const transit = { 'x-vault-token': t.tokens.granted, 'content-type': 'application/json' };
      const payload = { plaintext: Buffer.from('x').toString('base64') };
      // "//v1/transit/…" is outside Vault's prefix, so the server-wide (native) not-found answers it.
      nativeError(await t.inject({ method: 'POST', url: '//v1/transit/encrypt/k1', headers: transit, payload }), 404, 'not_found', /^no route POST \/\/v1\/transit\/encrypt\/k1$/);
      vaultError(await t.inject({ method: 'POST', url: '/v1/transit//encrypt/k1', headers: transit, payload }), 404, /^unsupported path$/);
      nativeError(await t.inject({ method: 'GET', url: '//crypto/v1x' }), 404, 'not_found');
      // The single-slash paths still work.
      assert.equal((await t.inject({ method: 'GET', url: '/v1/sys/health' })).statusCode, 200);
      assert.equal((await t.inject({ method: 'POST', url: '/v1/transit/encrypt/k1', headers: transit, payload })).statusCode, 200);
    });
  });

  describe('route table', () => {
    it('a route without its audit operation or access rule is refused when it is added', async () => {
      const bad: Record<string, unknown>[] = [{}, { op: 'x.y' }, { access: { public: true } }, { op: '', access: { public: true } }, { op: 'x.y', access: { roles: [] } }, { op: 'x.y', access: { apps: 'all' } }];
      for (const config of bad) {
        const app = Fastify();
        installPipeline(app, { core: t.core, metrics: createServerMetrics() }, nativeDialect);
        await assert.rejects(
          async () => {
            app.get('/x', { config: config as never }, async () => 'x');
            await app.ready();
          },
          /route GET \/x needs config\.op .* and config\.access/,
          JSON.stringify(config),
        );
        await app.close();
      }
      const app = Fastify();
      installPipeline(app, { core: t.core, metrics: createServerMetrics() }, nativeDialect);
      app.get('/x', { config: { op: 'x.y', access: { public: true } } }, async () => 'x');
      await app.ready();
      await app.close();
    });
  });
});

describe('native crypto answers (serialized without the schema serializer)', () => {
  let t: TestApp;
  before(async () => {
    t = await openTestApp();
  });
  after(async () => {
    await t?.close();
  });

  const post = (op: string, payload: unknown) =>
    t.inject({ method: 'POST', url: `/v1/keys/k1/${op}`, headers: { ...bearer(t.tokens.granted), 'content-type': 'application/json' }, payload: JSON.stringify(payload) });
  /** The body holds exactly the schema's keys, in its order, as the schema's serializer writes them. */
  const exactly = (body: string, keys: readonly string[]) => {
    const parsed = JSON.parse(body) as Record<string, unknown>;
    assert.deepEqual(Object.keys(parsed), keys, body);
    assert.equal(body, JSON.stringify(Object.fromEntries(keys.map((k) => [k, parsed[k]]))));
    return parsed;
  };

  it('encrypt, decrypt and rewrap answer the schema shape byte for byte, single and batch', async () => {
    const enc = await post('encrypt', { plaintext: b64('hello') });
    assert.equal(enc.statusCode, 200, enc.body);
    const { ciphertext } = exactly(enc.body, ['ciphertext', 'version']) as { ciphertext: string };
    const dec = await post('decrypt', { ciphertext });
    assert.equal(dec.statusCode, 200, dec.body);
    assert.equal(exactly(dec.body, ['plaintext', 'version']).plaintext, b64('hello'));
    exactly((await post('rewrap', { ciphertext })).body, ['ciphertext', 'version']);

    const batch = await post('decrypt', { batch: [{ ciphertext }, { ciphertext: 'kh:v1:AAAA' }] });
    assert.equal(batch.statusCode, 200, batch.body);
    const items = (exactly(batch.body, ['batch']).batch as unknown[]).map((i) => JSON.stringify(i));
    exactly(items[0]!, ['plaintext', 'version']);
    const failed = exactly(items[1]!, ['error']).error as Record<string, unknown>;
    exactly(JSON.stringify(failed), ['code', 'message']);
    const encBatch = await post('encrypt', { batch: [{ plaintext: b64('a') }, { plaintext: b64('b') }] });
    for (const i of exactly(encBatch.body, ['batch']).batch as unknown[]) exactly(JSON.stringify(i), ['ciphertext', 'version']);
  });
});
