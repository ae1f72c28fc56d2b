import assert from 'node:assert/strict';
import { createCipheriv, createDecipheriv, randomBytes, randomUUID } from 'node:crypto';
import { chmodSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { describe, it, type TestContext } from 'node:test';
import { caught, code as fails } from '../../../../test/expect-error.js';
import { freePort } from '../../../../test/ports.js';
import { parsePluginConfig } from '../../../config/plugin-config.js';
import type { FortanixDsmProviderConfig } from '../../../config/providers/fortanix-dsm.js';
import { createLogger } from '../../../log/logger.js';
import { createPluginMetrics } from '../../metrics.js';
import type { KmsProvider } from '../../provider.js';
import { createStatusMonitor } from '../../status-monitor.js';
import { createDsmClient, type DsmClientOptions } from './fortanix-dsm-client.js';
import { DSM_FORMAT, dsmAd, parseDsmCiphertext } from './fortanix-dsm-format.js';
import { buildFortanixDsmProvider, createFortanixDsmProvider, type DsmProviderOptions } from './fortanix-dsm.js';
import { ownedTempDir } from '../../../../test/reaper.js';

// The fortanix-dsm provider against a stand-in for Fortanix DSM: a real HTTP
// server on 127.0.0.1 that implements the subset of DSM's REST API the
// provider uses (session auth, key listing and read, encrypt and decrypt with
// real AES-256-GCM from node:crypto). The end-to-end tests against keyhaven's
// own DSM API are in test/plugin-fortanix-dsm.test.ts. Time-dependent
// behaviour (session renewal, the grace period) runs on an injected clock.

interface Seen {
  readonly method: string;
  readonly path: string;
  readonly headers: IncomingHttpHeaders;
  readonly body: string;
}

interface Sobj {
  kid: string;
  name: string;
  material: Buffer;
  obj_type: string;
  key_size: number;
  enabled: boolean;
  key_ops: string[];
  links: { replacement?: string; replaced?: string };
}

type Override = (seen: Seen) => { status: number; body: string | object } | undefined;

const APP_ID = randomUUID();
const SECRET = `standin-secret-${randomBytes(12).toString('hex')}`;
const API_KEY = Buffer.from(`${APP_ID}:${SECRET}`).toString('base64');

class StandIn {
  readonly seen: Seen[] = [];
  readonly keys = new Map<string, Sobj>();
  readonly tokens = new Set<string>();
  url = '';
  expiresIn = 600;
  apiKey = API_KEY;
  /** When set, answers before the normal routes. */
  override: Override | undefined;
  private readonly server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const seen = { method: req.method ?? '', path: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString('utf8') };
      this.seen.push(seen);
      this.route(seen, res);
    });
  });

  async start(t: TestContext): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', () => resolve()));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    t.after(() => this.stop());
    return this;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  addKey(name: string, over: Partial<Sobj> = {}): Sobj {
    const k: Sobj = { kid: randomUUID(), name, material: randomBytes(32), obj_type: 'AES', key_size: 256, enabled: true, key_ops: ['ENCRYPT', 'DECRYPT', 'APPMANAGEABLE'], links: {}, ...over };
    this.keys.set(k.kid, k);
    return k;
  }

  /** As DSM's rekey: the old object is renamed, the new one takes the name. */
  rekey(name: string): Sobj {
    const old = [...this.keys.values()].find((k) => k.name === name)!;
    old.name = `${name} (rotated at ${new Date().toISOString()})`;
    const fresh = this.addKey(name, { links: { replaced: old.kid } });
    old.links.replacement = fresh.kid;
    return fresh;
  }

  count(path: string): number {
    return this.seen.filter((s) => s.path === path).length;
  }

  private send(res: ServerResponse, status: number, body: string | object): void {
    const text = typeof body === 'string' ? body : JSON.stringify(body);
    res.writeHead(status, { 'content-type': typeof body === 'string' ? 'text/plain' : 'application/json' });
    res.end(text);
  }

  private route(s: Seen, res: ServerResponse): void {
    const o = this.override?.(s);
    if (o) return this.send(res, o.status, o.body);
    const auth = s.headers.authorization ?? '';
    if (s.method === 'POST' && s.path === '/sys/v1/session/auth') {
      if (auth !== `Basic ${this.apiKey}`) return this.send(res, 401, 'Invalid API key');
      const token = randomBytes(24).toString('base64url');
      this.tokens.add(token);
      return this.send(res, 200, { token_type: 'Bearer', expires_in: this.expiresIn, access_token: token, entity_id: APP_ID });
    }
    if (!auth.startsWith('Bearer ') || !this.tokens.has(auth.slice(7))) return this.send(res, 401, 'Unauthorized');
    if (s.method === 'POST' && s.path === '/sys/v1/session/terminate') {
      this.tokens.delete(auth.slice(7));
      res.writeHead(204);
      res.end();
      return;
    }
    const view = (k: Sobj) => ({ kid: k.kid, name: k.name, obj_type: k.obj_type, key_size: k.key_size, enabled: k.enabled, key_ops: k.key_ops, links: k.links, state: 'Active' });
    const u = new URL(s.path, 'http://x');
    if (s.method === 'GET' && u.pathname === '/crypto/v1/keys') {
      const name = u.searchParams.get('name');
      return this.send(res, 200, [...this.keys.values()].filter((k) => name === null || k.name === name).map(view));
    }
    const m = /^\/crypto\/v1\/keys\/([0-9a-f-]{36})(?:\/(encrypt|decrypt))?$/.exec(u.pathname);
    const key = m ? this.keys.get(m[1]!) : undefined;
    if (!m || !key) return this.send(res, 404, 'sobject does not exist');
    if (s.method === 'GET' && !m[2]) return this.send(res, 200, view(key));
    const b = JSON.parse(s.body || '{}') as Record<string, string | number>;
    if (b.alg !== 'AES' || b.mode !== 'GCM') return this.send(res, 400, 'unsupported alg or mode');
    if (!key.enabled) return this.send(res, 400, 'Security object is disabled');
    const ad = b.ad !== undefined ? Buffer.from(String(b.ad), 'base64') : undefined;
    if (m[2] === 'encrypt') {
      if (b.tag_len !== 128) return this.send(res, 400, 'tag_len must be given for GCM');
      const iv = randomBytes(12);
      const c = createCipheriv('aes-256-gcm', key.material, iv);
      if (ad) c.setAAD(ad);
      const cipher = Buffer.concat([c.update(Buffer.from(String(b.plain), 'base64')), c.final()]);
      return this.send(res, 200, { kid: key.kid, cipher: cipher.toString('base64'), iv: iv.toString('base64'), tag: c.getAuthTag().toString('base64') });
    }
    try {
      const d = createDecipheriv('aes-256-gcm', key.material, Buffer.from(String(b.iv), 'base64'));
      if (ad) d.setAAD(ad);
      d.setAuthTag(Buffer.from(String(b.tag), 'base64'));
      const plain = Buffer.concat([d.update(Buffer.from(String(b.cipher), 'base64')), d.final()]);
      return this.send(res, 200, { kid: key.kid, plain: plain.toString('base64') });
    } catch {
      return this.send(res, 400, 'Decryption failed: tag mismatch');
    }
  }
}

/** Real time plus jumps: deadlines still pass in real time, expiries and the grace period can be skipped over. */
function manualClock() {
  const c = { offset: 0, now: () => Date.now() + c.offset, advance: (ms: number) => void (c.offset += ms) };
  return c;
}

async function closedPortUrl(): Promise<string> {
  return `http://127.0.0.1:${await freePort()}`;
}

function makeProvider(t: TestContext, endpoints: string[], over: { client?: Partial<DsmClientOptions>; provider?: Partial<DsmProviderOptions>; key?: DsmProviderOptions['key'] } = {}) {
  const events: Array<Record<string, unknown>> = [];
  // One clock for the provider and its client, as the runtime's deadline rule needs.
  const now = over.provider?.now ?? over.client?.now;
  const client = createDsmClient({
    ...(now ? { now } : {}),
    endpoints,
    tls: {},
    apiKey: () => API_KEY,
    timeoutMs: 2000,
    attemptTimeoutMs: 1000,
    backoffMinMs: 50,
    backoffMaxMs: 500,
    ...over.client,
  });
  const provider = createFortanixDsmProvider({
    client,
    cluster: 'prod-a',
    key: over.key ?? { name: 'k8s' },
    timeoutMs: 2000,
    staleAfterMs: 60_000,
    ...(now ? { now } : {}),
    onKeyEvent: (e) => events.push(e),
    ...over.provider,
  });
  t.after(() => provider.close());
  return { provider, events };
}

const ctxOf = (annotations = true) => ({ uid: randomUUID(), annotations });

describe('fortanix-dsm provider (stand-in DSM)', () => {
  it('stand-in: Status round trip, Encrypt and Decrypt go through one DSM session with Bearer tokens', async (t) => {
    const dsm = await new StandIn().start(t);
    const key = dsm.addKey('k8s');
    const { provider, events } = makeProvider(t, [dsm.url]);

    const keyId = await provider.healthCheck();
    assert.equal(keyId, `dsm:${key.kid}`);
    assert.deepEqual(events, [{ kind: 'current', kid: key.kid }]);

    const seed = randomBytes(32);
    const enc = await provider.encrypt(seed, ctxOf());
    assert.equal(enc.keyId, keyId);
    assert.equal(enc.annotations, undefined);
    assert.equal(enc.ciphertext[0], DSM_FORMAT);
    const parsed = parseDsmCiphertext(enc.ciphertext);
    assert.equal(parsed.kid, key.kid);
    assert.equal(parsed.iv.length, 12);
    assert.equal(enc.ciphertext.length, 1 + 16 + 1 + 12 + 16 + 32);
    assert.deepEqual((await provider.decrypt(enc.ciphertext, keyId, {}, { uid: 'u1' })).plaintext, seed);
    // v1beta1 sends no key_id: the kid inside the ciphertext is enough.
    const v1 = await provider.decrypt(enc.ciphertext, undefined, {}, { uid: 'u2' });
    assert.deepEqual(v1.plaintext, seed);
    assert.equal(v1.keyId, keyId);

    // The largest plaintext still fits the apiserver's 1024 bytes.
    const big = await provider.encrypt(randomBytes(provider.maxPlaintextBytes), ctxOf());
    assert.ok(big.ciphertext.length <= 1024);

    // One session: the API key went out once, as Basic; every other call carried the token.
    const authCalls = dsm.seen.filter((s) => s.path === '/sys/v1/session/auth');
    assert.equal(authCalls.length, 1);
    assert.equal(authCalls[0]!.headers.authorization, `Basic ${API_KEY}`);
    const rest = dsm.seen.filter((s) => s.path !== '/sys/v1/session/auth');
    assert.ok(rest.length >= 6);
    for (const s of rest) assert.match(String(s.headers.authorization), /^Bearer /, `${s.method} ${s.path}`);
    for (const s of dsm.seen) assert.ok(!s.path.includes(SECRET) && !s.body.includes(API_KEY) && !s.body.includes(SECRET));
    // What DSM was asked for: AES-GCM, a 128-bit tag, additional data naming the cluster and the object.
    const encBodies = dsm.seen.filter((s) => s.path.endsWith('/encrypt') || s.path.endsWith('/decrypt')).map((s) => JSON.parse(s.body));
    assert.equal(encBodies.length, 6);
    const ad = dsmAd('prod-a', key.kid);
    assert.equal(ad.toString('ascii'), `keyhaven.io/kms-plugin/fortanix-dsm/v2\0cluster=prod-a\0kid=${key.kid}`);
    for (const b of encBodies) assert.deepEqual({ alg: b.alg, mode: b.mode, ad: b.ad }, { alg: 'AES', mode: 'GCM', ad: ad.toString('base64') });
    for (const b of encBodies.filter((x) => x.plain !== undefined)) assert.equal(b.tag_len, 128);
    assert.equal(dsm.seen.filter((s) => s.path === `/crypto/v1/keys/${key.kid}/encrypt`).length, 3);
  });

  it('stand-in: the ciphertext is bound to its kid, its tag and the additional data', async (t) => {
    const dsm = await new StandIn().start(t);
    const key = dsm.addKey('k8s');
    const other = dsm.addKey('other');
    // `other` is one of this provider's objects too, so that DSM (not the known-kid check) judges the moved ciphertext.
    const { provider } = makeProvider(t, [dsm.url], { provider: { previousKids: [other.kid] } });
    const keyId = await provider.healthCheck();
    const enc = await provider.encrypt(randomBytes(32), ctxOf());

    for (const at of [enc.ciphertext.length - 1, 1 + 16 + 1 + 12 + 3]) {
      const bad = Buffer.from(enc.ciphertext);
      bad[at]! ^= 0x01;
      await assert.rejects(provider.decrypt(bad, keyId, {}, { uid: 'u' }), fails('integrity', /does not verify/));
    }
    // The same bytes under another object: DSM's tag check fails (and the key_id no longer matches).
    const moved = Buffer.from(enc.ciphertext);
    Buffer.from(other.kid.replace(/-/g, ''), 'hex').copy(moved, 1);
    await assert.rejects(provider.decrypt(moved, undefined, {}, { uid: 'u' }), fails('integrity'));
    await assert.rejects(provider.decrypt(moved, keyId, {}, { uid: 'u' }), fails('invalid_argument', /does not belong to key_id/));

    // Without the additional data DSM refuses it: a generic DSM client cannot replay it elsewhere by mistake.
    const p = parseDsmCiphertext(enc.ciphertext);
    const d = createDecipheriv('aes-256-gcm', key.material, p.iv);
    d.setAuthTag(p.tag);
    d.update(p.cipher);
    assert.throws(() => d.final());
  });

  it('stand-in: Decrypt refuses malformed ciphertexts and foreign or mismatched key_ids before asking DSM', async (t) => {
    const dsm = await new StandIn().start(t);
    dsm.addKey('k8s');
    const { provider } = makeProvider(t, [dsm.url]);
    const keyId = await provider.healthCheck();
    const enc = await provider.encrypt(randomBytes(32), ctxOf());
    const before = dsm.seen.length;
    await assert.rejects(provider.decrypt(Buffer.from('k8s:enc:aescbc:v1:key1:xxxx'), keyId, {}, { uid: 'u' }), fails('invalid_argument', /not written by the fortanix-dsm provider/));
    await assert.rejects(provider.decrypt(enc.ciphertext.subarray(0, 30), keyId, {}, { uid: 'u' }), fails('invalid_argument', /truncated/));
    await assert.rejects(provider.decrypt(enc.ciphertext, 'kh:abc:def:1:x', {}, { uid: 'u' }), fails('unknown_key_id', /not issued by the fortanix-dsm provider/));
    assert.equal(dsm.seen.length, before, 'none of these reached DSM');
    // A kid this provider does not know: DSM's key listing is read again (another plugin may have met a rekey first), then refused.
    const stranger = randomUUID();
    await assert.rejects(provider.decrypt(enc.ciphertext, `dsm:${stranger}`, {}, { uid: 'u' }), fails('unknown_key_id', new RegExp(`key_id dsm:${stranger} names DSM object ${stranger}, which is not DSM key "k8s", an object it replaced \\(links.replaced\\) or one of provider.previousKids`)));
    assert.deepEqual(dsm.seen.slice(before).map((s) => s.path), ['/crypto/v1/keys?name=k8s'], 'no decrypt reached DSM');
  });

  it('stand-in: a ciphertext written under another cluster name is refused (integrity), though both clusters\' apps use the same DSM object', async (t) => {
    const dsm = await new StandIn().start(t);
    const key = dsm.addKey('k8s');
    const { provider: here } = makeProvider(t, [dsm.url]);
    const { provider: there } = makeProvider(t, [dsm.url], { provider: { cluster: 'prod-b' } });
    const keyId = await here.healthCheck();
    assert.equal(await there.healthCheck(), keyId);
    const seed = randomBytes(32);
    const theirs = await there.encrypt(seed, ctxOf());
    assert.deepEqual((await there.decrypt(theirs.ciphertext, theirs.keyId, {}, { uid: 'u' })).plaintext, seed);
    for (const id of [theirs.keyId, undefined]) {
      const e = await caught(here.decrypt(theirs.ciphertext, id, {}, { uid: 'u' }));
      assert.equal(e.code, 'integrity');
      assert.match(e.message, new RegExp(`does not verify under DSM key ${key.kid} for cluster "prod-a" \\(altered, or written by another cluster`));
      assert.ok(!e.message.includes(seed.toString('base64')) && !e.message.includes(seed.toString('hex')));
    }
    // And this cluster's own still open here.
    const ours = await here.encrypt(seed, ctxOf());
    assert.deepEqual((await here.decrypt(ours.ciphertext, ours.keyId, {}, { uid: 'u' })).plaintext, seed);
  });

  it('stand-in: Decrypt accepts only this provider\'s objects: the current one, those it replaced (links.replaced, read from DSM), previousKids', async (t) => {
    const dsm = await new StandIn().start(t);
    const k1 = dsm.addKey('k8s');
    // Another object the same app can use (another cluster's key in a shared group), with the same cluster name.
    const other = dsm.addKey('other');
    const { provider: a } = makeProvider(t, [dsm.url]);
    const { provider: o } = makeProvider(t, [dsm.url], { key: { name: 'other' } });
    await a.healthCheck();
    await o.healthCheck();
    const seed = randomBytes(32);
    const old = await a.encrypt(seed, ctxOf());
    const foreign = await o.encrypt(seed, ctxOf());
    const decrypts = () => dsm.seen.filter((s) => s.path.endsWith('/decrypt')).length;
    const before = decrypts();
    await assert.rejects(a.decrypt(foreign.ciphertext, foreign.keyId, {}, { uid: 'u' }), fails('unknown_key_id', new RegExp(`names DSM object ${other.kid}, which is not DSM key "k8s"`)));
    await assert.rejects(a.decrypt(foreign.ciphertext, undefined, {}, { uid: 'u' }), fails('unknown_key_id', /the ciphertext names DSM object/));
    assert.equal(decrypts(), before, 'DSM was never asked to decrypt the other object\'s ciphertext');

    // Two rekeys, then a plugin that never saw k1 as current (a restart): it reads k3's history back to k1.
    const k2 = dsm.rekey('k8s');
    const k3 = dsm.rekey('k8s');
    const { provider: b, events } = makeProvider(t, [dsm.url]);
    assert.equal(await b.healthCheck(), `dsm:${k3.kid}`);
    assert.equal(dsm.count(`/crypto/v1/keys/${k2.kid}`), 1);
    assert.equal(dsm.count(`/crypto/v1/keys/${k1.kid}`), 1);
    for (const id of [old.keyId, undefined]) assert.deepEqual((await b.decrypt(old.ciphertext, id, {}, { uid: 'u' })).plaintext, seed);
    await b.healthCheck();
    assert.equal(dsm.count(`/crypto/v1/keys/${k2.kid}`), 1, 'the history is read once, not at every check');
    assert.ok(!events.some((e) => e.kind === 'history-incomplete'));
    await assert.rejects(b.decrypt(foreign.ciphertext, foreign.keyId, {}, { uid: 'u' }), fails('unknown_key_id'));

    // The first plugin has not checked since the rekeys; another node already writes with k3: Decrypt reads DSM again.
    const fresh = await b.encrypt(seed, ctxOf());
    assert.equal(fresh.keyId, `dsm:${k3.kid}`);
    assert.deepEqual((await a.decrypt(fresh.ciphertext, fresh.keyId, {}, { uid: 'u' })).plaintext, seed);

    // A plugin asked to Decrypt before its first Status reads the history then.
    const { provider: c } = makeProvider(t, [dsm.url]);
    assert.deepEqual((await c.decrypt(old.ciphertext, old.keyId, {}, { uid: 'u' })).plaintext, seed);

    // previousKids: an object moved away from by hand, which DSM does not link.
    const { provider: d } = makeProvider(t, [dsm.url], { provider: { previousKids: [other.kid.toUpperCase()] } });
    assert.deepEqual((await d.decrypt(foreign.ciphertext, foreign.keyId, {}, { uid: 'u' })).plaintext, seed);

    // DSM cannot serve the history now: Status still answers (and says so); Decrypt of an old kid is unavailable, then works.
    const k4 = dsm.rekey('k8s');
    dsm.override = (s) => (s.path === `/crypto/v1/keys/${k3.kid}` ? { status: 503, body: 'Service Unavailable' } : undefined);
    const { provider: e, events: eEvents } = makeProvider(t, [dsm.url]);
    assert.equal(await e.healthCheck(), `dsm:${k4.kid}`);
    assert.equal(eEvents.filter((x) => x.kind === 'history-incomplete').length, 1);
    assert.match(String(eEvents.find((x) => x.kind === 'history-incomplete')!.reason), /HTTP 503/);
    await assert.rejects(e.decrypt(old.ciphertext, old.keyId, {}, { uid: 'u' }), fails('unavailable'));
    dsm.override = undefined;
    // The 503 opened the endpoint's breaker (at most 62 ms at backoff.min 50 ms): wait it out.
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual((await e.decrypt(old.ciphertext, old.keyId, {}, { uid: 'u' })).plaintext, seed);
  });

  it('stand-in: a rekey changes the key_id at the next check; Encrypt keeps Status\'s kid until then; old ciphertexts decrypt', async (t) => {
    const dsm = await new StandIn().start(t);
    const k1 = dsm.addKey('k8s');
    const { provider, events } = makeProvider(t, [dsm.url]);
    assert.equal(await provider.healthCheck(), `dsm:${k1.kid}`);
    const old = await provider.encrypt(randomBytes(32), ctxOf());

    const k2 = dsm.rekey('k8s');
    // The apiserver drops an Encrypt reply whose key_id is not Status's: until the next check, the old kid.
    const between = await provider.encrypt(randomBytes(32), ctxOf());
    assert.equal(between.keyId, `dsm:${k1.kid}`);

    assert.equal(await provider.healthCheck(), `dsm:${k2.kid}`);
    assert.deepEqual(events.at(-1), { kind: 'current', kid: k2.kid, previousKid: k1.kid });
    const fresh = await provider.encrypt(randomBytes(32), ctxOf());
    assert.equal(fresh.keyId, `dsm:${k2.kid}`);
    assert.equal(parseDsmCiphertext(fresh.ciphertext).kid, k2.kid);
    for (const e of [old, between, fresh]) {
      assert.equal((await provider.decrypt(e.ciphertext, e.keyId, {}, { uid: 'u' })).keyId, e.keyId);
    }
  });

  it('stand-in: a pinned kid stays in use after a rekey and says so once', async (t) => {
    const dsm = await new StandIn().start(t);
    const k1 = dsm.addKey('k8s');
    const { provider, events } = makeProvider(t, [dsm.url], { key: { kid: k1.kid.toUpperCase() } });
    assert.equal(await provider.healthCheck(), `dsm:${k1.kid}`);
    const k2 = dsm.rekey('k8s');
    assert.equal(await provider.healthCheck(), `dsm:${k1.kid}`);
    assert.equal(await provider.healthCheck(), `dsm:${k1.kid}`);
    assert.deepEqual(events.filter((e) => e.kind === 'pinned-replaced'), [{ kind: 'pinned-replaced', kid: k1.kid, replacement: k2.kid }]);
    assert.ok(dsm.count(`/crypto/v1/keys/${k1.kid}`) >= 3);
  });

  it('stand-in: the session is renewed at two thirds of expires_in, and a session DSM ended early is reopened once', async (t) => {
    const dsm = await new StandIn().start(t);
    dsm.expiresIn = 90;
    dsm.addKey('k8s');
    const clock = manualClock();
    const sessions: Array<{ expiresInS: number; renewed: boolean }> = [];
    const { provider } = makeProvider(t, [dsm.url], { client: { now: clock.now, onSession: (e) => sessions.push(e) }, provider: { now: clock.now } });
    const auths = () => dsm.count('/sys/v1/session/auth');
    await provider.healthCheck();
    assert.equal(auths(), 1);
    clock.advance(59_000);
    await provider.encrypt(randomBytes(32), ctxOf());
    assert.equal(auths(), 1, 'before 2/3 of 90 s the token is reused');
    clock.advance(2_000);
    await provider.encrypt(randomBytes(32), ctxOf());
    assert.equal(auths(), 2, 'after 60 s a new session');
    assert.deepEqual(sessions, [{ expiresInS: 90, renewed: false }, { expiresInS: 90, renewed: true }]);

    // DSM forgets every session (a restart): the next call gets 401, opens one new session, and succeeds.
    dsm.tokens.clear();
    const enc = await provider.encrypt(randomBytes(32), ctxOf());
    assert.equal(auths(), 3);
    await provider.decrypt(enc.ciphertext, enc.keyId, {}, { uid: 'u' });
    assert.equal(auths(), 3);

    // Concurrent calls that all meet an ended session share one re-authentication.
    dsm.tokens.clear();
    await Promise.all(Array.from({ length: 8 }, () => provider.decrypt(enc.ciphertext, enc.keyId, {}, { uid: 'u' })));
    assert.equal(auths(), 4);
  });

  it('stand-in: a renewal DSM cannot serve keeps the current token until it expires', async (t) => {
    const dsm = await new StandIn().start(t);
    dsm.expiresIn = 90;
    dsm.addKey('k8s');
    const clock = manualClock();
    const { provider } = makeProvider(t, [dsm.url], { client: { now: clock.now }, provider: { now: clock.now } });
    await provider.healthCheck();
    dsm.override = (s) => (s.path === '/sys/v1/session/auth' ? { status: 503, body: 'Service Unavailable' } : undefined);
    clock.advance(61_000);
    await provider.healthCheck();
    clock.advance(30_000);
    const e = await caught(provider.healthCheck());
    assert.equal(e.code, 'unavailable');
  });

  it('stand-in: a refused API key, or a token refused right after a new session, fails with unauthenticated and never shows a secret', async (t) => {
    const dsm = await new StandIn().start(t);
    dsm.addKey('k8s');
    const { provider } = makeProvider(t, [dsm.url]);
    await provider.healthCheck();
    const enc = await provider.encrypt(randomBytes(32), ctxOf());

    // The app's API key was rotated in DSM: its sessions end and a new one is refused.
    dsm.apiKey = Buffer.from(`${APP_ID}:another-secret`).toString('base64');
    dsm.tokens.clear();
    const e1 = await caught(provider.healthCheck());
    assert.equal(e1.code, 'unauthenticated');
    assert.match(e1.message, /DSM refused the app's API key/);
    // Status failed for a non-transient reason: Encrypt refuses at once, whatever the grace period.
    await assert.rejects(provider.encrypt(randomBytes(32), ctxOf()), fails('unauthenticated'));
    await assert.rejects(provider.decrypt(enc.ciphertext, enc.keyId, {}, { uid: 'u' }), fails('unauthenticated'));

    // A DSM that issues tokens and refuses them: one retry, then a precise error.
    dsm.apiKey = API_KEY;
    dsm.override = (s) => (s.path !== '/sys/v1/session/auth' ? { status: 401, body: `token ${String(s.headers.authorization)} is not valid` } : undefined);
    const e2 = await caught(provider.healthCheck());
    assert.equal(e2.code, 'unauthenticated');
    assert.match(e2.message, /refused a session it had just opened/);
    // The server echoed the Authorization header; the message has it scrubbed.
    assert.match(e2.message, /\[redacted\]/);
    for (const e of [e1, e2]) {
      assert.ok(!e.message.includes(API_KEY) && !e.message.includes(SECRET), e.message);
      for (const tok of dsm.tokens) assert.ok(!e.message.includes(tok), e.message);
    }
  });

  it('stand-in: DSM errors are classified (and Status reacts: transient ones ride the grace period)', async (t) => {
    const dsm = await new StandIn().start(t);
    const key = dsm.addKey('k8s');
    const clock = manualClock();
    const { provider } = makeProvider(t, [dsm.url], { provider: { now: clock.now } });
    await provider.healthCheck();
    const enc = await provider.encrypt(randomBytes(32), ctxOf());
    const cases: Array<[number, string, string]> = [
      [400, 'Bad request: plain is not base64', 'invalid_argument'],
      [403, 'Forbidden: app lacks ENCRYPT permission on the group', 'permission_denied'],
      [404, 'sobject does not exist', 'not_found'],
      [429, 'Too Many Requests', 'too_many_attempts'],
      [500, 'Internal Server Error', 'unavailable'],
      [503, 'Service Unavailable', 'unavailable'],
      [400, 'Security object is disabled', 'key_disabled'],
    ];
    for (const [status, body, code] of cases) {
      dsm.override = (s) => (s.path.endsWith('/encrypt') ? { status, body } : undefined);
      const e = await caught(provider.encrypt(randomBytes(32), ctxOf()));
      assert.equal(e.code, code, `${status} ${body}: ${e.message}`);
      assert.match(e.message, new RegExp(`HTTP ${status}`));
      dsm.override = undefined;
      // A 5xx opened the client's breaker for this endpoint (at most 62 ms at backoff.min 50 ms): wait it out.
      if (status >= 500) await new Promise((r) => setTimeout(r, 300));
      await provider.healthCheck();
    }
    // JSON error bodies are read too.
    dsm.override = (s) => (s.path.endsWith('/encrypt') ? { status: 403, body: { code: 403, message: 'not allowed' } } : undefined);
    await assert.rejects(provider.encrypt(randomBytes(32), ctxOf()), fails('permission_denied', /HTTP 403: not allowed/));
    dsm.override = undefined;

    // Through the Status monitor: a 429 or a 503 keeps the last key_id (grace); a 403 fails Status at once.
    const monitor = createStatusMonitor(provider, { cacheTtlMs: 0, graceMs: 60_000, now: clock.now });
    const good = await monitor.check();
    assert.equal(good.keyId, `dsm:${key.kid}`);
    dsm.override = (s) => (s.path.endsWith('/decrypt') ? { status: 429, body: 'Too Many Requests' } : undefined);
    assert.deepEqual(await monitor.check(), { keyId: good.keyId, degraded: true });
    // Within the grace period Encrypt still works with the confirmed kid.
    await provider.encrypt(randomBytes(32), ctxOf());
    clock.advance(61_000);
    await assert.rejects(provider.encrypt(randomBytes(32), ctxOf()), fails('unavailable', /grace period/));
    dsm.override = (s) => (s.path.startsWith('/crypto/v1/keys?') ? { status: 403, body: 'Forbidden' } : undefined);
    await assert.rejects(monitor.check(), fails('permission_denied'));
    dsm.override = undefined;
    assert.equal((await monitor.check()).degraded, false);
    // Decrypt: a DSM "bad request" on a ciphertext we built means it does not verify.
    dsm.override = (s) => (s.path.endsWith('/decrypt') ? { status: 400, body: 'Decryption failed' } : undefined);
    await assert.rejects(provider.decrypt(enc.ciphertext, enc.keyId, {}, { uid: 'u' }), fails('integrity', /HTTP 400/));
  });

  it('stand-in: the key read refuses objects the plugin must not write with', async (t) => {
    const dsm = await new StandIn().start(t);
    const key = dsm.addKey('k8s');
    const { provider } = makeProvider(t, [dsm.url]);
    await provider.healthCheck();
    const tweaks: Array<[Partial<Sobj>, string, RegExp]> = [
      [{ enabled: false }, 'key_disabled', /is disabled in DSM/],
      [{ obj_type: 'RSA' }, 'failed_precondition', /is a RSA object/],
      [{ key_size: 128 }, 'failed_precondition', /AES-128/],
      [{ key_ops: ['ENCRYPT'] }, 'failed_precondition', /does not allow DECRYPT/],
      [{ name: 'renamed' }, 'not_found', /DSM key "k8s" does not exist/],
    ];
    for (const [tweak, code, msg] of tweaks) {
      const saved = { ...key, key_ops: [...key.key_ops] };
      Object.assign(key, tweak);
      await assert.rejects(provider.healthCheck(), fails(code as never, msg));
      Object.assign(key, saved);
      await provider.healthCheck();
    }
    // Two objects with the name (DSM forbids it; a copy in another account view could): refuse rather than guess.
    dsm.addKey('k8s');
    await assert.rejects(provider.healthCheck(), fails('failed_precondition', /2 DSM objects are named "k8s"/));
  });

  it('stand-in: an endpoint that is down is passed over for the next one', async (t) => {
    const dsm = await new StandIn().start(t);
    const key = dsm.addKey('k8s');
    const down = await closedPortUrl();
    const states: Array<[string, boolean]> = [];
    const { provider } = makeProvider(t, [down, dsm.url], { client: { onServerState: (s, up) => states.push([s, up]) } });
    assert.equal(await provider.healthCheck(), `dsm:${key.kid}`);
    const enc = await provider.encrypt(randomBytes(32), ctxOf());
    await provider.decrypt(enc.ciphertext, enc.keyId, {}, { uid: 'u' });
    assert.deepEqual(states[0], [down, false]);
    // Every endpoint down: unavailable (transient: Status rides its grace period).
    await dsm.stop();
    const e = await caught(provider.encrypt(randomBytes(32), ctxOf()));
    assert.equal(e.code, 'unavailable');
  });
});

describe('fortanix-dsm provider builder (stand-in DSM)', () => {
  function setup(t: TestContext, dsmUrl: string, apiKey: string, mode = 0o600, extra: Record<string, unknown> = {}) {
    const dir = ownedTempDir('kh-dsm-');
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, 'dsm-api-key');
    writeFileSync(file, `${apiKey}\n`, { mode: 0o600 });
    chmodSync(file, mode);
    const cfg = parsePluginConfig({ socket: `unix://${join(dir, 'kms.sock')}`, provider: { type: 'fortanix-dsm', cluster: 'prod-a', endpoints: [dsmUrl], apiKeyFile: file, keyName: 'k8s', ...extra } }, 'test');
    let out = '';
    const destination = new Writable({
      write(chunk, _enc, cb) {
        out += String(chunk);
        cb();
      },
    });
    const logger = createLogger({ level: 'trace', destination });
    return { cfg, logger, output: () => out, p: cfg.provider as FortanixDsmProviderConfig };
  }

  it('stand-in: builds from plugin.yaml fields, logs the session and key at trace level without the API key or token', async (t) => {
    const dsm = await new StandIn().start(t);
    const key = dsm.addKey('k8s');
    const { cfg, logger, output, p } = setup(t, dsm.url, API_KEY);
    const metrics = createPluginMetrics();
    const provider: KmsProvider = await buildFortanixDsmProvider(p, { cfg, logger, metrics });
    assert.equal(provider.kind, 'fortanix-dsm');
    assert.equal(await provider.healthCheck(), `dsm:${key.kid}`);
    const enc = await provider.encrypt(randomBytes(32), ctxOf());
    await provider.decrypt(enc.ciphertext, enc.keyId, {}, { uid: 'u' });
    dsm.tokens.clear();
    await provider.decrypt(enc.ciphertext, enc.keyId, {}, { uid: 'u' });
    await provider.close();
    assert.equal(dsm.count('/sys/v1/session/terminate'), 1, 'the session is ended on close');
    const text = await metrics.registry.metrics();
    assert.match(text, new RegExp(`keyhaven_plugin_key_server_calls_total\\{server="${dsm.url}",operation="encrypt",result="ok"\\} 2`));
    const lines = output();
    assert.match(lines, /DSM session opened/);
    assert.match(lines, /DSM session renewed/);
    assert.match(lines, /DSM security object in use/);
    const tokens = dsm.seen.map((s) => String(s.headers.authorization ?? '').replace(/^(Basic|Bearer) /, '')).filter(Boolean);
    assert.ok(tokens.length > 3);
    for (const secret of [API_KEY, SECRET, ...tokens]) {
      assert.ok(!lines.includes(secret), 'a secret reached the log');
      assert.ok(!text.includes(secret), 'a secret reached the metrics');
    }
  });

  it('stand-in: refuses an API key file others can read, and a value that is not a DSM API key, naming the file and never the value', async (t) => {
    const dsm = await new StandIn().start(t);
    const loose = setup(t, dsm.url, API_KEY, 0o644);
    await assert.rejects(buildFortanixDsmProvider(loose.p, { cfg: loose.cfg, logger: loose.logger, metrics: createPluginMetrics() }), fails('config_invalid', /readable or writable by group or others; chmod 600/));
    const notDsm = 'kha_live_0123456789abcdef0123456789';
    const wrong = setup(t, dsm.url, notDsm);
    const e = await caught(buildFortanixDsmProvider(wrong.p, { cfg: wrong.cfg, logger: wrong.logger, metrics: createPluginMetrics() }));
    assert.equal(e.code, 'config_invalid');
    assert.match(e.message, /does not hold a DSM API key \(base64 of "app-id:secret"/);
    assert.ok(!e.message.includes(notDsm));
    assert.equal(dsm.seen.length, 0, 'nothing was sent');
  });
});
