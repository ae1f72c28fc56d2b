import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import { connect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { after, before, describe, it } from 'node:test';
import vault from 'node-vault';
import { Agent, request as undiciRequest } from 'undici';
import { removeDir } from './helpers.js';
import { HAVE_OPENSSL, makePki } from './pki.js';
import { requireDependency } from './require.js';
import { api, auditRecords, setupCast, startServerProcess, type ApiResult, type Cast, type ServerProcess } from './server-helpers.js';

// The Vault / OpenBao Transit compatibility API against a real `keyhaven
// server` process, driven by the real npm client node-vault wherever it has
// a call for the endpoint, and by fetch for the rest.

type Client = ReturnType<typeof vault>;

const b64 = (s: string | Buffer) => Buffer.from(s).toString('base64');
const unb64 = (s: string) => Buffer.from(s, 'base64').toString();

/** Runs a node-vault call that must fail; returns its HTTP status and body. */
async function vaultFails(p: Promise<unknown>): Promise<{ status: number; body: any; message: string }> {
  try {
    await p;
  } catch (e) {
    const err = e as { response?: { statusCode: number; body: any }; message: string };
    assert.ok(err.response, `expected an HTTP error, got ${err.message}`);
    return { status: err.response.statusCode, body: err.response.body, message: err.message };
  }
  assert.fail('the call succeeded');
}

/** A raw HTTP request (any method, even ones fetch refuses), with the Vault token header. */
function raw(url: string, method: string, path: string, token: string | undefined, body?: string, headers: Record<string, string> = {}): Promise<{ status: number; text: string; body: any }> {
  return new Promise((resolve, reject) => {
    const u = new URL(url + path);
    const req = httpRequest({ host: u.hostname, port: u.port, path: u.pathname + u.search, method, headers: { ...(token ? { 'x-vault-token': token } : {}), ...headers } }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => {
        let parsed: unknown = text;
        try {
          parsed = JSON.parse(text);
        } catch {
          // not JSON
        }
        resolve({ status: res.statusCode ?? 0, text, body: parsed });
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

/**
 * Writes a request by hand on a socket, in the given pieces (a path fetch
 * and node's client would normalise, a head split over several packets),
 * and reads the answer until the server closes.
 */
function rawSocket(open: () => Socket, pieces: string[]): Promise<{ status: number; text: string; body: any }> {
  return new Promise((resolve, reject) => {
    const sock = open();
    sock.setNoDelay(true);
    const chunks: Buffer[] = [];
    sock.on('data', (d: Buffer) => chunks.push(d));
    sock.on('error', reject);
    sock.on('close', () => {
      const all = Buffer.concat(chunks).toString('latin1');
      const at = all.indexOf('\r\n\r\n');
      const text = at < 0 ? '' : all.slice(at + 4);
      let body: unknown = text;
      try {
        body = JSON.parse(text);
      } catch {
        // not JSON
      }
      resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(all)?.[1] ?? 0), text, body });
    });
    // Pieces go out one event-loop turn apart; if TCP joins them anyway, the request is still a valid one.
    const send = (i: number) => {
      if (i >= pieces.length) return;
      sock.write(pieces[i]!, () => setTimeout(() => send(i + 1), 20));
    };
    sock.once('encrypted' in sock ? 'secureConnect' : 'connect', () => send(0));
  });
}

/** Asserts a Vault-shaped error: the status and {"errors": [...]} whose text matches. */
function vaultError(r: { status: number; body: any; text?: string }, status: number, match?: RegExp, what = ''): void {
  assert.equal(r.status, status, `${what}: ${r.text ?? JSON.stringify(r.body)}`);
  assert.ok(r.body && Array.isArray(r.body.errors), `${what}: not a Vault error: ${r.text ?? JSON.stringify(r.body)}`);
  assert.deepEqual(Object.keys(r.body), ['errors'], what);
  if (match) assert.match(r.body.errors.join(' | '), match, what);
}

/** The Vault response envelope's fields. */
function envelopeOf(body: any): void {
  for (const f of ['request_id', 'lease_id', 'renewable', 'lease_duration', 'data', 'wrap_info', 'warnings', 'auth']) assert.ok(f in body, `envelope lacks ${f}: ${JSON.stringify(body)}`);
  assert.equal(typeof body.request_id, 'string');
  assert.equal(body.lease_id, '');
  assert.equal(body.renewable, false);
  assert.equal(body.wrap_info, null);
}

describe('Vault Transit compatibility API', () => {
  let srv: ServerProcess;
  let url: string;
  let cast: Cast;
  let admin: Client;
  let app: Client;
  let stranger: Client;
  let auditor: Client;
  // Plaintexts and tokens that must never reach logs or audit records.
  const planted: string[] = [];
  const secret = (label: string) => {
    const s = `vault-secret-${label}-${Math.random().toString(36).slice(2)}`;
    planted.push(s);
    return s;
  };

  const grant = async (appName: string, key: string, operations: string[]) => {
    const r = await api(url, 'PUT', `/v1/apps/${appName}/grants/${key}`, { token: cast.keyAdmin, body: { operations } });
    assert.equal(r.status, 200, r.text);
  };
  const fetchVault = (method: string, path: string, token: string | undefined, body?: unknown, headers: Record<string, string> = {}): Promise<ApiResult> =>
    api(url, method, path, { body, headers: { ...(token ? { 'x-vault-token': token } : {}), ...headers } });

  before(async () => {
    srv = await startServerProcess();
    url = srv.url;
    cast = await setupCast(url);
    const client = (token: string, extra: Record<string, unknown> = {}) => vault({ endpoint: url, token, ...extra });
    admin = client(cast.keyAdmin);
    app = client(cast.appKey);
    stranger = client(cast.strangerKey);
    auditor = client(cast.auditor);
    planted.push(cast.appKey, cast.strangerKey, cast.keyAdmin, cast.admin, cast.auditor);
  });

  after(async () => {
    await srv?.stop();
    if (srv) removeDir(srv.dir);
  });

  it('key lifecycle through node-vault: create, read, list (LIST and ?list), config, rotate, trim, delete', async () => {
    const created = await admin.transitCreateKey({ name: 'vk' });
    envelopeOf(created);
    assert.equal(created.data.name, 'vk');
    assert.equal(created.data.type, 'aes256-gcm96');
    assert.equal(created.data.latest_version, 1);
    assert.equal(created.data.deletion_allowed, false);
    assert.equal(created.data.min_encryption_version, 0);
    assert.equal(created.data.min_decryption_version, 1);
    assert.deepEqual(Object.keys(created.data.keys), ['1']);
    assert.equal(created.warnings, null);
    // Vault upserts: a second create answers the key with a warning.
    const again = await admin.transitCreateKey({ name: 'vk' });
    assert.deepEqual(again.warnings, ['key vk already existed']);
    assert.equal(again.data.latest_version, 1);

    // The same key in the native API: one name space.
    const native = await api(url, 'GET', '/v1/keys/vk', { token: cast.keyAdmin });
    assert.equal(native.status, 200);
    assert.equal(native.body.currentVersion, 1);

    const listed = await admin.transitListKeys();
    assert.deepEqual(listed.data.keys, ['k1', 'vk']);
    const viaQuery = await vault({ endpoint: url, token: cast.auditor, noCustomHTTPVerbs: true }).transitListKeys();
    assert.deepEqual(viaQuery.data.keys, ['k1', 'vk']);
    assert.deepEqual((await auditor.transitListKeys()).data.keys, ['k1', 'vk'], 'an auditor lists');
    assert.deepEqual((await fetchVault('GET', '/v1/transit/keys?list=true', cast.keyAdmin)).body.data.keys, ['k1', 'vk']);
    assert.equal((await admin.transitReadKey({ name: 'vk' })).data.name, 'vk');

    // Config: Vault's checks, then the values show in Vault's and the native view.
    vaultError(await fetchVault('POST', '/v1/transit/keys/vk/config', cast.keyAdmin, { min_decryption_version: 2 }), 400, /cannot set min decryption version of 2, latest key version is 1/);
    vaultError(await fetchVault('POST', '/v1/transit/keys/vk/config', cast.keyAdmin, { auto_rotate_period: '30m' }), 400, /at least an hour/);
    vaultError(await fetchVault('POST', '/v1/transit/keys/vk/config', cast.keyAdmin, { min_encryption_version: -1 }), 400, /cannot be negative/);
    vaultError(await fetchVault('POST', '/v1/transit/keys/nokey/config', cast.keyAdmin, { deletion_allowed: true }), 400, /no existing key named nokey/);
    const cfg = await admin.write('transit/keys/vk/config', { auto_rotate_period: '24h', deletion_allowed: 'true' });
    assert.equal(cfg.data.auto_rotate_period, 86400);
    assert.equal(cfg.data.deletion_allowed, true);
    assert.equal((await api(url, 'GET', '/v1/keys/vk', { token: cast.keyAdmin })).body.rotationPeriod, '1d');
    const off = await admin.write('transit/keys/vk/config', { auto_rotate_period: 0 });
    assert.equal(off.data.auto_rotate_period, 0);

    for (let v = 2; v <= 4; v++) assert.equal((await admin.write('transit/keys/vk/rotate', {})).data.latest_version, v);
    // Trim needs both minimums set and may not pass either.
    vaultError(await fetchVault('POST', '/v1/transit/keys/vk/trim', cast.keyAdmin, { min_available_version: 2 }), 400, /minimum encryption version before trimming/);
    vaultError(await fetchVault('POST', '/v1/transit/keys/vk/trim', cast.keyAdmin, {}), 400, /missing min_available_version/);
    await admin.write('transit/keys/vk/config', { min_decryption_version: 3, min_encryption_version: 3 });
    vaultError(await fetchVault('POST', '/v1/transit/keys/vk/config', cast.keyAdmin, { min_encryption_version: 2 }), 400, /minimum encryption version \(2\) must be 0 or at least the minimum decryption version \(3\)/);
    vaultError(await fetchVault('POST', '/v1/transit/keys/vk/trim', cast.keyAdmin, { min_available_version: 4 }), 400, /cannot be above the minimum/);
    const trimmed = await admin.write('transit/keys/vk/trim', { min_available_version: 3 });
    assert.equal(trimmed.data.min_available_version, 3);
    assert.deepEqual(Object.keys(trimmed.data.keys), ['3', '4']);
    const versions = (await api(url, 'GET', '/v1/keys/vk', { token: cast.keyAdmin })).body.versions;
    assert.deepEqual(versions.map((v: any) => v.state), ['destroyed', 'destroyed', 'active', 'active']);
    vaultError(await fetchVault('POST', '/v1/transit/keys/vk/trim', cast.keyAdmin, { min_available_version: 2 }), 400, /cannot go down/);
    vaultError(await fetchVault('POST', '/v1/transit/keys/vk/config', cast.keyAdmin, { min_decryption_version: 1 }), 400, /trimmed versions/);

    // Delete: refused until allowed; then the key and its name are gone.
    await admin.write('transit/keys/vk/config', { deletion_allowed: false });
    const refused = await vaultFails(admin.transitDeleteKey({ name: 'vk' }));
    vaultError(refused, 400, /error deleting policy vk: deletion is not allowed for this policy/);
    await admin.write('transit/keys/vk/config', { deletion_allowed: true });
    const del = await raw(url, 'DELETE', '/v1/transit/keys/vk', cast.keyAdmin);
    assert.equal(del.status, 204, del.text);
    assert.equal(del.text, '');
    const gone = await fetchVault('GET', '/v1/transit/keys/vk', cast.keyAdmin);
    assert.equal(gone.status, 404);
    assert.deepEqual(gone.body, { errors: [] });
    assert.equal((await api(url, 'GET', '/v1/keys/vk', { token: cast.keyAdmin })).status, 404);
    vaultError(await fetchVault('DELETE', '/v1/transit/keys/vk', cast.keyAdmin), 400, /could not delete key; not found/);
    assert.deepEqual((await admin.transitListKeys()).data.keys, ['k1']);
    // The name is free again: a fresh key at version 1.
    assert.equal((await admin.transitCreateKey({ name: 'vk' })).data.latest_version, 1);
  });

  it('encrypt, decrypt, rewrap and datakey through node-vault; the same ciphertext bytes as the native API', async () => {
    const pt = secret('single');
    const enc = await app.encryptData({ name: 'k1', plaintext: b64(pt) });
    envelopeOf(enc);
    assert.match(enc.data.ciphertext, /^vault:v1:[A-Za-z0-9+/]+=*$/);
    assert.equal(enc.data.key_version, 1);
    const dec = await app.decryptData({ name: 'k1', ciphertext: enc.data.ciphertext });
    assert.equal(unb64(dec.data.plaintext), pt);
    assert.deepEqual(Object.keys(dec.data), ['plaintext']);

    // Interoperable with the native API: vault:vN: and kh:vN: carry the same blob.
    const asNative = enc.data.ciphertext.replace(/^vault:/, 'kh:');
    const nat = await api(url, 'POST', '/v1/keys/k1/decrypt', { token: cast.appKey, body: { ciphertext: asNative } });
    assert.equal(nat.status, 200, nat.text);
    assert.equal(unb64(nat.body.plaintext), pt);
    const nativeEnc = await api(url, 'POST', '/v1/keys/k1/encrypt', { token: cast.appKey, body: { plaintext: b64(pt), context: b64('ad-1') } });
    const fromNative = await app.decryptData({ name: 'k1', ciphertext: nativeEnc.body.ciphertext.replace(/^kh:/, 'vault:'), associated_data: b64('ad-1') });
    assert.equal(unb64(fromNative.data.plaintext), pt, 'native context = Vault associated_data');

    // Rotate, then rewrap moves the ciphertext to the new version.
    await admin.write('transit/keys/k1/rotate', {});
    const rw = await app.rewrapData({ name: 'k1', ciphertext: enc.data.ciphertext });
    assert.match(rw.data.ciphertext, /^vault:v2:/);
    assert.equal(rw.data.key_version, 2);
    assert.equal(unb64((await app.decryptData({ name: 'k1', ciphertext: rw.data.ciphertext })).data.plaintext), pt);
    assert.equal(unb64((await app.decryptData({ name: 'k1', ciphertext: enc.data.ciphertext })).data.plaintext), pt, 'the old version still decrypts');

    // Data keys: plaintext and wrapped, 128/256/512 bits.
    for (const bits of [128, 256, 512]) {
      const dk = await app.write('transit/datakey/plaintext/k1', { bits });
      assert.equal(Buffer.from(dk.data.plaintext, 'base64').length, bits / 8);
      assert.equal(dk.data.key_version, 2);
      const opened = await app.decryptData({ name: 'k1', ciphertext: dk.data.ciphertext });
      assert.equal(opened.data.plaintext, dk.data.plaintext);
    }
    const wrapped = await app.write('transit/datakey/wrapped/k1', {});
    assert.equal(wrapped.data.plaintext, undefined);
    assert.equal(Buffer.from((await app.decryptData({ name: 'k1', ciphertext: wrapped.data.ciphertext })).data.plaintext, 'base64').length, 32);
    vaultError(await fetchVault('POST', '/v1/transit/datakey/plaintext/k1', cast.appKey, { bits: 100 }), 400, /invalid bit length/);
    vaultError(await fetchVault('POST', '/v1/transit/datakey/raw/k1', cast.appKey, {}), 400, /must be 'plaintext' or 'wrapped'/);
  });

  it('associated_data and context are bound; a wrong or missing one does not decrypt', async () => {
    const pt = b64(secret('aad'));
    const ad = b64('tenant-7');
    const ctx = b64('object-42');
    const withAd = (await app.encryptData({ name: 'k1', plaintext: pt, associated_data: ad })).data.ciphertext;
    const withCtx = (await app.encryptData({ name: 'k1', plaintext: pt, context: ctx })).data.ciphertext;
    const withBoth = (await app.encryptData({ name: 'k1', plaintext: pt, context: ctx, associated_data: ad })).data.ciphertext;
    assert.equal((await app.decryptData({ name: 'k1', ciphertext: withAd, associated_data: ad })).data.plaintext, pt);
    assert.equal((await app.decryptData({ name: 'k1', ciphertext: withCtx, context: ctx })).data.plaintext, pt);
    assert.equal((await app.decryptData({ name: 'k1', ciphertext: withBoth, context: ctx, associated_data: ad })).data.plaintext, pt);
    const wrong: [string, Record<string, string>][] = [
      [withAd, {}],
      [withAd, { associated_data: b64('tenant-8') }],
      [withAd, { context: ad }],
      [withCtx, {}],
      [withCtx, { associated_data: ctx }],
      [withCtx, { context: b64('object-43') }],
      [withBoth, { context: ctx }],
      [withBoth, { associated_data: ad }],
      [withBoth, { context: ad, associated_data: ctx }],
    ];
    for (const [ciphertext, extra] of wrong) {
      const r = await vaultFails(app.decryptData({ name: 'k1', ciphertext, ...extra }));
      vaultError(r, 400, undefined, JSON.stringify(extra));
    }
    // Rewrap keeps what is bound.
    const rw = await app.rewrapData({ name: 'k1', ciphertext: withBoth, context: ctx, associated_data: ad });
    assert.equal((await app.decryptData({ name: 'k1', ciphertext: rw.data.ciphertext, context: ctx, associated_data: ad })).data.plaintext, pt);
    const dk = await app.write('transit/datakey/plaintext/k1', { context: ctx });
    assert.equal((await app.decryptData({ name: 'k1', ciphertext: dk.data.ciphertext, context: ctx })).data.plaintext, dk.data.plaintext);
    vaultError(await fetchVault('POST', '/v1/transit/decrypt/k1', cast.appKey, { ciphertext: dk.data.ciphertext }), 400);
    vaultError(await fetchVault('POST', '/v1/transit/encrypt/k1', cast.appKey, { plaintext: pt, associated_data: 'not base64!' }), 400, /failed to base64-decode associated_data/);
  });

  it('ciphertext format: the label must match the header, the key must be the route\'s', async () => {
    const ct = (await app.encryptData({ name: 'k1', plaintext: b64('x') })).data.ciphertext as string;
    const version = Number(/^vault:v(\d+):/.exec(ct)![1]);
    const relabelled = ct.replace(/^vault:v\d+:/, `vault:v${version + 1}:`);
    vaultError(await fetchVault('POST', '/v1/transit/decrypt/k1', cast.appKey, { ciphertext: relabelled }), 400, /version label does not match/);
    vaultError(await fetchVault('POST', '/v1/transit/decrypt/k1', cast.appKey, { ciphertext: ct.replace(/^vault:/, 'kh:') }), 400, /no prefix/);
    vaultError(await fetchVault('POST', '/v1/transit/decrypt/k1', cast.appKey, { ciphertext: 'vault:vX:abc' }), 400, /invalid ciphertext/);
    vaultError(await fetchVault('POST', '/v1/transit/decrypt/k1', cast.appKey, { ciphertext: 'vault:v1:AAAA' }), 400);
    // Flipping a byte of the blob fails authentication.
    const blob = Buffer.from(ct.slice(ct.lastIndexOf(':') + 1), 'base64');
    blob[blob.length - 1]! ^= 1;
    vaultError(await fetchVault('POST', '/v1/transit/decrypt/k1', cast.appKey, { ciphertext: `vault:v${version}:${blob.toString('base64')}` }), 400);
    // A ciphertext of another key, sent to k1.
    await admin.transitCreateKey({ name: 'other' });
    await grant('app1', 'other', ['encrypt', 'decrypt']);
    const otherCt = (await app.encryptData({ name: 'other', plaintext: b64('x') })).data.ciphertext;
    vaultError(await fetchVault('POST', '/v1/transit/decrypt/k1', cast.appKey, { ciphertext: otherCt }), 400, /different key/);
  });

  it('min_encryption_version, min_decryption_version and key_version', async () => {
    await admin.transitCreateKey({ name: 'mv' });
    await grant('app1', 'mv', ['encrypt', 'decrypt', 'rewrap', 'datakey']);
    const v1 = (await app.encryptData({ name: 'mv', plaintext: b64('one') })).data.ciphertext;
    await admin.write('transit/keys/mv/rotate', {});
    await admin.write('transit/keys/mv/rotate', {});
    // key_version picks an older version while min_encryption_version allows it.
    const pinned = await app.encryptData({ name: 'mv', plaintext: b64('old'), key_version: 1 });
    assert.match(pinned.data.ciphertext, /^vault:v1:/);
    assert.equal(pinned.data.key_version, 1);
    vaultError(await fetchVault('POST', '/v1/transit/encrypt/mv', cast.appKey, { plaintext: b64('x'), key_version: 4 }), 400, /higher than the latest key version/);
    vaultError(await fetchVault('POST', '/v1/transit/encrypt/mv', cast.appKey, { plaintext: b64('x'), key_version: -1 }), 400, /negative/);
    await admin.write('transit/keys/mv/config', { min_encryption_version: 2 });
    vaultError(await fetchVault('POST', '/v1/transit/encrypt/mv', cast.appKey, { plaintext: b64('x'), key_version: 1 }), 400, /less than the minimum encryption key version/);
    vaultError(await fetchVault('POST', '/v1/transit/datakey/wrapped/mv', cast.appKey, { key_version: 1 }), 400, /less than the minimum encryption key version/);
    vaultError(await fetchVault('POST', '/v1/transit/rewrap/mv', cast.appKey, { ciphertext: v1, key_version: 1 }), 400, /less than the minimum encryption key version/);
    assert.match((await app.encryptData({ name: 'mv', plaintext: b64('x'), key_version: '2' })).data.ciphertext, /^vault:v2:/, 'a numeric string is an int, as in Vault');
    assert.match((await app.encryptData({ name: 'mv', plaintext: b64('x') })).data.ciphertext, /^vault:v3:/, 'no key_version: the latest');
    assert.match((await app.rewrapData({ name: 'mv', ciphertext: v1, key_version: 2 })).data.ciphertext, /^vault:v2:/);
    // min_decryption_version retires v1.
    await admin.write('transit/keys/mv/config', { min_decryption_version: 2 });
    vaultError(await fetchVault('POST', '/v1/transit/decrypt/mv', cast.appKey, { ciphertext: v1 }), 400, /retired|minimum decryption/);
    const read = await app.transitReadKey({ name: 'mv' });
    assert.equal(read.data.min_encryption_version, 2);
    assert.equal(read.data.min_decryption_version, 2);
    assert.equal(read.data.latest_version, 3);
  });

  it('batch_input: per-item results with references, Vault\'s status rules', async () => {
    const pts = [secret('b0'), secret('b1'), secret('b2')];
    const enc = await app.encryptData({ name: 'k1', batch_input: pts.map((p, i) => ({ plaintext: b64(p), reference: `r${i}` })) });
    envelopeOf(enc);
    assert.equal(enc.data.batch_results.length, 3);
    enc.data.batch_results.forEach((r: any, i: number) => {
      assert.equal(r.reference, `r${i}`);
      assert.match(r.ciphertext, /^vault:v\d+:/);
      assert.equal(r.error, undefined);
    });
    const dec = await app.decryptData({ name: 'k1', batch_input: enc.data.batch_results.map((r: any) => ({ ciphertext: r.ciphertext, reference: r.reference })) });
    assert.deepEqual(dec.data.batch_results.map((r: any) => unb64(r.plaintext)), pts);

    // One bad item: 400, the others still answered.
    const mixed = await fetchVault('POST', '/v1/transit/encrypt/k1', cast.appKey, { batch_input: [{ plaintext: b64('ok') }, { plaintext: '***', reference: 'bad' }] });
    assert.equal(mixed.status, 400, mixed.text);
    envelopeOf(mixed.body);
    assert.match(mixed.body.data.batch_results[0].ciphertext, /^vault:v/);
    assert.equal(mixed.body.data.batch_results[1].reference, 'bad');
    assert.match(mixed.body.data.batch_results[1].error, /base64/);
    assert.equal(mixed.body.data.batch_results[1].ciphertext, undefined);
    const partial = await fetchVault('POST', '/v1/transit/decrypt/k1', cast.appKey, { partial_failure_response_code: 207, batch_input: [{ ciphertext: enc.data.batch_results[0].ciphertext }, { ciphertext: 'vault:v1:AAAA' }] });
    assert.equal(partial.status, 207, partial.text);
    assert.equal(unb64(partial.body.data.batch_results[0].plaintext), pts[0]);
    assert.equal(partial.body.data.batch_results[1].plaintext, '');
    assert.ok(partial.body.data.batch_results[1].error);
    const allBad = await fetchVault('POST', '/v1/transit/decrypt/k1', cast.appKey, { partial_failure_response_code: 207, batch_input: [{ ciphertext: 'vault:v1:AAAA' }] });
    assert.equal(allBad.status, 400, 'all failed: 400 whatever the override');
    // Rewrap answers 200 with per-item errors, as Vault does.
    const rw = await fetchVault('POST', '/v1/transit/rewrap/k1', cast.appKey, { batch_input: [{ ciphertext: enc.data.batch_results[1].ciphertext, reference: 'a' }, { ciphertext: 'nope', reference: 'b' }] });
    assert.equal(rw.status, 200, rw.text);
    assert.match(rw.body.data.batch_results[0].ciphertext, /^vault:v/);
    assert.match(rw.body.data.batch_results[1].error, /no prefix/);

    vaultError(await fetchVault('POST', '/v1/transit/encrypt/k1', cast.appKey, { batch_input: [] }), 400, /missing batch input/);
    vaultError(await fetchVault('POST', '/v1/transit/encrypt/k1', cast.appKey, { batch_input: [{ plaintext: b64('a'), context: b64('c') }, { plaintext: b64('b') }] }), 400, /context should be set either in all the request blocks or in none/);
    vaultError(await fetchVault('POST', '/v1/transit/encrypt/k1', cast.appKey, { batch_input: Array.from({ length: 1001 }, () => ({ plaintext: '' })) }), 400, /at most 1000/);
    vaultError(await fetchVault('POST', '/v1/transit/encrypt/k1', cast.appKey, { batch_input: ['x'] }), 400, /expected a map/);
    vaultError(await fetchVault('POST', '/v1/transit/encrypt/k1', cast.appKey, { batch_input: [{ plaintext: 5 }] }), 400, /\[0\].*plaintext/);
    vaultError(await fetchVault('POST', '/v1/transit/encrypt/k1', cast.appKey, { batch_input: 'x' }), 400, /batch_input/);
  });

  it('unknown body fields are ignored with a warning', async () => {
    const r = await app.encryptData({ name: 'k1', plaintext: b64('w'), colour: 'blue', size: 3 });
    assert.deepEqual(r.warnings, ['Endpoint ignored these unrecognized parameters: [colour size]']);
    const quiet = await app.encryptData({ name: 'k1', plaintext: b64('w') });
    assert.equal(quiet.warnings, null, 'name (the path parameter node-vault echoes) is a known field');
    const item = await app.encryptData({ name: 'k1', batch_input: [{ plaintext: b64('w'), extra: 1 }] });
    assert.match(item.warnings.join(' '), /batch_input: .*\[extra\]/);
  });

  it('grants and roles are keyhaven\'s: the right principal per endpoint', async () => {
    // A stranger app has no grant; an encrypt-only app cannot decrypt.
    vaultError(await vaultFails(stranger.encryptData({ name: 'k1', plaintext: b64('x') })), 403, /^permission denied \| no encrypt grant on key "k1"$/);
    const made = await api(url, 'POST', '/v1/apps', { token: cast.admin, body: { name: 'enconly' } });
    assert.equal(made.status, 200, made.text);
    planted.push(made.body.apiKey);
    await grant('enconly', 'k1', ['encrypt']);
    const encOnly = vault({ endpoint: url, token: made.body.apiKey });
    const ct = (await encOnly.encryptData({ name: 'k1', plaintext: b64('x') })).data.ciphertext;
    vaultError(await vaultFails(encOnly.decryptData({ name: 'k1', ciphertext: ct })), 403, /no decrypt grant/);
    vaultError(await vaultFails(encOnly.rewrapData({ name: 'k1', ciphertext: ct })), 403, /no rewrap grant/);
    vaultError(await fetchVault('POST', '/v1/transit/datakey/plaintext/k1', made.body.apiKey, {}), 403, /no datakey grant/);
    // A missing key looks like a missing grant to an app.
    vaultError(await fetchVault('POST', '/v1/transit/encrypt/ghost', cast.appKey, { plaintext: b64('x') }), 403, /permission denied/);
    // Key admins manage keys but do no crypto; apps do crypto but manage nothing.
    vaultError(await vaultFails(admin.encryptData({ name: 'k1', plaintext: b64('x') })), 403, /permission denied/);
    vaultError(await vaultFails(app.transitCreateKey({ name: 'appmade' })), 403, /permission denied/);
    vaultError(await fetchVault('POST', '/v1/transit/keys/k1/rotate', cast.appKey, {}), 403);
    vaultError(await fetchVault('POST', '/v1/transit/keys/k1/config', cast.auditor, { deletion_allowed: true }), 403);
    vaultError(await vaultFails(app.transitListKeys()), 403);
    vaultError(await vaultFails(stranger.transitReadKey({ name: 'k1' })), 403, /no grant on key/);
    assert.equal((await app.transitReadKey({ name: 'k1' })).data.name, 'k1', 'an app reads a key it holds a grant on');
    // No token, a bad token: 403 "permission denied", as Vault.
    vaultError(await fetchVault('POST', '/v1/transit/encrypt/k1', undefined, { plaintext: b64('x') }), 403, /^permission denied/);
    vaultError(await fetchVault('POST', '/v1/transit/encrypt/k1', 'khs_nonsense', { plaintext: b64('x') }), 403, /^permission denied/);
    vaultError(await fetchVault('GET', '/v1/transit/keys/k1', 'bad token with spaces'), 403);
    // Authorization: Bearer works too.
    const bearer = await api(url, 'POST', '/v1/transit/encrypt/k1', { token: cast.appKey, body: { plaintext: b64('x') } });
    assert.equal(bearer.status, 200, bearer.text);
  });

  it('token lookup-self and renew-self for a session and an API key', async () => {
    const session = await admin.tokenLookupSelf();
    envelopeOf(session);
    assert.equal(session.data.display_name, 'user:keyadmin');
    assert.ok(session.data.ttl > 0 && session.data.ttl <= 8 * 3600, `ttl ${session.data.ttl}`);
    assert.equal(session.data.renewable, false);
    assert.ok(Date.parse(session.data.expire_time) > Date.now());
    assert.deepEqual(session.data.policies, ['key-admin']);
    assert.equal(session.data.id, '', 'the token is not echoed');
    const key = await app.tokenLookupSelf();
    assert.equal(key.data.ttl, 0);
    assert.equal(key.data.expire_time, null);
    assert.equal(key.data.renewable, false);
    assert.equal(key.data.display_name, 'app:app1');

    const renewed = await admin.tokenRenewSelf({ increment: '1h' });
    assert.equal(renewed.auth.renewable, false);
    assert.ok(renewed.auth.lease_duration > 0 && renewed.auth.lease_duration <= session.data.ttl);
    assert.equal(renewed.auth.client_token, '');
    assert.match(renewed.warnings.join(' '), /cannot be extended/);
    // node-vault keeps its token when client_token is empty: later calls still work.
    assert.equal((await admin.transitReadKey({ name: 'k1' })).data.name, 'k1');
    const appRenew = await app.tokenRenewSelf();
    assert.equal(appRenew.auth.lease_duration, 0);
    vaultError(await fetchVault('GET', '/v1/auth/token/lookup-self', undefined), 403, /permission denied/);
    vaultError(await fetchVault('POST', '/v1/auth/token/renew-self', cast.appKey, { increment: [1] }), 400, /increment/);
  });

  it('bad input on every route: Vault error shape, precise messages, the server keeps serving', async () => {
    const routes: { method: string; path: string; token: string }[] = [
      { method: 'POST', path: '/v1/transit/keys/bi', token: cast.keyAdmin },
      { method: 'POST', path: '/v1/transit/keys/k1/config', token: cast.keyAdmin },
      { method: 'POST', path: '/v1/transit/keys/k1/rotate', token: cast.keyAdmin },
      { method: 'POST', path: '/v1/transit/keys/k1/trim', token: cast.keyAdmin },
      { method: 'POST', path: '/v1/transit/encrypt/k1', token: cast.appKey },
      { method: 'POST', path: '/v1/transit/decrypt/k1', token: cast.appKey },
      { method: 'POST', path: '/v1/transit/rewrap/k1', token: cast.appKey },
      { method: 'POST', path: '/v1/transit/datakey/plaintext/k1', token: cast.appKey },
      { method: 'POST', path: '/v1/auth/token/renew-self', token: cast.appKey },
    ];
    const versionBefore = (await admin.transitReadKey({ name: 'k1' })).data.latest_version;
    for (const r of routes) {
      const what = `${r.method} ${r.path}`;
      const send = (body: string, headers: Record<string, string> = {}) => raw(url, r.method, r.path, r.token, body, { 'content-type': 'application/json', ...headers });
      vaultError(await send('{"plaintext": '), 400, /failed to parse JSON input/, `${what} malformed JSON`);
      vaultError(await send('{} x'), 400, /failed to parse JSON input/, `${what} trailing garbage`);
      vaultError(await send('[]'), 400, /must be a JSON object/, `${what} array body`);
      vaultError(await send('"text"'), 400, /must be a JSON object/, `${what} string body`);
      vaultError(await send('{"__proto__": {"admin": true}}'), 400, /failed to parse JSON input/, `${what} prototype poisoning`);
      vaultError(await send(JSON.stringify({ pad: 'x'.repeat(2_000_000) })), 413, /larger than the server accepts/, `${what} oversized`);
      vaultError(await raw(url, 'PATCH', r.path, r.token, '{}', { 'content-type': 'application/json' }), 405, /unsupported operation/, `${what} wrong method`);
    }
    // Typed fields: a wrong type is a 400 naming the field.
    for (const [path, token, body, field] of [
      ['/v1/transit/encrypt/k1', cast.appKey, { plaintext: 5 }, 'plaintext'],
      ['/v1/transit/encrypt/k1', cast.appKey, { plaintext: b64('x'), key_version: 'one' }, 'key_version'],
      ['/v1/transit/decrypt/k1', cast.appKey, { ciphertext: ['x'] }, 'ciphertext'],
      ['/v1/transit/keys/k1/config', cast.keyAdmin, { deletion_allowed: 'maybe' }, 'deletion_allowed'],
      ['/v1/transit/keys/k1/config', cast.keyAdmin, { auto_rotate_period: '1 week' }, 'auto_rotate_period'],
      ['/v1/transit/keys/k1/trim', cast.keyAdmin, { min_available_version: 1.5 }, 'min_available_version'],
      ['/v1/transit/datakey/plaintext/k1', cast.appKey, { bits: true }, 'bits'],
      ['/v1/transit/keys/bi', cast.keyAdmin, { type: 'rsa-2048' }, 'type'],
    ] as const) {
      const res = await fetchVault('POST', path, token, body);
      vaultError(res, 400, new RegExp(field === 'type' ? 'rsa-2048 is not supported' : `"${field}"`), `${path} ${field}`);
    }
    // Required fields and unsupported features.
    vaultError(await fetchVault('POST', '/v1/transit/encrypt/k1', cast.appKey, {}), 400, /missing plaintext to encrypt/);
    vaultError(await fetchVault('POST', '/v1/transit/decrypt/k1', cast.appKey, {}), 400, /missing ciphertext to decrypt/);
    vaultError(await fetchVault('POST', '/v1/transit/rewrap/k1', cast.appKey), 400, /missing ciphertext/);
    vaultError(await fetchVault('POST', '/v1/transit/encrypt/k1', cast.appKey, { plaintext: b64('x'), nonce: b64('n') }), 400, /convergent/);
    vaultError(await fetchVault('POST', '/v1/transit/keys/bi', cast.keyAdmin, { derived: true }), 400, /derived keys are not supported/);
    vaultError(await fetchVault('POST', '/v1/transit/keys/bi', cast.keyAdmin, { exportable: true }), 400, /never leaves keyhaven/);
    vaultError(await fetchVault('POST', '/v1/transit/keys/bi', cast.keyAdmin, { auto_rotate_period: 60 }), 400, /at least an hour/);
    vaultError(await fetchVault('POST', '/v1/transit/encrypt/k1', cast.appKey, { plaintext: b64('x'.repeat(70_000)) }), 400, /at most 65536 bytes/);
    vaultError(await fetchVault('POST', `/v1/transit/keys/${'n'.repeat(129)}`, cast.keyAdmin, {}), 400, /key name/);
    vaultError(await fetchVault('POST', '/v1/transit/keys/bad%20name', cast.keyAdmin, {}), 400, /key name/);
    vaultError(await fetchVault('POST', '/v1/transit/encrypt/k1', cast.appKey, { plaintext: b64('x') }, { 'x-vault-wrap-ttl': '60s' }), 400, /wrapping/);
    vaultError(await raw(url, 'GET', '/v1/transit/nothing/here', cast.appKey), 404, /unsupported path/);
    vaultError(await raw(url, 'GET', '/v1/transit/keys', cast.keyAdmin), 405, /unsupported operation/);
    vaultError(await raw(url, 'LIST', '/v1/transit/encrypt/k1', cast.appKey), 405, /unsupported operation/);
    // Vault reads any body as JSON, whatever its content type (curl -d sends a form type); an empty body is no fields.
    const form = await raw(url, 'POST', '/v1/transit/encrypt/k1', cast.appKey, JSON.stringify({ plaintext: b64('form') }), { 'content-type': 'application/x-www-form-urlencoded' });
    assert.equal(form.status, 200, form.text);
    const bare = await raw(url, 'POST', '/v1/transit/keys/k1/rotate', cast.keyAdmin);
    assert.equal(bare.status, 200, bare.text);
    // The server is still up, and nothing bad input sent changed anything but the deliberate rotation.
    assert.equal((await admin.transitReadKey({ name: 'k1' })).data.latest_version, versionBefore + 1);
    assert.equal((await fetchVault('GET', '/v1/transit/keys/bi', cast.keyAdmin)).status, 404, 'no key was created by refused requests');
    assert.equal((await api(url, 'GET', '/v1/sys/health')).status, 200);
  });

  it('LIST: the key list only, its head whole or in pieces; dot segments never reach another route', async () => {
    const listed = await raw(url, 'LIST', '/v1/transit/keys/', cast.keyAdmin);
    assert.equal(listed.status, 200, listed.text);
    assert.ok(listed.body.data.keys.includes('k1'));
    vaultError(await raw(url, 'LIST', '/v1/transit/keys', undefined), 403, /permission denied/);
    // A LIST with a body is not Vault's: the parser's 400 stands.
    const withBody = await raw(url, 'LIST', '/v1/transit/keys', cast.keyAdmin, '{}', { 'content-type': 'application/json' });
    assert.equal(withBody.status, 400);
    // Other paths are not rewritten.
    assert.equal((await raw(url, 'LIST', '/v1/keys', cast.keyAdmin)).status, 400);

    const u = new URL(url);
    const open = () => connect(Number(u.port), u.hostname);
    const head = (path: string, token = cast.keyAdmin) => `LIST ${path} HTTP/1.1\r\nHost: ${u.host}\r\nX-Vault-Token: ${token}\r\n\r\n`;
    // A head in several packets, split inside the request line and a header, is read on and served.
    const whole = head('/v1/transit/keys');
    const split = await rawSocket(open, [whole.slice(0, 13), whole.slice(13, 40), whole.slice(40)]);
    assert.equal(split.status, 200, split.text);
    assert.ok(split.body.data.keys.includes('k1'));
    // Dot segments, plain or percent-encoded, are refused in Vault's shape; never the native key list (GET /v1/keys).
    for (const path of ['/v1/transit/../keys', '/v1/transit/keys/../../keys', '/v1/transit/%2e%2e/keys', '/v1/transit/%2E%2e/keys', '/v1/transit/./keys', '/v1/transit/keys/.', '/v1/transit/keys/%2e', '/v1/transit/keys/..?list=true']) {
      const r = await rawSocket(open, [head(path)]);
      vaultError(r, 404, /unsupported path/, `LIST ${path}`);
      assert.ok(!r.text.includes('"keys"') && !r.text.includes('"name"'), `LIST ${path} listed keys: ${r.text}`);
    }
    // Other Vault paths take no LIST.
    vaultError(await rawSocket(open, [head('/v1/transit/keys/k1')]), 405, /unsupported operation/);
    vaultError(await rawSocket(open, [head('/v1/transit/nothing')]), 404, /unsupported path/);
    // Refusals are audited.
    const recs = (await auditRecords(url, cast.auditor)).filter((x) => x.operation === 'transit.keys.list' && x.result === 'not_found' && JSON.parse(x.details).status === 404);
    assert.ok(recs.some((x) => JSON.parse(x.details).route === 'LIST /v1/transit/../keys'), 'the traversal attempt is audited');
    // Over-long headers on a Vault path are answered in Vault's shape too.
    vaultError(await rawSocket(open, [`GET /v1/transit/keys?list=true HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`]), 431, /request headers are larger/);
    assert.equal((await api(url, 'GET', '/v1/sys/health')).status, 200, 'the server keeps serving');
  });

  it('LIST over mTLS: a presented client certificate that does not verify is refused, as on every other route', async (t) => {
    if (!requireDependency(t, HAVE_OPENSSL, 'openssl')) return;
    const pki = makePki();
    const tlsSrv = await startServerProcess({ config: { tls: { cert: pki.serverCert, key: pki.serverKey, clientCa: pki.caFile } } });
    const agent = new Agent({ connect: { ca: pki.ca } });
    try {
      const call = async (method: string, path: string, body?: unknown, token?: string) => {
        const res = await undiciRequest(tlsSrv.url + path, {
          method: method as 'GET',
          dispatcher: agent,
          headers: { ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...(token ? { authorization: `Bearer ${token}` } : {}) },
          body: body === undefined ? undefined : JSON.stringify(body),
        });
        return { status: res.statusCode, body: (await res.body.json()) as any };
      };
      const init = await call('POST', '/v1/sys/init', {});
      assert.equal(init.status, 200);
      const login = await call('POST', '/v1/auth/login', { name: init.body.admin.name, password: init.body.admin.password });
      assert.equal(login.status, 200);
      const token = login.body.token as string;
      const u = new URL(tlsSrv.url);
      const head = `LIST /v1/transit/keys HTTP/1.1\r\nHost: ${u.host}\r\nX-Vault-Token: ${token}\r\n\r\n`;
      const open = (client?: { cert: Buffer; key: Buffer }) => () => tlsConnect({ host: u.hostname, port: Number(u.port), ca: pki.ca, ...client });
      // Without a certificate the token is enough: the (empty) list answers Vault's 404 with no errors.
      const plain = await rawSocket(open(), [head]);
      assert.equal(plain.status, 404, plain.text);
      assert.deepEqual(plain.body, { errors: [] });
      for (const [client, reason] of [[pki.expiredClient, 'CERT_HAS_EXPIRED'], [pki.foreign, 'UNABLE_TO_VERIFY_LEAF_SIGNATURE']] as const) {
        const r = await rawSocket(open(client), [head]);
        vaultError(r, 403, new RegExp(`permission denied \\| the client certificate was refused \\(${reason}`), reason);
      }
      // The refusal is audited: an auditor reads it.
      const admin = token;
      assert.equal((await call('POST', '/v1/users', { name: 'aud', password: 'auditor-password-1', roles: ['auditor'] }, admin)).status, 200);
      const aud = (await call('POST', '/v1/auth/login', { name: 'aud', password: 'auditor-password-1' })).body.token as string;
      const res = await undiciRequest(`${tlsSrv.url}/v1/audit?limit=10000`, { dispatcher: agent, headers: { authorization: `Bearer ${aud}` } });
      const recs = (await res.body.text()).split('\n').filter(Boolean).map((l) => JSON.parse(l));
      const refusals = recs.filter((x) => x.operation === 'transit.keys.list' && x.result === 'unauthenticated');
      assert.equal(refusals.length, 2, JSON.stringify(recs.filter((x) => x.operation === 'transit.keys.list')));
    } finally {
      await agent.close();
      await tlsSrv.stop();
      removeDir(tlsSrv.dir);
      removeDir(pki.dir);
    }
  });

  it('keyhaven\'s /v1/sys/health keeps its own shape; transit routes are not in the OpenAPI document', async () => {
    const h = await api(url, 'GET', '/v1/sys/health');
    assert.equal(h.status, 200);
    assert.deepEqual(Object.keys(h.body).sort(), ['initialized', 'sealed', 'version']);
    const doc = await api(url, 'GET', '/v1/openapi.json');
    assert.deepEqual(Object.keys(doc.body.paths).filter((p) => p.startsWith('/v1/transit') || p.startsWith('/v1/auth/token')), []);
  });

  it('quorum: a guarded config change files an approval; deleting or trimming a key with material is refused', async () => {
    await admin.transitCreateKey({ name: 'qk' });
    await admin.write('transit/keys/qk/config', { deletion_allowed: true });
    // qt could be trimmed to version 3 (two versions destroyed) were key.destroy not guarded.
    await admin.transitCreateKey({ name: 'qt' });
    for (let i = 0; i < 2; i++) await admin.write('transit/keys/qt/rotate', {});
    await admin.write('transit/keys/qt/config', { min_encryption_version: 3, min_decryption_version: 3 });
    const set = await api(url, 'PUT', '/v1/sys/quorum', { token: cast.admin, body: { required: 1, operations: ['key.policy', 'key.destroy'], ttlS: 3600 } });
    assert.equal(set.status, 200, set.text);
    try {
      const r = await fetchVault('POST', '/v1/transit/keys/qk/config', cast.keyAdmin, { auto_rotate_period: '48h' });
      assert.equal(r.status, 202, r.text);
      envelopeOf(r.body);
      assert.match(r.body.warnings.join(' '), /needs quorum approval/);
      assert.equal(r.body.data.approval.operation, 'key.policy');
      assert.equal((await admin.transitReadKey({ name: 'qk' })).data.auto_rotate_period, 0, 'not applied yet');
      vaultError(await fetchVault('POST', '/v1/transit/keys/qk/config', cast.keyAdmin, { auto_rotate_period: '48h', min_encryption_version: 1 }), 400, /separate request/);
      // Settings outside key.policy apply at once.
      assert.equal((await admin.write('transit/keys/qk/config', { min_encryption_version: 1 })).data.min_encryption_version, 1);
      // A second key admin approves; the change applies.
      const ok = await api(url, 'POST', `/v1/approvals/${r.body.data.approval.id}/approve`, { token: cast.keyAdmin2 });
      assert.equal(ok.status, 200, ok.text);
      assert.equal((await admin.transitReadKey({ name: 'qk' })).data.auto_rotate_period, 172800);
      vaultError(await vaultFails(admin.transitDeleteKey({ name: 'qk' })), 403, /needs quorum approval/);
      assert.equal((await admin.transitReadKey({ name: 'qk' })).data.name, 'qk', 'still there');
      vaultError(await fetchVault('POST', '/v1/transit/keys/qt/trim', cast.keyAdmin, { min_available_version: 3 }), 403, /permission denied \| trimming key "qt" destroys key versions, which needs quorum approval/);
      const qt = (await admin.transitReadKey({ name: 'qt' })).data;
      assert.deepEqual(Object.keys(qt.keys), ['1', '2', '3'], 'no version destroyed');
      assert.equal(qt.min_available_version, 0);
    } finally {
      // Turning the quorum off is itself guarded now: file it and approve it.
      const off = await api(url, 'PUT', '/v1/sys/quorum', { token: cast.admin, body: { required: 0, operations: ['key.policy', 'key.destroy'], ttlS: 3600 } });
      if (off.status === 202) await api(url, 'POST', `/v1/approvals/${off.body.approval.id}/approve`, { token: cast.admin2 });
    }
    assert.equal((await api(url, 'GET', '/v1/sys/quorum', { token: cast.admin })).body.required, 0);
  });

  it('audit: every Vault request is recorded with its op, principal and key; no plaintext or token anywhere', async () => {
    const records = await auditRecords(url, cast.auditor);
    const ops = new Set(records.map((r) => r.operation));
    for (const op of [
      'transit.keys.create', 'transit.keys.read', 'transit.keys.list', 'transit.keys.delete', 'transit.keys.config', 'transit.keys.rotate', 'transit.keys.trim',
      'transit.encrypt', 'transit.decrypt', 'transit.rewrap', 'transit.datakey', 'vault.token.lookup-self', 'vault.token.renew-self',
      'key.create', 'key.rotate', 'key.policy', 'key.trim', 'key.delete',
    ]) assert.ok(ops.has(op), `no ${op} record`);
    const enc = records.find((r) => r.operation === 'transit.encrypt' && r.result === 'ok' && r.actor === 'app:app1');
    assert.ok(enc);
    assert.equal(enc.key_name, 'k1');
    assert.ok(enc.key_version >= 1);
    const denied = records.find((r) => r.operation === 'transit.encrypt' && r.actor === 'app:stranger');
    assert.equal(denied.result, 'permission_denied');
    const anon = records.find((r) => r.operation === 'transit.encrypt' && r.actor === 'anonymous');
    assert.equal(anon.result, 'unauthenticated');
    const deleted = records.filter((r) => r.operation === 'key.delete' && r.result === 'ok');
    assert.deepEqual(deleted.map((r) => [r.key_name, r.actor]), [['vk', 'user:keyadmin']]);
    const batch = records.find((r) => r.operation === 'transit.encrypt' && JSON.parse(r.details ?? '{}').failed === 1);
    assert.ok(batch, 'a partly failed batch is recorded with its failure count');

    const verify = await api(url, 'GET', '/v1/audit/verify', { token: cast.auditor });
    assert.equal(verify.body.ok, true);

    const haystacks = [srv.output(), JSON.stringify(records)];
    for (const s of planted) {
      for (const form of [s, b64(s)]) for (const h of haystacks) assert.ok(!h.includes(form), `a planted secret appears in ${h === haystacks[0] ? 'the server output' : 'the audit log'}`);
    }
  });

  it('deleting a key ends the approval requests pending on its name: a re-created key is not what they act on', async () => {
    await admin.transitCreateKey({ name: 'kre' });
    await admin.write('transit/keys/kre/config', { deletion_allowed: true });
    // Only grants are guarded, so the key can be deleted outright.
    assert.equal((await api(url, 'PUT', '/v1/sys/quorum', { token: cast.admin, body: { required: 1, operations: ['app.grant'], ttlS: 3600 } })).status, 200);
    try {
      const filed = await api(url, 'PUT', '/v1/apps/app1/grants/kre', { token: cast.keyAdmin, body: { operations: ['encrypt', 'decrypt'] } });
      assert.equal(filed.status, 202, filed.text);
      const id = filed.body.approval.id as string;
      await admin.transitDeleteKey({ name: 'kre' });
      const gone = await api(url, 'GET', `/v1/approvals/${id}`, { token: cast.auditor });
      assert.equal(gone.body.state, 'denied', gone.text);
      assert.match(gone.body.result.reason, /key "kre" was deleted/);
      // The name is taken again; approving the old request neither applies nor grants anything.
      await admin.transitCreateKey({ name: 'kre' });
      const late = await api(url, 'POST', `/v1/approvals/${id}/approve`, { token: cast.admin2, body: {} });
      assert.equal(late.status, 409, late.text);
      assert.match(late.text, /denied, not pending/);
      vaultError(await vaultFails(app.encryptData({ name: 'kre', plaintext: b64('x') })), 403, /permission denied/);
      const app1 = ((await api(url, 'GET', '/v1/apps', { token: cast.admin })).body.apps as { name: string; grants: { key: string }[] }[]).find((x) => x.name === 'app1')!;
      assert.ok(!app1.grants.some((g) => g.key === 'kre'), JSON.stringify(app1.grants));
      const recs = (await auditRecords(url, cast.auditor)).filter((r) => r.operation === 'approval.cancel' && JSON.parse(r.details).approval === id);
      assert.equal(recs.length, 1);
      assert.equal(recs[0].key_name, 'kre');
    } finally {
      assert.equal((await api(url, 'PUT', '/v1/sys/quorum', { token: cast.admin, body: { required: 0, operations: ['app.grant'], ttlS: 3600 } })).status, 200);
    }
  });

  it('sealed: Vault routes answer 503 "Vault is sealed"; after unseal they work again', async () => {
    const sealed = await api(url, 'POST', '/v1/sys/seal', { token: cast.admin });
    assert.equal(sealed.status, 200, sealed.text);
    vaultError(await fetchVault('POST', '/v1/transit/encrypt/k1', cast.appKey, { plaintext: b64('x') }), 503, /^Vault is sealed/);
    vaultError(await raw(url, 'LIST', '/v1/transit/keys', cast.keyAdmin), 503, /Vault is sealed/);
    const un = await api(url, 'POST', '/v1/sys/unseal', { token: cast.admin, body: {} });
    assert.equal(un.status, 200, un.text);
    assert.equal(un.body.sealed, false);
    assert.match((await app.encryptData({ name: 'k1', plaintext: b64('x') })).data.ciphertext, /^vault:v/);
  });
});
