import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createKidIndex, dsmKid } from '../src/server/dsm/objects.js';
import { openSqliteStore } from '../src/storage/sqlite.js';
import { removeDir, tempDir } from './helpers.js';
import { api, auditRecords, rotateAppKeyApproved, setupCast, startServerProcess, type Cast, type ServerProcess } from './server-helpers.js';
import { byteForms } from './secret-forms.js';

// The Fortanix DSM / SmartKey compatibility API on a real `keyhaven server`
// process, driven over real HTTP the way DSM clients in the field drive it:
// the original SmartKey Kubernetes plugin (HTTP Basic with the API key on
// every call, GET the key and check AES-256, CBC with a caller IV) and the
// Fortanix Go SDK (session auth, POST /crypto/v1/keys/info, GCM with a tag
// length, JSON bodies without a content-type).

const MARKER = 'Zq7DSMSECRETx';
const b64 = (b: string | Buffer) => Buffer.from(b).toString('base64');
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

interface Answer {
  status: number;
  text: string;
  body: any;
  type: string;
}

interface Call {
  basic?: string;
  bearer?: string;
  /** Objects go as JSON; Buffers go as they are with no content-type (like the Go SDK). */
  body?: unknown;
  headers?: Record<string, string>;
  /** The base URL the path is appended to (default: the server's URL, no trailing slash). */
  base?: string;
}

describe('Fortanix DSM compatibility API', () => {
  let srv: ServerProcess;
  let url: string;
  let cast: Cast;
  /** The DSM API key of app1: base64("app1:<kha_… key>"). */
  let apiKey: string;
  let k1v1: string;
  const plaintexts: Buffer[] = [];
  const tokens: string[] = [];

  const dsm = async (method: string, path: string, c: Call = {}): Promise<Answer> => {
    const headers: Record<string, string> = { ...c.headers };
    if (c.basic !== undefined) headers.authorization = `Basic ${c.basic}`;
    if (c.bearer !== undefined) headers.authorization = `Bearer ${c.bearer}`;
    let body: string | Buffer | undefined;
    if (Buffer.isBuffer(c.body)) body = c.body;
    else if (typeof c.body === 'string') {
      body = c.body;
      headers['content-type'] ??= 'application/json';
    } else if (c.body !== undefined) {
      body = JSON.stringify(c.body);
      headers['content-type'] ??= 'application/json';
    }
    const res = await fetch((c.base ?? url) + path, { method, headers, body });
    const text = await res.text();
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = undefined;
    }
    return { status: res.status, text, body: parsed, type: res.headers.get('content-type') ?? '' };
  };

  const ok = (r: Answer, what: string, status = 200) => {
    assert.equal(r.status, status, `${what}: ${r.status} ${r.text.slice(0, 300)}`);
    return r.body;
  };

  /** An error in DSM's shape: the status and a plain-text message (not JSON), echoing no secret. */
  const refused = (r: Answer, status: number, message: RegExp, what: string, secrets: string[] = []) => {
    assert.equal(r.status, status, `${what}: ${r.status} ${r.text.slice(0, 300)}`);
    assert.match(r.type, /^text\/plain/, `${what}: content-type ${r.type}`);
    assert.equal(r.body === undefined || typeof r.body !== 'object', true, `${what}: body is not JSON: ${r.text}`);
    assert.match(r.text, message, what);
    for (const s of [MARKER, ...secrets]) assert.ok(!r.text.includes(s), `${what}: echoes a secret`);
  };

  const plain = (label: string, n = 40) => {
    const p = Buffer.concat([Buffer.from(`${MARKER}-${label}-`), randomBytes(n)]);
    plaintexts.push(p);
    return p;
  };

  const dsmLogin = async (user: string): Promise<string> => {
    const r = ok(await dsm('POST', '/sys/v1/session/auth', { basic: b64(`${user}:${cast.passwords[user]}`) }), `login ${user}`);
    tokens.push(r.access_token);
    return r.access_token;
  };

  before(async () => {
    srv = await startServerProcess({ config: { log: { level: 'trace' } } });
    url = srv.url;
    cast = await setupCast(url);
    apiKey = b64(`app1:${cast.appKey}`);
    for (const k of ['k2', 'k3']) assert.equal((await api(url, 'POST', '/v1/keys', { token: cast.keyAdmin, body: { name: k } })).status, 200);
    // app1: everything on k1 (setupCast); encrypt only on k2; nothing on k3.
    assert.equal((await api(url, 'PUT', '/v1/apps/app1/grants/k2', { token: cast.keyAdmin, body: { operations: ['encrypt'] } })).status, 200);
  });

  after(async () => {
    await srv?.stop();
    if (srv) removeDir(srv.dir);
  });

  it('a SmartKey-plugin-style client: Basic on every call, GET the key (AES, 256), CBC with its own IV', async () => {
    const list = ok(await dsm('GET', '/crypto/v1/keys', { basic: apiKey }), 'list');
    assert.ok(Array.isArray(list));
    // app1 sees the keys it holds grants on (k1, k2), not k3.
    assert.deepEqual(list.map((o: any) => o.name).sort(), ['k1', 'k2']);
    const k1 = list.find((o: any) => o.name === 'k1');
    k1v1 = k1.kid;
    assert.match(k1v1, UUID);
    const key = ok(await dsm('GET', `/crypto/v1/keys/${k1v1}`, { basic: apiKey }), 'get key');
    assert.equal(key.obj_type, 'AES');
    assert.equal(key.key_size, 256);
    assert.equal(key.kid, k1v1);
    assert.equal(key.name, 'k1');
    assert.equal(key.enabled, true);
    assert.equal(key.state, 'Active');
    assert.deepEqual(key.key_ops, ['ENCRYPT', 'DECRYPT']);
    assert.equal(key.value, undefined);
    assert.match(key.created_at, /^\d{8}T\d{6}Z$/);

    // The plugin builds its JSON by hand, with its configured IV.
    const iv = randomBytes(16);
    const p = plain('cbc');
    const raw = `{\n\t\t"alg":   "AES",\n\t\t"mode":  "CBC",\n\t\t"iv":    "${b64(iv)}",\n\t\t"plain": "${b64(p)}"\n\t}`;
    const enc = ok(await dsm('POST', `/crypto/v1/keys/${k1v1}/encrypt`, { basic: apiKey, body: raw }), 'cbc encrypt');
    assert.equal(enc.kid, k1v1);
    assert.equal(enc.iv, b64(iv));
    assert.equal(enc.tag, undefined);
    const cipher = Buffer.from(enc.cipher, 'base64');
    assert.equal(cipher.length, (Math.floor(p.length / 16) + 1) * 16);
    assert.ok(!cipher.includes(p.subarray(0, 16)));
    // CBC with a fixed IV is deterministic: the weakness the docs warn about.
    const again = ok(await dsm('POST', `/crypto/v1/keys/${k1v1}/encrypt`, { basic: apiKey, body: raw }), 'cbc encrypt again');
    assert.equal(again.cipher, enc.cipher);
    const dec = ok(await dsm('POST', `/crypto/v1/keys/${k1v1}/decrypt`, { basic: apiKey, body: { alg: 'AES', mode: 'CBC', iv: b64(iv), cipher: enc.cipher } }), 'cbc decrypt');
    assert.equal(dec.kid, k1v1);
    assert.deepEqual(Buffer.from(dec.plain, 'base64'), p);
    // Without an IV the server picks a random one.
    const r1 = ok(await dsm('POST', '/crypto/v1/encrypt', { basic: apiKey, body: { key: { name: 'k1' }, alg: 'AES', mode: 'CBC', plain: b64(p) } }), 'cbc random iv');
    const r2 = ok(await dsm('POST', '/crypto/v1/encrypt', { basic: apiKey, body: { key: { name: 'k1' }, alg: 'AES', mode: 'CBC', plain: b64(p) } }), 'cbc random iv 2');
    assert.equal(Buffer.from(r1.iv, 'base64').length, 16);
    assert.notEqual(r1.iv, r2.iv);
    assert.notEqual(r1.cipher, r2.cipher);
  });

  it('a SmartKey plugin whose smartkeyURL ends in "/" (its sample config): "//sys/v1/…" and "//crypto/v1/…" work', async () => {
    // The plugin appends "/sys/v1/session/auth" and "/crypto/v1/keys/…" to its configured URL as it is.
    const smartkeyURL = `${url}/`;
    const json = { 'content-type': 'application/json' };
    // At start: session auth (no body, still labelled JSON), then GET the key and check AES-256.
    const auth = ok(await dsm('POST', '/sys/v1/session/auth', { base: smartkeyURL, basic: apiKey, headers: json }), 'session auth at //sys/v1');
    assert.equal(auth.token_type, 'Bearer');
    tokens.push(auth.access_token);
    const key = ok(await dsm('GET', `/crypto/v1/keys/${k1v1}`, { base: smartkeyURL, basic: apiKey, headers: json }), 'GET the key at //crypto/v1');
    assert.equal(key.obj_type, 'AES');
    assert.equal(key.key_size, 256);
    // Then one encrypt per apiserver write and a decrypt per read, CBC with the configured IV.
    const iv = b64(randomBytes(16));
    const p = plain('double-slash');
    const raw = `{\n\t\t"alg":   "AES",\n\t\t"mode":  "CBC",\n\t\t"iv":    "${iv}",\n\t\t"plain": "${b64(p)}"\n\t}`;
    const enc = ok(await dsm('POST', `/crypto/v1/keys/${k1v1}/encrypt`, { base: smartkeyURL, basic: apiKey, body: raw }), 'encrypt at //crypto/v1');
    assert.equal(enc.kid, k1v1);
    // The same call without the doubled slash gives the same cipher (fixed IV): the same route and key.
    assert.equal(ok(await dsm('POST', `/crypto/v1/keys/${k1v1}/encrypt`, { basic: apiKey, body: raw }), 'encrypt at /crypto/v1').cipher, enc.cipher);
    const dec = ok(await dsm('POST', `/crypto/v1/keys/${k1v1}/decrypt`, { base: smartkeyURL, basic: apiKey, body: { alg: 'AES', mode: 'CBC', iv, cipher: enc.cipher } }), 'decrypt at //crypto/v1');
    assert.deepEqual(Buffer.from(dec.plain, 'base64'), p);
    // An unknown DSM path under the doubled slash: DSM's plain-text 404, not the native JSON one.
    refused(await dsm('POST', '/crypto/v1/nothing', { base: smartkeyURL, basic: apiKey }), 404, /^no route POST \/crypto\/v1\/nothing$/, 'unknown DSM path at //crypto/v1', [apiKey]);
  });

  it('a Go-SDK-style client: session auth with the API key, key info by name, GCM, terminate; bodies without a content-type', async () => {
    const auth = ok(await dsm('POST', '/sys/v1/session/auth', { basic: apiKey, body: Buffer.alloc(0) }), 'session auth');
    assert.equal(auth.token_type, 'Bearer');
    assert.match(auth.access_token, /^khs_/);
    assert.ok(auth.expires_in > 8 * 3600 - 60 && auth.expires_in <= 8 * 3600, `expires_in ${auth.expires_in}`);
    assert.match(auth.entity_id, UUID);
    tokens.push(auth.access_token);
    const info = ok(await dsm('POST', '/crypto/v1/keys/info?view=json', { bearer: auth.access_token, body: Buffer.from(JSON.stringify({ name: 'k1' })) }), 'info by name');
    assert.equal(info.kid, k1v1);
    assert.equal(info.obj_type, 'AES');
    const byKid = ok(await dsm('POST', '/crypto/v1/keys/info', { bearer: auth.access_token, body: { kid: k1v1 } }), 'info by kid');
    assert.equal(byKid.name, 'k1');
    // The app's session works on the native API too, with the same grants.
    assert.equal((await api(url, 'GET', '/v1/auth/whoami', { token: auth.access_token })).body.name, 'app1');
    ok(await dsm('POST', '/sys/v1/session/terminate', { bearer: auth.access_token, body: Buffer.alloc(0) }), 'terminate', 204);
    refused(await dsm('POST', '/crypto/v1/keys/info', { bearer: auth.access_token, body: { kid: k1v1 } }), 401, /revoked/, 'terminated session', [auth.access_token]);

    // Encrypt (Basic, GCM, tag_len 128, no content-type) and decrypt by the kid it returned.
    const p = plain('gcm');
    const enc = ok(await dsm('POST', '/crypto/v1/encrypt', { basic: apiKey, body: Buffer.from(JSON.stringify({ key: { name: 'k1' }, alg: 'AES', plain: b64(p), mode: 'GCM', tag_len: 128 })) }), 'gcm encrypt');
    assert.equal(enc.kid, k1v1);
    assert.equal(Buffer.from(enc.iv, 'base64').length, 12);
    assert.equal(Buffer.from(enc.tag, 'base64').length, 16);
    assert.equal(Buffer.from(enc.cipher, 'base64').length, p.length);
    const dec = ok(await dsm('POST', '/crypto/v1/decrypt', { basic: apiKey, body: Buffer.from(JSON.stringify({ key: { kid: enc.kid }, alg: 'AES', cipher: enc.cipher, mode: 'GCM', iv: enc.iv, tag: enc.tag })) }), 'gcm decrypt');
    assert.deepEqual(Buffer.from(dec.plain, 'base64'), p);
  });

  it('GCM with ad and a short tag; a wrong ad, tag, iv or cipher is refused', async () => {
    const p = plain('gcm-ad');
    const ad = b64('tenant=blue');
    const enc = ok(await dsm('POST', `/crypto/v1/keys/${k1v1}/encrypt`, { basic: apiKey, body: { alg: 'AES', mode: 'GCM', plain: b64(p), ad, tag_len: 96 } }), 'encrypt');
    assert.equal(Buffer.from(enc.tag, 'base64').length, 12);
    const body = { alg: 'AES', mode: 'GCM', cipher: enc.cipher, iv: enc.iv, tag: enc.tag, ad };
    const dec = ok(await dsm('POST', `/crypto/v1/keys/${k1v1}/decrypt`, { basic: apiKey, body }), 'decrypt');
    assert.deepEqual(Buffer.from(dec.plain, 'base64'), p);
    const flip = (s: string) => {
      const b = Buffer.from(s, 'base64');
      b[0] = b[0]! ^ 1;
      return b64(b);
    };
    for (const [what, change] of [
      ['wrong ad', { ad: b64('tenant=red') }],
      ['no ad', { ad: undefined }],
      ['flipped tag', { tag: flip(enc.tag) }],
      ['flipped iv', { iv: flip(enc.iv) }],
      ['flipped cipher', { cipher: flip(enc.cipher) }],
    ] as const) {
      refused(await dsm('POST', `/crypto/v1/keys/${k1v1}/decrypt`, { basic: apiKey, body: { ...body, ...change } }), 400, /^decryption failed/, what);
    }
  });

  it('rekey links the old and the new object; old-kid ciphertexts still decrypt; names follow the current version', async () => {
    const gcm = ok(await dsm('POST', '/crypto/v1/encrypt', { basic: apiKey, body: { key: { kid: k1v1 }, alg: 'AES', mode: 'GCM', plain: b64(plain('before-rekey')) } }), 'gcm v1');
    const iv = randomBytes(16);
    const cbcPlain = plain('before-rekey-cbc');
    const cbc = ok(await dsm('POST', '/crypto/v1/encrypt', { basic: apiKey, body: { key: { name: 'k1' }, alg: 'AES', mode: 'CBC', iv: b64(iv), plain: b64(cbcPlain) } }), 'cbc v1');

    // A key admin logs in with user name and password (Basic), then rekeys with the Bearer token.
    const auth = ok(await dsm('POST', '/sys/v1/session/auth', { basic: b64(`keyadmin:${cast.passwords.keyadmin}`) }), 'user session');
    tokens.push(auth.access_token);
    refused(await dsm('POST', '/crypto/v1/keys/rekey', { basic: apiKey, body: { name: 'k1' } }), 403, /may not dsm\.key\.rekey/, 'app rekey');
    const made = ok(await dsm('POST', '/crypto/v1/keys/rekey', { bearer: auth.access_token, body: { name: 'k1' } }), 'rekey');
    assert.equal(made.name, 'k1');
    assert.notEqual(made.kid, k1v1);
    assert.equal(made.links.replaced, k1v1);
    assert.equal(made.links.replacement, undefined);
    const old = ok(await dsm('GET', `/crypto/v1/keys/${k1v1}`, { basic: apiKey }), 'old object');
    assert.equal(old.name, 'k1 (version 1)');
    assert.equal(old.links.replacement, made.kid);
    assert.equal(old.state, 'Active');
    // The native API sees the same rotation.
    assert.equal((await api(url, 'GET', '/v1/keys/k1', { token: cast.keyAdmin })).body.currentVersion, 2);

    // Encrypt by name now uses the new object; by the old kid, the old one.
    const byName = ok(await dsm('POST', '/crypto/v1/encrypt', { basic: apiKey, body: { key: { name: 'k1' }, alg: 'AES', mode: 'GCM', plain: b64(plain('after')) } }), 'by name');
    assert.equal(byName.kid, made.kid);
    const byOldKid = ok(await dsm('POST', `/crypto/v1/keys/${k1v1}/encrypt`, { basic: apiKey, body: { alg: 'AES', mode: 'GCM', plain: b64(plain('old kid')) } }), 'by old kid');
    assert.equal(byOldKid.kid, k1v1);

    // Ciphertexts made before the rekey decrypt by their kid and by the old object's name, not by the current name.
    const d1 = ok(await dsm('POST', '/crypto/v1/decrypt', { basic: apiKey, body: { key: { kid: gcm.kid }, mode: 'GCM', cipher: gcm.cipher, iv: gcm.iv, tag: gcm.tag } }), 'old gcm by kid');
    assert.match(Buffer.from(d1.plain, 'base64').toString('latin1'), /before-rekey-/);
    const d2 = ok(await dsm('POST', `/crypto/v1/keys/${cbc.kid}/decrypt`, { basic: apiKey, body: { alg: 'AES', mode: 'CBC', cipher: cbc.cipher, iv: cbc.iv } }), 'old cbc by kid');
    assert.deepEqual(Buffer.from(d2.plain, 'base64'), cbcPlain);
    const d3 = ok(await dsm('POST', '/crypto/v1/decrypt', { basic: apiKey, body: { key: { name: 'k1 (version 1)' }, mode: 'CBC', cipher: cbc.cipher, iv: cbc.iv } }), 'old cbc by old name');
    assert.deepEqual(Buffer.from(d3.plain, 'base64'), cbcPlain);
    refused(await dsm('POST', '/crypto/v1/decrypt', { basic: apiKey, body: { key: { name: 'k1' }, mode: 'GCM', cipher: gcm.cipher, iv: gcm.iv, tag: gcm.tag } }), 400, /^decryption failed/, 'old ciphertext, current object');
    refused(await dsm('POST', '/crypto/v1/decrypt', { basic: apiKey, body: { key: { name: 'k1 (version 2)' }, mode: 'GCM', cipher: gcm.cipher, iv: gcm.iv, tag: gcm.tag } }), 404, /no security object named/, 'the current version by an old-style name');
    refused(await dsm('POST', '/crypto/v1/keys/rekey', { bearer: auth.access_token, body: { name: 'k1 (version 1)' } }), 409, /already replaced/, 'rekey an old object');

    // A native rotation shows as a third object; retiring version 1 deactivates it.
    assert.equal((await api(url, 'POST', '/v1/keys/k1/rotate', { token: cast.keyAdmin, body: {} })).status, 200);
    assert.equal((await api(url, 'PUT', '/v1/keys/k1/policy', { token: cast.keyAdmin, body: { minDecryptionVersion: 2 } })).status, 200);
    const objs = ok(await dsm('GET', '/crypto/v1/keys?name=k1', { bearer: auth.access_token }), 'list by name');
    assert.equal(objs.length, 1);
    const all = ok(await dsm('GET', '/crypto/v1/keys?with_metadata=true', { bearer: auth.access_token }), 'list with metadata');
    const k1objs = all.items.filter((o: any) => o.custom_metadata['keyhaven-key'] === 'k1');
    assert.deepEqual(k1objs.map((o: any) => o.name), ['k1', 'k1 (version 2)', 'k1 (version 1)']);
    assert.equal(all.metadata.total_count, all.items.length);
    assert.equal(k1objs[2].state, 'Deactivated');
    assert.deepEqual(k1objs[2].key_ops, []);
    assert.equal(k1objs[1].links.replacement, k1objs[0].kid);
    assert.equal(k1objs[1].links.replaced, k1v1);
    refused(await dsm('POST', '/crypto/v1/decrypt', { basic: apiKey, body: { key: { kid: k1v1 }, mode: 'CBC', cipher: cbc.cipher, iv: cbc.iv } }), 409, /retired/, 'retired version');
    refused(await dsm('POST', `/crypto/v1/keys/${k1v1}/encrypt`, { basic: apiKey, body: { alg: 'AES', mode: 'GCM', plain: b64('x') } }), 409, /retired/, 'encrypt with a retired version');
    const v2 = k1objs[1].kid;
    ok(await dsm('POST', '/crypto/v1/decrypt', { basic: apiKey, body: { key: { kid: v2 }, mode: 'GCM', cipher: byName.cipher, iv: byName.iv, tag: byName.tag } }), 'version 2 still decrypts');
  });

  it('key admins create keys; obj_type, key_size, import and duplicates are refused precisely', async () => {
    const auth = ok(await dsm('POST', '/sys/v1/session/auth', { basic: b64(`keyadmin2:${cast.passwords.keyadmin2}`) }), 'login');
    tokens.push(auth.access_token);
    const made = ok(await dsm('POST', '/crypto/v1/keys', { bearer: auth.access_token, body: { name: 'dsm-made', obj_type: 'AES', key_size: 256, key_ops: ['ENCRYPT', 'DECRYPT', 'APPMANAGEABLE'], description: 'from a DSM client', group_id: '00000000-0000-0000-0000-000000000000' } }), 'create');
    assert.equal(made.name, 'dsm-made');
    assert.match(made.kid, UUID);
    assert.equal(made.links, undefined);
    assert.equal((await api(url, 'GET', '/v1/keys/dsm-made', { token: cast.keyAdmin })).body.currentVersion, 1);
    refused(await dsm('POST', '/crypto/v1/keys', { bearer: auth.access_token, body: { name: 'dsm-made', obj_type: 'AES' } }), 409, /already exists/, 'duplicate');
    refused(await dsm('POST', '/crypto/v1/keys', { bearer: auth.access_token, body: { name: 'rsa', obj_type: 'RSA', key_size: 2048 } }), 400, /obj_type must be "AES"/, 'rsa');
    refused(await dsm('POST', '/crypto/v1/keys', { bearer: auth.access_token, body: { name: 'small', obj_type: 'AES', key_size: 128 } }), 400, /key_size must be 256/, 'aes-128');
    refused(await dsm('POST', '/crypto/v1/keys', { bearer: auth.access_token, body: { name: 'imp', obj_type: 'AES', value: b64(randomBytes(32)) } }), 400, /importing key material is not supported/, 'import');
    refused(await dsm('POST', '/crypto/v1/keys', { bearer: auth.access_token, body: { name: 'bad name!', obj_type: 'AES' } }), 400, /key name must be/, 'bad name');
    refused(await dsm('POST', '/crypto/v1/keys', { basic: apiKey, body: { name: 'by-app', obj_type: 'AES' } }), 403, /may not dsm\.key\.create/, 'app create');
    const auditorAuth = ok(await dsm('POST', '/sys/v1/session/auth', { basic: b64(`auditor:${cast.passwords.auditor}`) }), 'auditor login');
    tokens.push(auditorAuth.access_token);
    refused(await dsm('POST', '/crypto/v1/keys', { bearer: auditorAuth.access_token, body: { name: 'by-auditor', obj_type: 'AES' } }), 403, /may not dsm\.key\.create/, 'auditor create');
    // Readers see every object; an unknown kid is a 404 for them.
    const seen = ok(await dsm('GET', '/crypto/v1/keys', { bearer: auditorAuth.access_token }), 'auditor list');
    assert.ok(seen.some((o: any) => o.name === 'k3') && seen.some((o: any) => o.name === 'dsm-made'));
    refused(await dsm('GET', `/crypto/v1/keys/${randomUuid()}`, { bearer: auditorAuth.access_token }), 404, /^no security object /, 'unknown kid for a reader');
    // Users do no crypto.
    refused(await dsm('POST', '/crypto/v1/encrypt', { bearer: auth.access_token, body: { key: { name: 'dsm-made' }, alg: 'AES', mode: 'GCM', plain: b64('x') } }), 403, /may not dsm\.encrypt/, 'key admin encrypt');
  });

  it('grants: apps use and see only what they are granted; unknown and ungranted look the same', async () => {
    const stranger = b64(`stranger:${cast.strangerKey}`);
    assert.deepEqual(ok(await dsm('GET', '/crypto/v1/keys', { basic: stranger }), 'stranger list'), []);
    const unknown = randomUuid();
    for (const kid of [k1v1, unknown]) {
      refused(await dsm('GET', `/crypto/v1/keys/${kid}`, { basic: stranger }), 403, new RegExp(`^no grant on security object ${kid}$`), `stranger get ${kid}`);
      refused(await dsm('POST', `/crypto/v1/keys/${kid}/encrypt`, { basic: stranger, body: { alg: 'AES', mode: 'GCM', plain: b64('x') } }), 403, new RegExp(`^no encrypt grant on security object ${kid}$`), `stranger encrypt ${kid}`);
      refused(await dsm('POST', '/crypto/v1/decrypt', { basic: stranger, body: { key: { kid }, mode: 'CBC', iv: b64(randomBytes(16)), cipher: b64(randomBytes(16)) } }), 403, new RegExp(`^no decrypt grant on security object ${kid}$`), `stranger decrypt ${kid}`);
    }
    for (const name of ['k1', 'no-such-key']) {
      refused(await dsm('POST', '/crypto/v1/encrypt', { basic: stranger, body: { key: { name }, alg: 'AES', mode: 'GCM', plain: b64('x') } }), 403, new RegExp(`^no encrypt grant on key "${name}"$`), `stranger encrypt ${name}`);
      refused(await dsm('POST', '/crypto/v1/keys/info', { basic: stranger, body: { name } }), 403, new RegExp(`^no grant on security object named "${name}"$`), `stranger info ${name}`);
    }
    // app1 holds encrypt only on k2, nothing on k3.
    const k2 = ok(await dsm('POST', '/crypto/v1/encrypt', { basic: apiKey, body: { key: { name: 'k2' }, alg: 'AES', mode: 'GCM', plain: b64(plain('k2')) } }), 'encrypt k2');
    refused(await dsm('POST', '/crypto/v1/decrypt', { basic: apiKey, body: { key: { kid: k2.kid }, mode: 'GCM', cipher: k2.cipher, iv: k2.iv, tag: k2.tag } }), 403, /^no decrypt grant on security object /, 'decrypt k2');
    refused(await dsm('POST', '/crypto/v1/encrypt', { basic: apiKey, body: { key: { name: 'k3' }, alg: 'AES', mode: 'GCM', plain: b64('x') } }), 403, /^no encrypt grant on key "k3"$/, 'encrypt k3');
    // A grant revoked on the native API takes effect here.
    assert.equal((await api(url, 'DELETE', '/v1/apps/app1/grants/k2', { token: cast.keyAdmin })).status, 200);
    refused(await dsm('POST', '/crypto/v1/encrypt', { basic: apiKey, body: { key: { name: 'k2' }, alg: 'AES', mode: 'GCM', plain: b64('x') } }), 403, /^no encrypt grant on key "k2"$/, 'encrypt k2 after revoke');

    // A disabled key refuses encryption, still decrypts, and says so in its metadata.
    const before = ok(await dsm('POST', '/crypto/v1/encrypt', { basic: apiKey, body: { key: { name: 'k1' }, alg: 'AES', mode: 'GCM', plain: b64(plain('pre-disable')) } }), 'encrypt');
    assert.equal((await api(url, 'POST', '/v1/keys/k1/disable', { token: cast.keyAdmin, body: {} })).status, 200);
    refused(await dsm('POST', '/crypto/v1/encrypt', { basic: apiKey, body: { key: { name: 'k1' }, alg: 'AES', mode: 'GCM', plain: b64('x') } }), 409, /disabled/, 'encrypt with a disabled key');
    ok(await dsm('POST', '/crypto/v1/decrypt', { basic: apiKey, body: { key: { kid: before.kid }, mode: 'GCM', cipher: before.cipher, iv: before.iv, tag: before.tag } }), 'decrypt with a disabled key');
    const meta = ok(await dsm('GET', `/crypto/v1/keys/${before.kid}`, { basic: apiKey }), 'metadata');
    assert.equal(meta.enabled, false);
    assert.deepEqual(meta.key_ops, ['DECRYPT']);
    assert.equal((await api(url, 'POST', '/v1/keys/k1/enable', { token: cast.keyAdmin, body: {} })).status, 200);
  });

  it("keys changed through the Vault Transit API: a minimum encryption version holds here; a deleted key's kids stay dead when its name is reused", async () => {
    const vault = (method: string, path: string, body?: unknown) => api(url, method, path, { headers: { 'x-vault-token': cast.keyAdmin }, body });
    assert.equal((await api(url, 'POST', '/v1/keys', { token: cast.keyAdmin, body: { name: 'k4' } })).status, 200);
    assert.equal((await api(url, 'PUT', '/v1/apps/app1/grants/k4', { token: cast.keyAdmin, body: { operations: ['encrypt', 'decrypt'] } })).status, 200);
    const first = ok(await dsm('POST', '/crypto/v1/encrypt', { basic: apiKey, body: { key: { name: 'k4' }, alg: 'AES', mode: 'GCM', plain: b64(plain('k4v1')) } }), 'encrypt k4 v1');
    assert.equal((await api(url, 'POST', '/v1/keys/k4/rotate', { token: cast.keyAdmin, body: {} })).status, 200);
    const cfg = await vault('POST', '/v1/transit/keys/k4/config', { min_encryption_version: 2, deletion_allowed: true });
    assert.ok(cfg.status < 300, `vault config: ${cfg.status} ${cfg.text}`);
    refused(await dsm('POST', `/crypto/v1/keys/${first.kid}/encrypt`, { basic: apiKey, body: { alg: 'AES', mode: 'GCM', plain: b64('x') } }), 409, /below the minimum encryption version 2/, 'encrypt below the minimum');
    assert.deepEqual(ok(await dsm('GET', `/crypto/v1/keys/${first.kid}`, { basic: apiKey }), 'v1 metadata').key_ops, ['DECRYPT']);
    ok(await dsm('POST', '/crypto/v1/decrypt', { basic: apiKey, body: { key: { kid: first.kid }, mode: 'GCM', cipher: first.cipher, iv: first.iv, tag: first.tag } }), 'v1 still decrypts');

    const del = await vault('DELETE', '/v1/transit/keys/k4');
    assert.ok(del.status < 300, `vault delete: ${del.status} ${del.text}`);
    assert.equal((await api(url, 'POST', '/v1/keys', { token: cast.keyAdmin, body: { name: 'k4' } })).status, 200);
    assert.equal((await api(url, 'PUT', '/v1/apps/app1/grants/k4', { token: cast.keyAdmin, body: { operations: ['encrypt', 'decrypt'] } })).status, 200);
    refused(await dsm('POST', `/crypto/v1/keys/${first.kid}/encrypt`, { basic: apiKey, body: { alg: 'AES', mode: 'GCM', plain: b64('x') } }), 403, new RegExp(`^no encrypt grant on security object ${first.kid}$`), 'old kid, new key of the same name');
    refused(await dsm('GET', `/crypto/v1/keys/${first.kid}`, { basic: apiKey }), 403, /^no grant on security object /, 'old kid metadata, app');
    refused(await dsm('GET', `/crypto/v1/keys/${first.kid}`, { bearer: (await dsmLogin('keyadmin')) }), 404, /^no security object /, 'old kid metadata, reader');
    const fresh = ok(await dsm('POST', '/crypto/v1/encrypt', { basic: apiKey, body: { key: { name: 'k4' }, alg: 'AES', mode: 'GCM', plain: b64(plain('k4 again')) } }), 'encrypt the new k4');
    assert.notEqual(fresh.kid, first.kid);
  });

  it('session auth: wrong secrets, mismatched app ids, the id:secret form, user lock-out shared with /v1/auth/login', async () => {
    const ak = cast.appKey;
    const id = ak.slice(4, 20);
    const secret = ak.slice(21);
    const idForm = ok(await dsm('POST', '/sys/v1/session/auth', { basic: b64(`${id}:${secret}`), headers: { 'content-type': 'application/json' } }), 'id:secret form, empty body labelled JSON');
    tokens.push(idForm.access_token);
    ok(await dsm('GET', `/crypto/v1/keys/${k1v1}`, { basic: b64(`${id}:${secret}`) }), 'id:secret on a crypto route');
    ok(await dsm('GET', `/crypto/v1/keys/${k1v1}`, { basic: b64(`${id}:${ak}`) }), 'id:full key');
    const wrong = `${ak.slice(0, 21)}${MARKER}${'A'.repeat(43 - MARKER.length)}`;
    refused(await dsm('POST', '/sys/v1/session/auth', { basic: b64(`app1:${wrong}`) }), 401, /not valid/, 'wrong secret', [ak, secret]);
    refused(await dsm('GET', `/crypto/v1/keys/${k1v1}`, { basic: b64(`app1:${wrong}`) }), 401, /not valid/, 'wrong secret on a route', [ak, secret]);
    refused(await dsm('POST', '/sys/v1/session/auth', { basic: b64(`stranger:${ak}`) }), 401, /app-id does not match/, 'another app name', [ak, secret]);
    refused(await dsm('POST', '/sys/v1/session/auth', {}), 401, /Authorization: Basic/, 'no credentials');
    refused(await dsm('POST', '/sys/v1/session/auth', { headers: { authorization: `Basic ${MARKER}!!` } }), 401, /must be "Basic/, 'not base64');
    refused(await dsm('POST', '/sys/v1/session/auth', { basic: b64(`${MARKER}nocolon`) }), 401, /must be base64 of/, 'no colon');
    refused(await dsm('GET', '/crypto/v1/keys', { basic: b64(`keyadmin:${cast.passwords.keyadmin}`) }), 401, /users log in at POST \/sys\/v1\/session\/auth/, 'user Basic on a route', [cast.passwords.keyadmin!]);
    refused(await dsm('POST', '/sys/v1/session/terminate', { basic: apiKey }), 400, /only a session can be terminated/, 'terminate with Basic', [ak]);

    // Failed DSM logins lock the (name, source address) pair, for /v1/auth/login too.
    const pw = 'lockme-password-123';
    assert.equal((await api(url, 'POST', '/v1/users', { token: cast.admin, body: { name: 'lockme', password: pw, roles: ['auditor'] } })).status, 200);
    for (let i = 0; i < 5; i++) refused(await dsm('POST', '/sys/v1/session/auth', { basic: b64(`lockme:${MARKER}-wrong-${i}`) }), 401, /invalid name or password/, `bad password ${i}`);
    refused(await dsm('POST', '/sys/v1/session/auth', { basic: b64(`lockme:${pw}`) }), 429, /too many failed sign-ins/, 'locked', [pw]);
    assert.equal((await api(url, 'POST', '/v1/auth/login', { body: { name: 'lockme', password: pw } })).status, 429);
  });

  it('bad input on every route: precise plain-text errors, no secret echoed, and the server keeps serving', async () => {
    const enc = (body: unknown, path = '/crypto/v1/encrypt') => dsm('POST', path, { basic: apiKey, body });
    const k = { key: { name: 'k1' } };
    const iv16 = b64(randomBytes(16));
    const cases: [string, Promise<Answer>, number, RegExp][] = [
      ['bad base64 plain', enc({ ...k, alg: 'AES', mode: 'GCM', plain: `${MARKER}***` }), 400, /body\.plain: must be standard base64/],
      ['oversize plain', enc({ ...k, alg: 'AES', mode: 'GCM', plain: b64(Buffer.alloc(64 * 1024 + 3)) }), 400, /body\.plain: must encode at most 65536 bytes/],
      ['body over the server limit', enc({ ...k, alg: 'AES', mode: 'GCM', plain: b64(Buffer.alloc(1024 * 1024)) }), 413, /larger than the server accepts/],
      ['unknown mode', enc({ ...k, alg: 'AES', mode: 'ECB', plain: b64('x') }), 400, /mode must be "GCM" \(preferred\) or "CBC"/],
      ['no mode', enc({ ...k, alg: 'AES', plain: b64('x') }), 400, /body\.mode/],
      ['unknown alg', enc({ ...k, alg: 'RSA', mode: 'GCM', plain: b64('x') }), 400, /alg must be "AES"/],
      ['wrong CBC iv length', enc({ ...k, alg: 'AES', mode: 'CBC', iv: b64(randomBytes(12)), plain: b64('x') }), 400, /iv must be 16 bytes for CBC \(got 12\)/],
      ['caller iv for GCM', enc({ ...k, alg: 'AES', mode: 'GCM', iv: b64(randomBytes(12)), plain: b64('x') }), 400, /iv is chosen by the server for GCM/],
      ['bad tag_len', enc({ ...k, alg: 'AES', mode: 'GCM', tag_len: 64, plain: b64('x') }), 400, /tag_len must be one of 96, 104, 112, 120, 128/],
      ['ad with CBC', enc({ ...k, alg: 'AES', mode: 'CBC', ad: b64('x'), plain: b64('x') }), 400, /apply to GCM only/],
      ['no key', enc({ alg: 'AES', mode: 'GCM', plain: b64('x') }), 400, /key is required/],
      ['kid and name', enc({ key: { kid: k1v1, name: 'k1' }, alg: 'AES', mode: 'GCM', plain: b64('x') }), 400, /exactly one of kid or name/],
      ['bad kid', enc({ key: { kid: 'not-a-uuid' }, alg: 'AES', mode: 'GCM', plain: b64('x') }), 400, /body\.key\.kid: must be a UUID/],
      ['unknown field', enc({ ...k, alg: 'AES', mode: 'GCM', plain: b64('x'), color: 'blue' }), 400, /Unrecognized key: "color"/],
      ['key in path and body', enc({ ...k, alg: 'AES', mode: 'GCM', plain: b64('x') }, `/crypto/v1/keys/${k1v1}/encrypt`), 400, /in the path or in the body, not both/],
      ['bad kid in path', enc({ alg: 'AES', mode: 'GCM', plain: b64('x') }, `/crypto/v1/keys/${MARKER}/encrypt`), 400, /params\.kid: must be a security object kid/],
      ['bad JSON', enc(`{"alg": "AES", ${MARKER}`), 400, /not valid JSON/],
      ['JSON array', enc([1, 2]), 400, /body/],
      ['GCM decrypt without tag', enc({ ...k, mode: 'GCM', iv: b64(randomBytes(12)), cipher: b64('abc') }, '/crypto/v1/decrypt'), 400, /tag is required for GCM/],
      ['GCM decrypt with a 16-byte iv', enc({ ...k, mode: 'GCM', iv: iv16, cipher: b64('abc'), tag: b64(randomBytes(16)) }, '/crypto/v1/decrypt'), 400, /iv must be 12 bytes for GCM \(got 16\)/],
      ['GCM decrypt with a short tag', enc({ ...k, mode: 'GCM', iv: b64(randomBytes(12)), cipher: b64('abc'), tag: b64(randomBytes(8)) }, '/crypto/v1/decrypt'), 400, /tag must be 12 to 16 bytes/],
      ['decrypt without iv', enc({ ...k, mode: 'CBC', cipher: b64(randomBytes(16)) }, '/crypto/v1/decrypt'), 400, /body\.iv/],
      ['CBC cipher not whole blocks', enc({ ...k, mode: 'CBC', iv: iv16, cipher: b64(randomBytes(20)) }, '/crypto/v1/decrypt'), 400, /multiple of 16 bytes/],
      ['CBC garbage', enc({ ...k, mode: 'CBC', iv: iv16, cipher: b64(randomBytes(64)) }, '/crypto/v1/decrypt'), 400, /^decryption failed$/],
      ['view=value', dsm('GET', `/crypto/v1/keys/${k1v1}?view=value`, { basic: apiKey }), 400, /not exportable/],
      ['bad info body', dsm('POST', '/crypto/v1/keys/info', { basic: apiKey, body: { kid: 7 } }), 400, /body\.kid/],
      ['bad list limit', dsm('GET', '/crypto/v1/keys?limit=0', { basic: apiKey }), 400, /querystring\.limit/],
      ['unknown crypto route', dsm('GET', '/crypto/v1/nothing/here', { basic: apiKey }), 404, /^no route GET \/crypto\/v1\/nothing/],
      ['unknown sys route', dsm('POST', '/sys/v1/session/refresh', { basic: apiKey }), 404, /^no route POST \/sys\/v1\/session\/refresh/],
      ['wrong method', dsm('DELETE', `/crypto/v1/keys/${k1v1}`, { basic: apiKey }), 404, /^no route DELETE/],
      ['badly encoded URL', dsm('GET', '/crypto/v1/keys/%E0%A4%A', { basic: apiKey }), 400, /not validly encoded/],
      ['garbage bearer', dsm('GET', '/crypto/v1/keys', { bearer: MARKER }), 401, /not a keyhaven token/],
      ['no credentials', dsm('GET', '/crypto/v1/keys'), 401, /authentication required/],
    ];
    for (const [what, p, status, message] of cases) refused(await p, status, message, what, [cast.appKey]);
    // Still serving, natively and here.
    assert.equal((await api(url, 'GET', '/v1/sys/health')).status, 200);
    ok(await dsm('POST', '/crypto/v1/encrypt', { basic: apiKey, body: { ...k, alg: 'AES', mode: 'GCM', plain: b64(plain('still')) } }), 'still serving');
    assert.equal(srv.child.exitCode, null);
  });

  it("rotating an app's API key ends the sessions opened with it", async () => {
    const made = await api(url, 'POST', '/v1/apps', { token: cast.admin, body: { name: 'rotapp' } });
    assert.equal(made.status, 200, made.text);
    tokens.push(made.body.apiKey);
    assert.equal((await api(url, 'PUT', '/v1/apps/rotapp/grants/k1', { token: cast.keyAdmin, body: { operations: ['encrypt'] } })).status, 200);
    const session = ok(await dsm('POST', '/sys/v1/session/auth', { basic: b64(`rotapp:${made.body.apiKey}`) }), 'session auth').access_token as string;
    tokens.push(session);
    const enc = () => dsm('POST', '/crypto/v1/encrypt', { bearer: session, body: { key: { name: 'k1' }, alg: 'AES', mode: 'GCM', plain: b64(plain('rot')) } });
    ok(await enc(), 'encrypt with the session');
    // rotapp holds a grant: a key-admin approves the new key, the requester collects it.
    const rotated = { body: { apiKey: await rotateAppKeyApproved(url, cast.admin, cast.keyAdmin, 'rotapp') } };
    tokens.push(rotated.body.apiKey);
    refused(await enc(), 401, /revoked/, 'session after the key rotation', [session]);
    refused(await dsm('POST', '/sys/v1/session/auth', { basic: b64(`rotapp:${made.body.apiKey}`) }), 401, /not valid|revoked/, 'the old key');
    // The new key opens a new session that works.
    const fresh = ok(await dsm('POST', '/sys/v1/session/auth', { basic: b64(`rotapp:${rotated.body.apiKey}`) }), 'session with the new key').access_token as string;
    tokens.push(fresh);
    ok(await dsm('POST', '/crypto/v1/encrypt', { bearer: fresh, body: { key: { name: 'k1' }, alg: 'AES', mode: 'GCM', plain: b64(plain('rot2')) } }), 'encrypt with the new session');
  });

  it('unknown kids: refused alike, and they do not each re-read the key table', async () => {
    // Over HTTP: a stream of unknown kids is refused every time and the server keeps serving.
    for (let i = 0; i < 50; i++) {
      const kid = `${randomBytes(4).toString('hex')}-0000-8000-8000-${randomBytes(6).toString('hex')}`;
      refused(await dsm('POST', `/crypto/v1/keys/${kid}/encrypt`, { basic: apiKey, body: { alg: 'AES', mode: 'GCM', plain: b64('x') } }), 403, /no encrypt grant/, `unknown kid ${i}`);
    }
    ok(await dsm('GET', `/crypto/v1/keys/${k1v1}`, { basic: apiKey }), 'a known kid still resolves');

    // The index itself, on a real store with a hand-moved clock: reads are counted at the store.
    const dir = tempDir('kh-kids-');
    const store = await openSqliteStore({ path: join(dir, 'kids.db'), create: true });
    try {
      let reads = 0;
      const counted = { listKeys: () => ((reads += 1), store.listKeys()) };
      let clock = 1_000_000;
      const index = createKidIndex(counted, { rebuildIntervalMs: 1000, now: () => clock });
      const at = new Date().toISOString();
      const row = (name: string) => ({
        id: randomBytes(8).toString('hex'), name, state: 'enabled' as const, current_version: 2, created_at: at, updated_at: at,
        rotation_period_s: null, next_rotation_at: null, min_decryption_version: 1, destroy_at: null, min_encryption_version: 0, deletion_allowed: 0,
      });
      const a = row('alpha');
      await store.insertKey(a);
      assert.deepEqual(await index.resolve('s1', dsmKid('s1', a.id, 2)), { keyName: 'alpha', keyId: a.id, version: 2 });
      assert.equal(reads, 1);
      for (let i = 0; i < 50; i++) {
        clock += 10; // 50 requests within half an interval
        assert.equal(await index.resolve('s1', dsmKid('s1', randomBytes(8).toString('hex'), 1)), undefined);
      }
      assert.equal(reads, 1, '50 unknown kids within one interval: no re-read');
      // A key made meanwhile (on another server) resolves once the interval has passed.
      const b = row('beta');
      await store.insertKey(b);
      assert.equal(await index.resolve('s1', dsmKid('s1', b.id, 1)), undefined, 'inside the interval the last read stands');
      clock += 1000;
      assert.deepEqual(await index.resolve('s1', dsmKid('s1', b.id, 1)), { keyName: 'beta', keyId: b.id, version: 1 });
      assert.equal(reads, 2);
      assert.equal(index.rebuilds(), reads);
      // A kid this server hands out resolves at once, without a read.
      const c = row('gamma');
      await store.insertKey(c);
      index.learn('s1', { id: c.id, name: 'gamma', currentVersion: 2 });
      assert.deepEqual(await index.resolve('s1', dsmKid('s1', c.id, 2)), { keyName: 'gamma', keyId: c.id, version: 2 });
      assert.equal(reads, 2);
    } finally {
      await store.close();
      removeDir(dir);
    }
  });

  it('over-long headers on a DSM path: 431 in plain text', async () => {
    const u = new URL(url);
    const text = await new Promise<string>((resolve, reject) => {
      const sock = connect(Number(u.port), u.hostname, () => sock.write(`POST /crypto/v1/encrypt HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`));
      const chunks: Buffer[] = [];
      sock.on('data', (d: Buffer) => chunks.push(d));
      sock.on('error', reject);
      sock.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
    });
    assert.match(text, /^HTTP\/1\.1 431 /);
    assert.match(text, /\r\ncontent-type: text\/plain/i);
    assert.match(text, /\r\n\r\nrequest headers are larger than the server accepts$/);
    ok(await dsm('GET', '/crypto/v1/keys', { basic: apiKey }), 'the server keeps serving');
  });

  it('hidden from the OpenAPI document', async () => {
    const doc = await api(url, 'GET', '/v1/openapi.json');
    assert.equal(doc.status, 200);
    assert.ok(!doc.text.includes('/crypto/v1') && !doc.text.includes('/sys/v1'), 'no DSM route in /v1/openapi.json');
  });

  it('every call is audited with its DSM operation, actor, key and version', async () => {
    const rows = await auditRecords(url, cast.auditor);
    const dsmRows = rows.filter((r) => String(r.operation).startsWith('dsm.'));
    const ops = new Set(dsmRows.map((r) => r.operation));
    for (const op of ['dsm.session.auth', 'dsm.session.terminate', 'dsm.key.list', 'dsm.key.read', 'dsm.key.create', 'dsm.key.rekey', 'dsm.encrypt', 'dsm.decrypt']) assert.ok(ops.has(op), `audited: ${op}`);
    const encs = dsmRows.filter((r) => r.operation === 'dsm.encrypt' && r.result === 'ok' && r.actor === 'app:app1' && r.key_name === 'k1');
    assert.ok(encs.length >= 5, `${encs.length} encrypt records`);
    const detailsOf = (r: any) => (typeof r.details === 'string' ? JSON.parse(r.details) : r.details);
    assert.ok(encs.some((r) => r.key_version === 2 && detailsOf(r).mode === 'GCM'));
    assert.ok(encs.some((r) => r.key_version === 1 && detailsOf(r).mode === 'CBC' && detailsOf(r).kid === k1v1));
    assert.ok(dsmRows.some((r) => r.operation === 'dsm.encrypt' && r.actor === 'app:stranger' && r.result === 'permission_denied'));
    assert.ok(dsmRows.some((r) => r.operation === 'dsm.session.auth' && r.result === 'unauthenticated' && detailsOf(r).user === 'lockme'));
    assert.ok(dsmRows.some((r) => r.operation === 'dsm.session.auth' && r.result === 'too_many_attempts'));
    assert.ok(dsmRows.some((r) => r.operation === 'dsm.session.auth' && r.result === 'unauthenticated' && detailsOf(r).app === 'stranger'));
    assert.ok(dsmRows.some((r) => r.operation === 'dsm.key.rekey' && r.actor === 'user:keyadmin' && r.key_name === 'k1' && r.key_version === 2));
    assert.ok(rows.some((r) => r.operation === 'http.unknown' && detailsOf(r).status === 404 && String(detailsOf(r).route).startsWith('GET /crypto/v1/nothing')));
  });

  it('no plaintext, API key, password or session token in server output, audit or metrics', async () => {
    const places = new Map<string, Buffer>();
    places.set('server output', Buffer.from(srv.output()));
    places.set('audit', Buffer.from(JSON.stringify(await auditRecords(url, cast.auditor))));
    places.set('metrics', Buffer.from((await api(url, 'GET', '/metrics')).text));
    const secrets = new Map<string, Record<string, Buffer>>();
    plaintexts.forEach((p, i) => secrets.set(`plaintext ${i}`, byteForms(p)));
    secrets.set('API key', byteForms(Buffer.from(cast.appKey)));
    secrets.set('API key secret part', byteForms(Buffer.from(cast.appKey.slice(21))));
    secrets.set('DSM API key', byteForms(Buffer.from(apiKey)));
    for (const [n, pw] of Object.entries(cast.passwords)) secrets.set(`password of ${n}`, byteForms(Buffer.from(pw)));
    secrets.set('password of lockme', byteForms(Buffer.from('lockme-password-123')));
    tokens.forEach((t, i) => secrets.set(`session ${i}`, byteForms(Buffer.from(t.slice(21)))));
    assert.ok(plaintexts.length > 8 && tokens.length >= 4, 'the scan has things to look for');
    assert.match(places.get('server output')!.toString(), /keyhaven server listening/);
    const found: string[] = [];
    for (const [where, hay] of places) for (const [name, forms] of secrets) for (const [form, needle] of Object.entries(forms)) if (hay.includes(needle)) found.push(`${where}: ${name} (${form})`);
    assert.deepEqual(found, []);
  });
});

function randomUuid(): string {
  const x = randomBytes(16).toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

