import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { actorName, SYSTEM } from '../../../access/access.js';
import { parseServerConfig } from '../../../config/server-config.js';
import { KeyhavenError } from '../../../errors.js';
import { parseKeyId } from '../../../keys/key-id.js';
import { createLogger } from '../../../log/logger.js';
import type { Services } from '../../../server/core.js';
import { startServer, type RunningServer } from '../../../server/run-server.js';
import { createKeyServerClient, KEYHAVEN_HEALTH_PROBE } from '../../key-server-client.js';
import type { KmsProvider } from '../../provider.js';
import { code } from '../../../../test/expect-error.js';
import { createRemoteProvider, type RemoteProviderOptions } from './remote-provider.js';
import { FORM_DIRECT, FORM_KEK_ANNOTATED, FORM_KEK_EMBEDDED, KEK_ANNOTATION } from './remote-envelope.js';
import { ownedTempDir } from '../../../../test/reaper.js';

// The remote provider against a real key server (in this process, real HTTP
// on 127.0.0.1, a real SQLite file), counting the calls it makes.

const V2 = { uid: 'uid-v2', annotations: true };
const V1 = { uid: 'uid-v1', annotations: false };
const DEC = { uid: 'uid-dec' };
const KEY = 'cluster-key';

describe('remote provider (real key server over HTTP)', () => {
  let dir: string;
  let server: RunningServer;
  let s: Services;
  let apiKey: string;
  const open: KmsProvider[] = [];

  before(async () => {
    dir = ownedTempDir('kh-remote-');
    const cfg = parseServerConfig(
      { listen: '127.0.0.1:0', storage: { sqlite: { path: join(dir, 'keyhaven.db') } }, seal: { keyfile: { path: join(dir, 'root.key') } }, log: { level: 'silent' } },
      'test',
    );
    server = await startServer(cfg, createLogger({ level: 'silent' }));
    await server.core.init({ adminName: 'admin' });
    s = server.core.services();
    await s.keys.create(KEY, actorName(SYSTEM));
    apiKey = (await s.access.createApp(SYSTEM, { name: 'plugin-app' })).apiKey;
    await s.access.setGrant(SYSTEM, 'plugin-app', KEY, ['encrypt', 'decrypt']);
  });

  after(async () => {
    for (const p of open) await p.close();
    await server.close().catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  });

  /** A provider and a tally of its server calls by operation. */
  function provider(over: Partial<RemoteProviderOptions> & { kek?: boolean; maxUses?: number; now?: () => number; servers?: string[] } = {}) {
    const calls: Record<string, number> = {} as Record<string, number>;
    const { servers, ...rest } = over;
    const client = createKeyServerClient({
      servers: servers ?? [server.url],
      ...(servers ? { healthProbe: KEYHAVEN_HEALTH_PROBE } : {}),
      tls: {},
      apiKey: () => apiKey,
      cluster: 'unit',
      timeoutMs: 2000,
      attemptTimeoutMs: 1000,
      backoffMinMs: 50,
      backoffMaxMs: 200,
      onAttempt: (_s, op) => (calls[op] = (calls[op] ?? 0) + 1),
    });
    const p = createRemoteProvider({
      client,
      keyName: KEY,
      cluster: 'unit',
      node: 'node-1',
      pluginVersion: 'test',
      localKek: { enabled: over.kek ?? true, maxUses: over.maxUses ?? 1000, maxAgeMs: 3_600_000, cacheSize: 16 },
      reportIntervalMs: 60_000,
      staleAfterMs: 60_000,
      timeoutMs: 2000,
      ...rest,
    });
    open.push(p);
    return { p, calls, client };
  }

  /**
   * A lagging key server double: a proxy in front of the real server that,
   * once lagging, answers status and encrypt as the real server did before
   * `freeze()` (what a server that has not yet seen a rotation answers), or
   * is down (503) and answers nothing useful.
   */
  async function laggingDouble() {
    const d = { url: '', mode: 'pass' as 'pass' | 'lag' | 'down', replayed: 0, recent: new Map<string, string>(), frozen: new Map<string, string>(), freeze: () => (d.frozen = new Map(d.recent)) };
    const srv: Server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        void (async () => {
          const route = (req.url ?? '').split('/').pop()!;
          const send = (status: number, body: string) => res.writeHead(status, { 'content-type': 'application/json' }).end(body);
          if (d.mode === 'down') return send(503, JSON.stringify({ error: { code: 'unavailable', message: 'down' } }));
          const old = d.frozen.get(route);
          if (d.mode === 'lag' && old !== undefined) {
            d.replayed += 1;
            return send(200, old);
          }
          const headers: Record<string, string> = {};
          for (const h of ['authorization', 'content-type', 'x-keyhaven-cluster', 'x-keyhaven-uid']) if (typeof req.headers[h] === 'string') headers[h] = req.headers[h] as string;
          const r = await fetch(server.url + req.url, { method: req.method!, headers, ...(chunks.length ? { body: Buffer.concat(chunks) } : {}) });
          const text = await r.text();
          if (r.status === 200 && (route === 'status' || route === 'encrypt')) d.recent.set(route, text);
          send(r.status, text);
        })().catch(() => res.destroy());
      });
    });
    await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
    d.url = `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
    doubles.push(srv);
    return d;
  }
  const doubles: Server[] = [];
  after(async () => {
    for (const d of doubles) {
      d.closeAllConnections();
      await new Promise<void>((resolve) => d.close(() => resolve()));
    }
  });

  const untilUp = async (p: { healthCheck(): Promise<string> }, check: () => boolean) => {
    for (let i = 0; i < 500 && !check(); i++) await new Promise((r) => setTimeout(r, 10));
    assert.ok(check(), 'the double was marked up again');
    return p;
  };

  it('reports the server\'s key_id and seals seeds locally under one server-wrapped KEK', async () => {
    const { p, calls } = provider();
    const keyId = await p.healthCheck();
    const parsed = parseKeyId(keyId);
    assert.equal(parsed.storeId, s.storeId);
    assert.equal(parsed.version, 1);
    assert.deepEqual(calls, { status: 1, wrap: 1 });
    const seeds = Array.from({ length: 5 }, () => randomBytes(32));
    const out = await Promise.all(seeds.map((seed) => p.encrypt(seed, V2)));
    assert.deepEqual(calls, { status: 1, wrap: 1 }, 'Encrypt makes no server call');
    for (const [i, e] of out.entries()) {
      assert.equal(e.keyId, keyId);
      assert.equal(e.ciphertext[0], FORM_KEK_ANNOTATED);
      assert.ok(e.ciphertext.length <= 1024);
      assert.match(e.annotations![KEK_ANNOTATION]!.toString(), /^kh:v1:/);
      assert.deepEqual((await p.decrypt(e.ciphertext, e.keyId, e.annotations!, DEC)).plaintext, seeds[i]);
    }
    assert.equal((calls as Record<string, number>).unwrap, undefined, 'its own KEK is cached from the start');
  });

  it('v1beta1 carries the wrapped KEK inside the ciphertext', async () => {
    const { p } = provider();
    await p.healthCheck();
    const seed = randomBytes(32);
    const e = await p.encrypt(seed, V1);
    assert.equal(e.ciphertext[0], FORM_KEK_EMBEDDED);
    assert.equal(e.annotations, undefined);
    assert.deepEqual((await p.decrypt(e.ciphertext, undefined, {}, DEC)).plaintext, seed);
  });

  it('after a restart, many seeds under one KEK cost one server call; concurrent misses share it', async () => {
    const a = provider();
    await a.p.healthCheck();
    const seeds = Array.from({ length: 50 }, () => randomBytes(32));
    const out = await Promise.all(seeds.map((seed) => a.p.encrypt(seed, V2)));
    const b = provider();
    const plain = await Promise.all(out.map((e) => b.p.decrypt(e.ciphertext, e.keyId, e.annotations!, DEC)));
    assert.deepEqual(plain.map((x) => x.plaintext), seeds);
    // One status probe learns which key_ids are live (this plugin had not checked yet); one unwrap for all.
    assert.deepEqual(b.calls, { status: 1, unwrap: 1 });
  });

  it('with the local KEK off, every call is a server call and the ciphertext is the server\'s', async () => {
    const { p, calls } = provider({ kek: false });
    const keyId = await p.healthCheck();
    const seed = randomBytes(32);
    const e = await p.encrypt(seed, V2);
    assert.equal(e.keyId, keyId);
    assert.equal(e.ciphertext[0], FORM_DIRECT);
    assert.match(e.ciphertext.toString(), /^kh:v\d+:/);
    assert.deepEqual((await p.decrypt(e.ciphertext, e.keyId, {}, DEC)).plaintext, seed);
    assert.deepEqual(calls, { status: 1, encrypt: 1, decrypt: 1 });
    // Turning the KEK on later keeps reading what was written without it, and the reverse.
    const on = provider();
    await on.p.healthCheck();
    assert.deepEqual((await on.p.decrypt(e.ciphertext, e.keyId, {}, DEC)).plaintext, seed);
    const sealed = await on.p.encrypt(seed, V2);
    assert.deepEqual((await p.decrypt(sealed.ciphertext, sealed.keyId, sealed.annotations!, DEC)).plaintext, seed);
  });

  it('refuses tampered, mismatched and foreign input with precise errors', async () => {
    const { p } = provider();
    await p.healthCheck();
    const e = await p.encrypt(randomBytes(32), V2);
    const ann = e.annotations!;
    const flipped = Buffer.from(e.ciphertext);
    flipped[flipped.length - 1]! ^= 1;
    await assert.rejects(p.decrypt(flipped, e.keyId, ann, DEC), code('integrity'));
    await assert.rejects(p.decrypt(e.ciphertext, e.keyId, {}, DEC), code('invalid_argument'));
    const other = await p.encrypt(randomBytes(32), V1);
    const otherWrapped = other.ciphertext.subarray(3, 3 + other.ciphertext.readUInt16BE(1));
    // Same KEK, so swap in a re-wrapped one from another provider instead.
    const q = provider();
    await q.p.healthCheck();
    const foreignKek = (await q.p.encrypt(randomBytes(32), V2)).annotations![KEK_ANNOTATION]!;
    assert.notDeepEqual(foreignKek, otherWrapped);
    await assert.rejects(p.decrypt(e.ciphertext, e.keyId, { [KEK_ANNOTATION]: foreignKek }, DEC), code('integrity'));
    const id = parseKeyId(e.keyId);
    await assert.rejects(p.decrypt(e.ciphertext, e.keyId.replace(id.storeId, 'f'.repeat(16)), ann, DEC), code('unknown_key_id'));
    await assert.rejects(p.decrypt(e.ciphertext, e.keyId.replace(/:1:/, ':7:'), ann, DEC), code('invalid_argument'));
    await assert.rejects(p.decrypt(e.ciphertext, 'not-a-key-id', ann, DEC), code('unknown_key_id'));
    await assert.rejects(p.decrypt(Buffer.from([0x09, 1, 2, 3]), e.keyId, ann, DEC), code('invalid_argument'));
    await assert.rejects(p.decrypt(e.ciphertext, e.keyId, { [KEK_ANNOTATION]: Buffer.from('kh:v1:AAAA') }, DEC), (err: unknown) => err instanceof KeyhavenError);
    await assert.rejects(p.decrypt(Buffer.from([FORM_KEK_EMBEDDED, 0xff, 0xff, 1]), undefined, {}, DEC), code('integrity'));
    // After all that the provider still decrypts.
    assert.equal((await p.decrypt(e.ciphertext, e.keyId, ann, DEC)).keyVersion, 1);
  });

  it('refuses a key_id no live version has: a forged tag, a retired version; learns a newer version from the server', async () => {
    const { p, calls } = provider();
    await p.healthCheck();
    const e = await p.encrypt(randomBytes(32), V2);
    const id = parseKeyId(e.keyId);
    const forged = e.keyId.replace(new RegExp(`${id.tag}$`), '0'.repeat(16));
    await assert.rejects(p.decrypt(e.ciphertext, forged, e.annotations!, DEC), code('unknown_key_id', /not a version of key "cluster-key" that can still decrypt/));
    // Another node's plugin saw a rotation first: its key_id is newer than this plugin's last check.
    const other = provider();
    await s.keys.rotate(KEY, actorName(SYSTEM));
    const newer = await other.p.healthCheck();
    const fresh = await other.p.encrypt(randomBytes(32), V2);
    const before = calls.status ?? 0;
    assert.equal((await p.decrypt(fresh.ciphertext, newer, fresh.annotations!, DEC)).keyVersion, parseKeyId(newer).version);
    assert.equal(calls.status, before + 1, 'one re-probe');
  });

  it('KMS v2 Encrypt with the local KEK off refuses a version Status did not report; v1beta1 takes it', async () => {
    const { p } = provider({ kek: false });
    await p.healthCheck();
    await s.keys.rotate(KEY, actorName(SYSTEM));
    await assert.rejects(p.encrypt(randomBytes(32), V2), code('unavailable', /rotated on the server since the last Status/));
    const v1 = await p.encrypt(randomBytes(32), V1);
    assert.equal(parseKeyId(v1.keyId).version, v1.keyVersion);
    const keyId = await p.healthCheck();
    assert.equal((await p.encrypt(randomBytes(32), V2)).keyId, keyId);
  });

  it('a key deleted and made again under the same name: Encrypt (local KEK off) never labels its ciphertext with the old key_id', async () => {
    const name = 'recreated';
    const actor = actorName(SYSTEM);
    await s.keys.create(name, actor);
    await s.access.setGrant(SYSTEM, 'plugin-app', name, ['encrypt', 'decrypt']);
    const { p } = provider({ kek: false, keyName: name });
    const oldKeyId = await p.healthCheck();
    await s.keys.setPolicy(name, { deletionAllowed: true }, actor);
    await s.keys.delete(name, actor);
    await s.keys.create(name, actor);
    await s.access.setGrant(SYSTEM, 'plugin-app', name, ['encrypt', 'decrypt']);
    // Same name, same version number, another key: refused until a Status has checked the new key.
    await assert.rejects(p.encrypt(randomBytes(32), V2), code('unavailable', /not the key this plugin last checked/));
    const newKeyId = await p.healthCheck();
    assert.notEqual(newKeyId, oldKeyId);
    assert.equal((await p.encrypt(randomBytes(32), V2)).keyId, newKeyId);
  });

  it('follows a rotation: new key_id and KEK at the next health check, old ciphertexts still decrypt', async () => {
    const { p, calls } = provider();
    const before = await p.healthCheck();
    const seed = randomBytes(32);
    const old = await p.encrypt(seed, V2);
    await s.keys.rotate(KEY, actorName(SYSTEM));
    const now = await p.healthCheck();
    assert.notEqual(now, before);
    assert.equal(parseKeyId(now).version, parseKeyId(before).version + 1);
    assert.equal(calls.wrap, 2);
    const fresh = await p.encrypt(seed, V2);
    assert.equal(fresh.keyId, now);
    assert.notDeepEqual(fresh.annotations![KEK_ANNOTATION], old.annotations![KEK_ANNOTATION]);
    assert.deepEqual((await p.decrypt(old.ciphertext, old.keyId, old.annotations!, DEC)).plaintext, seed);
  });

  it('makes a new KEK after maxUses, keeping the key_id', async () => {
    const { p, calls } = provider({ maxUses: 2 });
    const keyId = await p.healthCheck();
    const a = await p.encrypt(randomBytes(32), V2);
    await p.encrypt(randomBytes(32), V2);
    assert.equal(await p.healthCheck(), keyId);
    const c = await p.encrypt(randomBytes(32), V2);
    assert.equal(calls.wrap, 2);
    assert.equal(c.keyId, keyId);
    assert.notDeepEqual(c.annotations![KEK_ANNOTATION], a.annotations![KEK_ANNOTATION]);
  });

  it('a disabled key fails the health check and Encrypt; cached KEKs still decrypt; enabling restores it', async () => {
    const { p } = provider();
    await p.healthCheck();
    const seed = randomBytes(32);
    const e = await p.encrypt(seed, V2);
    await s.keys.setEnabled(KEY, false, actorName(SYSTEM));
    try {
      await assert.rejects(p.healthCheck(), code('key_disabled'));
      await assert.rejects(p.encrypt(seed, V2), code('key_disabled'));
      assert.deepEqual((await p.decrypt(e.ciphertext, e.keyId, e.annotations!, DEC)).plaintext, seed);
    } finally {
      await s.keys.setEnabled(KEY, true, actorName(SYSTEM));
    }
    await p.healthCheck();
    await p.encrypt(seed, V2);
  });

  it('a revoked grant fails the health check and drops the cached KEKs: Decrypt is refused too', async () => {
    const { p } = provider();
    await p.healthCheck();
    const e = await p.encrypt(randomBytes(32), V2);
    await s.access.revokeGrant(SYSTEM, 'plugin-app', KEY);
    try {
      // The server caches grants briefly; wait until the revocation shows.
      let refused: unknown;
      for (let i = 0; i < 60 && !refused; i++) {
        refused = await p.healthCheck().then(() => undefined, (err: unknown) => err);
        if (!refused) await new Promise((r) => setTimeout(r, 100));
      }
      code('permission_denied')(refused);
      await assert.rejects(p.encrypt(randomBytes(32), V2), code('permission_denied'));
      await assert.rejects(p.decrypt(e.ciphertext, e.keyId, e.annotations!, DEC), code('permission_denied'));
    } finally {
      await s.access.setGrant(SYSTEM, 'plugin-app', KEY, ['encrypt', 'decrypt']);
    }
  });

  it('while checks succeed, Encrypt never goes stale between polls (the apiserver polls once a minute)', async () => {
    let t = Date.now();
    const { p } = provider({ now: () => t });
    await p.healthCheck();
    t += 10 * 60_000;
    await p.encrypt(randomBytes(32), V1);
  });

  it('losing only the decrypt grant fails the health check too, and drops the cached KEKs', async () => {
    const { p } = provider();
    await p.healthCheck();
    const e = await p.encrypt(randomBytes(32), V2);
    await s.access.setGrant(SYSTEM, 'plugin-app', KEY, ['encrypt']);
    try {
      let refused: unknown;
      for (let i = 0; i < 60 && !refused; i++) {
        refused = await p.healthCheck().then(() => undefined, (err: unknown) => err);
        if (!refused) await new Promise((r) => setTimeout(r, 100));
      }
      code('permission_denied', /no decrypt grant/)(refused);
      await assert.rejects(p.decrypt(e.ciphertext, e.keyId, e.annotations!, DEC), code('permission_denied'));
    } finally {
      await s.access.setGrant(SYSTEM, 'plugin-app', KEY, ['encrypt', 'decrypt']);
    }
  });

  it('key_id never goes backwards with the local KEK off: a lagging server double is not believed', async () => {
    const lag = await laggingDouble();
    const { p, client } = provider({ kek: false, servers: [lag.url, server.url] });
    const keyId1 = await p.healthCheck();
    await p.encrypt(randomBytes(32), V2);
    lag.freeze();
    await s.keys.rotate(KEY, actorName(SYSTEM));
    // The double is down for a moment: the real server gives the new version.
    lag.mode = 'down';
    const keyId2 = await p.healthCheck();
    assert.equal(parseKeyId(keyId2).version, parseKeyId(keyId1).version + 1);
    // Back, but behind: its status and encrypt answers are from before the rotation.
    lag.mode = 'lag';
    await untilUp(p, () => client.servers()[0]!.up);
    const replayed = lag.replayed;
    assert.equal(await p.healthCheck(), keyId2, 'Status keeps the newest key_id');
    const v2 = await p.encrypt(randomBytes(32), V2);
    assert.equal(v2.keyId, keyId2, 'Encrypt under the old version was retried on the other server');
    const v1 = await p.encrypt(randomBytes(32), V1);
    assert.equal(v1.keyId, keyId2);
    assert.equal(lag.replayed - replayed, 3, 'the lagging answers were given (status, two encrypts) and not used');
    assert.equal(await p.healthCheck(), keyId2);

    // With only the lagging server: Encrypt fails as unavailable (the apiserver retries); Status still keeps the newest.
    lag.mode = 'pass';
    const only = provider({ kek: false, servers: [lag.url] });
    assert.equal(await only.p.healthCheck(), keyId2);
    lag.mode = 'lag';
    assert.equal(await only.p.healthCheck(), keyId2);
    await assert.rejects(only.p.encrypt(randomBytes(32), V2), code('unavailable', /older than version \d+ already in use \(this server is behind the others\)/));
    await assert.rejects(only.p.encrypt(randomBytes(32), V1), code('unavailable', /behind the others/));
  });

  it('key_id never goes backwards with the local KEK on: no KEK is wrapped under an older version (lagging server double)', async () => {
    const lag = await laggingDouble();
    const { p, calls, client } = provider({ kek: true, maxUses: 3, servers: [lag.url, server.url] });
    await p.healthCheck();
    lag.freeze();
    await s.keys.rotate(KEY, actorName(SYSTEM));
    lag.mode = 'down';
    const keyId2 = await p.healthCheck();
    lag.mode = 'lag';
    await untilUp(p, () => client.servers()[0]!.up);
    const wraps = calls.wrap;
    assert.equal(await p.healthCheck(), keyId2, 'a status answer from before the rotation does not take the key_id back');
    assert.equal(calls.wrap, wraps, 'and makes no new KEK');
    const seed = randomBytes(32);
    let e = await p.encrypt(seed, V2);
    assert.equal(e.keyId, keyId2);
    for (let i = 0; i < 3; i++) e = await p.encrypt(seed, V2);
    // maxUses reached: the new KEK's wrap by the lagging server is under the old version, so the other server wraps it.
    const replayed = lag.replayed;
    assert.equal(await p.healthCheck(), keyId2);
    assert.equal(lag.replayed - replayed, 2, 'the lagging server answered status and wrap');
    const fresh = await p.encrypt(seed, V2);
    assert.equal(fresh.keyId, keyId2);
    assert.notDeepEqual(fresh.annotations![KEK_ANNOTATION], e.annotations![KEK_ANNOTATION], 'a new KEK');
    assert.deepEqual((await p.decrypt(fresh.ciphertext, fresh.keyId, fresh.annotations!, DEC)).plaintext, seed);

    // Only the lagging server: the due KEK cannot be wrapped under the current version, so the check fails (Status coasts on its grace period).
    lag.mode = 'pass';
    const only = provider({ kek: true, maxUses: 1, servers: [lag.url] });
    assert.equal(await only.p.healthCheck(), keyId2);
    await only.p.encrypt(seed, V2);
    lag.mode = 'lag';
    await assert.rejects(only.p.healthCheck(), code('unavailable', /behind the others/));
  });

  it('during an outage: cached KEKs decrypt, Encrypt works until the grace period ends (runs last: stops the server)', async () => {
    let t = Date.now();
    const { p } = provider({ now: () => t });
    await p.healthCheck();
    const seed = randomBytes(32);
    const e = await p.encrypt(seed, V2);
    await server.close();
    await assert.rejects(p.healthCheck(), code('unavailable'));
    assert.deepEqual((await p.decrypt(e.ciphertext, e.keyId, e.annotations!, DEC)).plaintext, seed);
    await p.encrypt(seed, V2);
    t += 61_000;
    await assert.rejects(p.encrypt(seed, V2), code('unavailable'));
    assert.deepEqual((await p.decrypt(e.ciphertext, e.keyId, e.annotations!, DEC)).plaintext, seed, 'cached KEKs keep decrypting');
    // A plugin that never saw this KEK cannot decrypt without a server.
    const cold = provider();
    await assert.rejects(cold.p.decrypt(e.ciphertext, e.keyId, e.annotations!, DEC), code('unavailable'));
  });
});
