import { describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync, writeFileSync, unlinkSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders, type ServerResponse } from 'node:http';
import { createServer as createTcpServer, type AddressInfo, type Socket } from 'node:net';
import { join } from 'node:path';
import { KeyhavenError } from '../errors.js';
import { apiKeySource, createKeyServerClient, KEYHAVEN_HEALTH_PROBE, type KeyServerClientOptions } from './key-server-client.js';
import { caught, code as fails } from '../../test/expect-error.js';
import { freePort } from '../../test/ports.js';
import { ownedTempDir } from '../../test/reaper.js';

// Every test talks to real HTTP servers on 127.0.0.1. Tests never depend on
// timing: breaker windows are driven by an injected clock, and where real time
// has to pass (a hanging server, a real back-off) only generous upper bounds
// are asserted, to prove that nothing hung forever.

interface Seen {
  readonly path: string;
  readonly headers: IncomingHttpHeaders;
  readonly body: string;
}
type Handler = (seen: Seen, res: ServerResponse) => void;

interface TestServer {
  readonly url: string;
  readonly port: number;
  /** Requests received, in order. */
  readonly seen: Seen[];
  /** TCP connections accepted. */
  connections: number;
  /** What the server does with the next requests; may be swapped during a test. */
  handler: Handler;
  close(): Promise<void>;
}

function json(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function raw(res: ServerResponse, status: number, body: string | Buffer, type = 'text/plain'): void {
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

const ok: Handler = (seen, res) => json(res, 200, { ok: true, echo: JSON.parse(seen.body) as unknown });
const hang: Handler = () => {};
const refuse =
  (status: number, error: Record<string, unknown>): Handler =>
  (_seen, res) =>
    json(res, status, { error });

async function startServer(t: TestContext, handler: Handler, port = 0): Promise<TestServer> {
  const server = createServer();
  const s: TestServer = {
    url: '',
    port: 0,
    seen: [],
    connections: 0,
    handler,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  server.on('connection', () => {
    s.connections += 1;
  });
  server.on('request', (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const seen: Seen = { path: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString('utf8') };
      s.seen.push(seen);
      s.handler(seen, res);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const bound = (server.address() as AddressInfo).port;
  Object.assign(s, { port: bound, url: `http://127.0.0.1:${bound}` });
  t.after(() => s.close());
  return s;
}


function manualClock() {
  const clock = {
    t: Date.now(),
    now: () => clock.t,
    advance: (ms: number) => {
      clock.t += ms;
    },
  };
  return clock;
}

function makeClient(t: TestContext, servers: string[], over: Partial<KeyServerClientOptions> = {}) {
  const attempts: Array<[string, string, string]> = [];
  const states: Array<[string, boolean, string | undefined]> = [];
  const client = createKeyServerClient({
    servers,
    tls: {},
    apiKey: () => 'kha_test_key',
    cluster: 'prod-eu-1',
    timeoutMs: 5_000,
    attemptTimeoutMs: 2_000,
    backoffMinMs: 50,
    backoffMaxMs: 1_000,
    onAttempt: (server, operation, result) => attempts.push([server, operation, result]),
    onServerState: (server, up, reason) => states.push([server, up, reason]),
    ...over,
  });
  t.after(() => client.close());
  return { client, attempts, states };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

describe('plugin/key-server-client: order and headers', () => {
  it('sends every call to the first of two healthy servers', async (t) => {
    const a = await startServer(t, ok);
    const b = await startServer(t, ok);
    const { client, attempts, states } = makeClient(t, [a.url, b.url]);
    for (let i = 0; i < 5; i++) {
      const out = await client.post<{ ok: boolean; echo: unknown }>('status', '/v1/keys/k/status', { n: i });
      assert.deepEqual(out, { ok: true, echo: { n: i } });
    }
    assert.equal(a.seen.length, 5);
    assert.equal(b.seen.length, 0);
    assert.equal(b.connections, 0);
    assert.deepEqual(
      attempts,
      [0, 1, 2, 3, 4].map(() => [a.url, 'status', 'ok']),
    );
    assert.deepEqual(states, [], 'no server changed state');
    assert.deepEqual(client.servers(), [
      { url: a.url, up: true, consecutiveFailures: 0, retryAt: 0 },
      { url: b.url, up: true, consecutiveFailures: 0, retryAt: 0 },
    ]);
  });

  it('sends the API key, the cluster, the uid and the JSON body', async (t) => {
    const a = await startServer(t, ok);
    const { client } = makeClient(t, [a.url]);
    await client.post('encrypt', '/v1/keys/k/encrypt', { plaintext: 'AAEC' }, { uid: 'c0ffee-42' });
    const seen = a.seen[0]!;
    assert.equal(seen.path, '/v1/keys/k/encrypt');
    assert.equal(seen.headers.authorization, 'Bearer kha_test_key');
    assert.equal(seen.headers['x-keyhaven-cluster'], 'prod-eu-1');
    assert.equal(seen.headers['x-keyhaven-uid'], 'c0ffee-42');
    assert.equal(seen.headers['content-type'], 'application/json');
    assert.deepEqual(JSON.parse(seen.body), { plaintext: 'AAEC' });
  });

  it('sends the recovery id on every call when given one, and no recovery header otherwise', async (t) => {
    const a = await startServer(t, ok);
    const { client } = makeClient(t, [a.url], { recoveryId: '0123456789abcdef' });
    await client.post('decrypt', '/v1/keys/k/decrypt', { ciphertext: 'x' });
    await client.post('status', '/v1/keys/k/status', {});
    assert.deepEqual(a.seen.map((s) => s.headers['x-keyhaven-recovery']), ['0123456789abcdef', '0123456789abcdef']);
    const b = await startServer(t, ok);
    const plain = makeClient(t, [b.url]);
    await plain.client.post('decrypt', '/v1/keys/k/decrypt', { ciphertext: 'x' });
    assert.equal(b.seen[0]!.headers['x-keyhaven-recovery'], undefined);
  });

  it('sends a uid of 128 printable characters', async (t) => {
    const a = await startServer(t, ok);
    const { client } = makeClient(t, [a.url]);
    const uid = 'u'.repeat(128);
    await client.post('encrypt', '/e', {}, { uid });
    assert.equal(a.seen[0]!.headers['x-keyhaven-uid'], uid);
  });

  for (const [label, uid] of [
    ['with a space', 'a b'],
    ['with a tab', 'a\tb'],
    ['with a control character', 'a\u0001b'],
    ['with a non-ASCII character', 'über'],
    ['longer than 128 characters', 'u'.repeat(129)],
    ['empty', ''],
  ] as const) {
    it(`omits a uid ${label}, and the call still succeeds`, async (t) => {
      const a = await startServer(t, ok);
      const { client } = makeClient(t, [a.url]);
      await client.post('encrypt', '/e', {}, { uid });
      assert.equal(a.seen.length, 1);
      assert.equal(a.seen[0]!.headers['x-keyhaven-uid'], undefined);
      assert.equal(a.seen[0]!.headers['x-keyhaven-cluster'], 'prod-eu-1');
    });
  }

  it('omits the uid when none is given', async (t) => {
    const a = await startServer(t, ok);
    const { client } = makeClient(t, [a.url]);
    await client.post('status', '/s', {});
    assert.equal(a.seen[0]!.headers['x-keyhaven-uid'], undefined);
  });
});

describe('plugin/key-server-client: failover and circuit breaker', () => {
  it('fails over from a closed port, keeps it out during the back-off, then prefers it again once it answers', async (t) => {
    const clock = manualClock();
    const port = await freePort();
    const aUrl = `http://127.0.0.1:${port}`;
    const b = await startServer(t, ok);
    const { client, attempts, states } = makeClient(t, [aUrl, b.url], { now: clock.now });

    assert.deepEqual(await client.post('status', '/s', { n: 1 }), { ok: true, echo: { n: 1 } });
    assert.equal(b.seen.length, 1);
    assert.deepEqual(attempts, [
      [aUrl, 'status', 'unavailable'],
      [b.url, 'status', 'ok'],
    ]);
    assert.equal(states.length, 1);
    assert.equal(states[0]![0], aUrl);
    assert.equal(states[0]![1], false);
    assert.match(states[0]![2]!, new RegExp(`key server ${escape(aUrl)} is unreachable \\(ECONNREFUSED\\)`));

    const [sa, sb] = client.servers();
    assert.equal(sa!.url, aUrl);
    assert.equal(sa!.up, false);
    assert.equal(sa!.consecutiveFailures, 1);
    assert.ok(sa!.retryAt > clock.t, `retryAt ${sa!.retryAt} is in the future (now ${clock.t})`);
    assert.ok(sa!.retryAt <= clock.t + 63, 'the first back-off is backoffMin with at most 25 % jitter');
    assert.match(sa!.lastError!, /unreachable/);
    assert.deepEqual(sb, { url: b.url, up: true, consecutiveFailures: 0, retryAt: 0 });

    // Inside the back-off: straight to the second server, the first is not tried.
    attempts.length = 0;
    await client.post('status', '/s', { n: 2 });
    assert.deepEqual(attempts, [[b.url, 'status', 'ok']]);
    assert.equal(b.seen.length, 2);
    assert.equal(client.servers()[0]!.consecutiveFailures, 1, 'not counted again: it was not tried');

    // The first server comes back on the same port; after the back-off it is tried first again.
    const a = await startServer(t, ok, port);
    attempts.length = 0;
    await client.post('status', '/s', { n: 3 });
    assert.equal(a.seen.length, 0, 'still inside the back-off');
    clock.advance(100);
    await client.post('status', '/s', { n: 4 });
    assert.equal(a.seen.length, 1);
    assert.deepEqual(attempts, [
      [b.url, 'status', 'ok'],
      [aUrl, 'status', 'ok'],
    ]);
    assert.deepEqual(states[1], [aUrl, true, undefined]);
    assert.deepEqual(client.servers()[0], { url: aUrl, up: true, consecutiveFailures: 0, retryAt: 0 });

    // Healthy again: preferred to the second.
    await client.post('status', '/s', { n: 5 });
    await client.post('status', '/s', { n: 6 });
    assert.equal(a.seen.length, 3);
    assert.equal(b.seen.length, 3);
  });

  it('does not touch a failing server during its back-off (counted on a server that accepts)', async (t) => {
    const clock = manualClock();
    const a = await startServer(t, refuse(503, { code: 'sealed', message: 'the server is sealed' }));
    const b = await startServer(t, ok);
    const { client, attempts, states } = makeClient(t, [a.url, b.url], { now: clock.now });

    await client.post('status', '/s', {});
    assert.equal(a.seen.length, 1);
    assert.equal(a.connections, 1);
    assert.equal(b.seen.length, 1);
    assert.deepEqual(attempts, [
      [a.url, 'status', 'sealed'],
      [b.url, 'status', 'ok'],
    ]);
    assert.equal(states.length, 1);
    assert.deepEqual(states[0]!.slice(0, 2), [a.url, false]);
    assert.match(states[0]![2]!, /refused status: the server is sealed/);

    for (let i = 0; i < 3; i++) await client.post('status', '/s', {});
    assert.equal(a.seen.length, 1, 'no request reached the failing server');
    assert.equal(a.connections, 1, 'no connection was opened to it either');
    assert.equal(b.seen.length, 4);

    // After the back-off it is tried again; still failing: the wait doubles (100 ms ± 25 %).
    clock.advance(100);
    await client.post('status', '/s', {});
    assert.equal(a.seen.length, 2);
    const s = client.servers()[0]!;
    assert.equal(s.consecutiveFailures, 2);
    assert.ok(s.retryAt - clock.t >= 75 && s.retryAt - clock.t <= 125, `second back-off ${s.retryAt - clock.t} ms`);
    assert.equal(states.length, 1, 'the same reason is not reported twice');

    // It answers again: preferred from then on.
    a.handler = ok;
    clock.advance(200);
    await client.post('status', '/s', {});
    await client.post('status', '/s', {});
    assert.equal(a.seen.length, 4);
    assert.equal(b.seen.length, 5);
    assert.deepEqual(states.at(-1), [a.url, true, undefined]);
    assert.equal(client.servers()[0]!.up, true);
  });

  it('lets one call at a time probe a server whose back-off is over', async (t) => {
    const clock = manualClock();
    const a = await startServer(t, hang);
    const b = await startServer(t, ok);
    const { client } = makeClient(t, [a.url, b.url], { now: clock.now, attemptTimeoutMs: 200, timeoutMs: 10_000 });
    await client.post('status', '/s', {});
    assert.equal(a.seen.length, 1);
    clock.advance(100);
    // Both calls start together: the first probes the hanging server, the second does not wait for it.
    const probe = client.post('status', '/s', { n: 'probe' });
    const other = client.post('status', '/s', { n: 'other' });
    assert.deepEqual(await other, { ok: true, echo: { n: 'other' } });
    assert.deepEqual(await probe, { ok: true, echo: { n: 'probe' } });
    assert.equal(a.seen.length, 2, 'only one of the two calls reached the hanging server');
    assert.equal(JSON.parse(a.seen[1]!.body).n, 'probe');
    const s = client.servers()[0]!;
    assert.equal(s.consecutiveFailures, 2);
    assert.ok(s.retryAt > clock.t, 'the failed probe opened the breaker again');
  });

  it('retries a failed server after a real back-off of backoffMinMs', async (t) => {
    const a = await startServer(t, refuse(503, { code: 'unavailable', message: 'storage is down' }));
    const b = await startServer(t, ok);
    const { client } = makeClient(t, [a.url, b.url], { backoffMinMs: 50 });
    await client.post('status', '/s', {});
    assert.equal(a.seen.length, 1);
    assert.equal(b.seen.length, 1);
    a.handler = ok;
    await sleep(300); // well past 50 ms + 25 % jitter
    await client.post('status', '/s', {});
    assert.equal(a.seen.length, 2, 'the first server was tried again');
    await client.post('status', '/s', {});
    assert.equal(a.seen.length, 3, 'and is preferred again');
    assert.equal(b.seen.length, 1);
  });

  it('fails over from a server that accepts but never answers, after attemptTimeoutMs', async (t) => {
    const a = await startServer(t, hang);
    const b = await startServer(t, ok);
    const { client, attempts, states } = makeClient(t, [a.url, b.url], { attemptTimeoutMs: 200, timeoutMs: 10_000 });
    // B answered: the hung attempt on A ended by attemptTimeoutMs, not by the call's deadline.
    assert.deepEqual(await client.post('status', '/s', { n: 1 }), { ok: true, echo: { n: 1 } });
    assert.equal(a.seen.length, 1);
    assert.equal(b.seen.length, 1);
    assert.deepEqual(attempts, [
      [a.url, 'status', 'unavailable'],
      [b.url, 'status', 'ok'],
    ]);
    assert.match(states[0]![2]!, new RegExp(`key server ${escape(a.url)} did not answer in time`));
    assert.equal(client.servers()[0]!.up, false);
  });

  it('rejects with unavailable "did not answer in time" when the only server hangs', async (t) => {
    const a = await startServer(t, hang);
    const { client } = makeClient(t, [a.url], { attemptTimeoutMs: 200, timeoutMs: 10_000 });
    // A never answers: only a deadline can settle the call.
    const e = await caught(client.post('status', '/s', {}));
    assert.equal(e.code, 'unavailable');
    assert.equal(e.message, `key server ${a.url} did not answer in time`);
    assert.equal(a.seen.length, 1);
  });

  it('caps an attempt at the call deadline when timeoutMs < attemptTimeoutMs', async (t) => {
    const a = await startServer(t, hang);
    const { client } = makeClient(t, [a.url], { attemptTimeoutMs: 30_000, timeoutMs: 200 });
    const started = Date.now();
    await assert.rejects(client.post('status', '/s', {}), fails('unavailable', /did not answer in time/));
    assert.ok(Date.now() - started < 5_000, 'did not wait for attemptTimeoutMs');
  });

  it('rejects at once with "every key server is failing" while every breaker is open', async (t) => {
    const clock = manualClock();
    const a = await startServer(t, refuse(503, { code: 'sealed', message: 'sealed A' }));
    const b = await startServer(t, refuse(500, { code: 'internal', message: 'bug B' }));
    const { client, attempts } = makeClient(t, [a.url, b.url], { now: clock.now, backoffMinMs: 5_000, backoffMaxMs: 60_000 });

    // The first call tries both and reports the last answer.
    await assert.rejects(client.post('status', '/s', {}), fails('internal', /bug B/));
    assert.equal(a.seen.length, 1);
    assert.equal(b.seen.length, 1);
    assert.deepEqual(
      client.servers().map((s) => [s.up, s.consecutiveFailures]),
      [
        [false, 1],
        [false, 1],
      ],
    );

    attempts.length = 0;
    clock.advance(1_000);
    const e = await caught(client.post('status', '/s', {}));
    assert.equal(e.code, 'unavailable');
    assert.match(e.message, /^every key server is failing; next attempt in \d+(\.\d)? s \(/);
    assert.ok(e.message.includes(`${a.url}: key server ${a.url} refused status: sealed A`), e.message);
    assert.ok(e.message.includes(`${b.url}: key server ${b.url} refused status: bug B`), e.message);
    const next = Number(/next attempt in ([\d.]+) s/.exec(e.message)![1]);
    assert.ok(next > 2.5 && next <= 5.3, `next attempt in ${next} s`);
    assert.equal(a.seen.length, 1, 'no server was called');
    assert.equal(b.seen.length, 1, 'no server was called');
    assert.deepEqual(attempts, []);
  });

  it('rejects with the last error when every server is unreachable', async (t) => {
    const p1 = await freePort();
    const p2 = await freePort();
    const { client, attempts } = makeClient(t, [`http://127.0.0.1:${p1}`, `http://127.0.0.1:${p2}`]);
    await assert.rejects(client.post('status', '/s', {}), fails('unavailable', new RegExp(`127\\.0\\.0\\.1:${p2} is unreachable`)));
    assert.equal(attempts.length, 2);
  });
});

describe('plugin/key-server-client: answers', () => {
  it('fails over on 503 sealed', async (t) => {
    const a = await startServer(t, refuse(503, { code: 'sealed', message: 'the server is sealed' }));
    const b = await startServer(t, ok);
    const { client } = makeClient(t, [a.url, b.url]);
    assert.deepEqual(await client.post('status', '/s', { x: 1 }), { ok: true, echo: { x: 1 } });
    assert.equal(a.seen.length, 1);
    assert.equal(b.seen.length, 1);
    assert.equal(client.servers()[0]!.up, false);
  });

  for (const code of ['unavailable', 'audit_failed', 'internal'] as const) {
    it(`fails over on 5xx ${code}`, async (t) => {
      const a = await startServer(t, refuse(code === 'unavailable' ? 503 : 500, { code }));
      const b = await startServer(t, ok);
      const { client } = makeClient(t, [a.url, b.url]);
      await client.post('status', '/s', {});
      assert.equal(b.seen.length, 1);
    });
  }

  it('does not fail over on 403 permission_denied; the error carries the server message and request id', async (t) => {
    const a = await startServer(
      t,
      refuse(403, { code: 'permission_denied', message: 'app "kms" may not encrypt with key k', requestId: 'req-7f3a' }),
    );
    const b = await startServer(t, ok);
    const { client, attempts, states } = makeClient(t, [a.url, b.url]);
    const e = await caught(client.post('encrypt', '/v1/keys/k/encrypt', {}));
    assert.equal(e.code, 'permission_denied');
    assert.ok(e.message.includes('app "kms" may not encrypt with key k'), e.message);
    assert.ok(e.message.includes('req-7f3a'), e.message);
    assert.equal(e.message, `key server ${a.url} refused encrypt: app "kms" may not encrypt with key k [request req-7f3a]`);
    assert.equal(b.seen.length, 0, 'the second server is never called');
    assert.equal(b.connections, 0);
    assert.deepEqual(attempts, [[a.url, 'encrypt', 'permission_denied']]);
    assert.deepEqual(states, []);
    assert.equal(client.servers()[0]!.up, true, 'a server that answers is up');
  });

  it('maps 409 key_disabled to key_disabled, without failover', async (t) => {
    const a = await startServer(t, refuse(409, { code: 'key_disabled', message: 'key k is disabled' }));
    const b = await startServer(t, ok);
    const { client } = makeClient(t, [a.url, b.url]);
    await assert.rejects(client.post('encrypt', '/e', {}), fails('key_disabled', /key k is disabled/));
    assert.equal(b.seen.length, 0);
  });

  it('does not fail over on a 5xx with a final code (integrity)', async (t) => {
    const a = await startServer(t, refuse(500, { code: 'integrity', message: 'ciphertext does not verify' }));
    const b = await startServer(t, ok);
    const { client } = makeClient(t, [a.url, b.url]);
    await assert.rejects(client.post('decrypt', '/d', {}), fails('integrity', /does not verify/));
    assert.equal(b.seen.length, 0);
  });

  it('maps an unknown error code in a 4xx to invalid_argument', async (t) => {
    const a = await startServer(t, refuse(422, { code: 'no_such_code', message: 'odd' }));
    const b = await startServer(t, ok);
    const { client } = makeClient(t, [a.url, b.url]);
    await assert.rejects(client.post('encrypt', '/e', {}), fails('invalid_argument', /refused encrypt: odd$/));
    assert.equal(b.seen.length, 0);
  });

  it('maps an unknown error code in a 5xx to unavailable, and fails over', async (t) => {
    const a = await startServer(t, refuse(502, { code: 'no_such_code', message: 'odd' }));
    const { client } = makeClient(t, [a.url]);
    await assert.rejects(client.post('encrypt', '/e', {}), fails('unavailable', /refused encrypt: odd$/));

    const a2 = await startServer(t, refuse(500, { code: 'no_such_code' }));
    const b2 = await startServer(t, ok);
    const { client: c2 } = makeClient(t, [a2.url, b2.url]);
    await c2.post('encrypt', '/e', {});
    assert.equal(b2.seen.length, 1);
  });

  it('uses "HTTP <status>" when the error body has no message', async (t) => {
    const a = await startServer(t, (_s, res) => json(res, 404, { error: { code: 'not_found' } }));
    const { client } = makeClient(t, [a.url]);
    await assert.rejects(client.post('status', '/s', {}), fails('not_found', /refused status: HTTP 404$/));
  });

  it('rejects a body that is not JSON with unavailable and a precise message', async (t) => {
    const a = await startServer(t, (_s, res) => raw(res, 200, '<html>proxy login</html>', 'text/html'));
    const { client } = makeClient(t, [a.url]);
    const e = await caught(client.post('status', '/s', {}));
    assert.equal(e.code, 'unavailable');
    assert.equal(e.message, `key server ${a.url} answered HTTP 200 with a body that is not JSON`);
  });

  it('fails over on a 502 with an HTML body (a proxy in front of a dead server)', async (t) => {
    const a = await startServer(t, (_s, res) => raw(res, 502, '<html>Bad Gateway</html>', 'text/html'));
    const b = await startServer(t, ok);
    const { client, attempts } = makeClient(t, [a.url, b.url]);
    await client.post('status', '/s', {});
    assert.deepEqual(attempts, [
      [a.url, 'status', 'unavailable'],
      [b.url, 'status', 'ok'],
    ]);
  });

  it('rejects a body over 1 MiB with unavailable', async (t) => {
    const big = Buffer.alloc(1024 * 1024 + 1, 0x61);
    const a = await startServer(t, (_s, res) => raw(res, 200, big, 'application/json'));
    const { client } = makeClient(t, [a.url]);
    const e = await caught(client.post('status', '/s', {}));
    assert.equal(e.code, 'unavailable');
    assert.equal(e.message, `key server ${a.url} answered more than 1048576 bytes`);
  });

  it('rejects a chunked body over 1 MiB (no content-length) with unavailable', async (t) => {
    const a = await startServer(t, (_s, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      const chunk = Buffer.alloc(64 * 1024, 0x61);
      for (let i = 0; i < 17; i++) res.write(chunk);
      res.end();
    });
    const { client } = makeClient(t, [a.url]);
    await assert.rejects(client.post('status', '/s', {}), fails('unavailable', /answered more than 1048576 bytes/));
  });

  it('accepts a JSON body of exactly 1 MiB', async (t) => {
    const size = 1024 * 1024;
    const text = `{"x":"${'a'.repeat(size - 8)}"}`;
    assert.equal(Buffer.byteLength(text), size);
    const a = await startServer(t, (_s, res) => raw(res, 200, text, 'application/json'));
    const { client } = makeClient(t, [a.url]);
    const out = await client.post<{ x: string }>('status', '/s', {});
    assert.equal(out.x.length, size - 8);
  });
});

describe('plugin/key-server-client: 401 and API key rotation', () => {
  const rotatingServer = (good: string): Handler => (seen, res) =>
    seen.headers.authorization === `Bearer ${good}` ? ok(seen, res) : json(res, 401, { error: { code: 'unauthenticated', message: 'unknown API key' } });

  it('re-reads the API key once after a 401 and retries with the new key', async (t) => {
    const a = await startServer(t, rotatingServer('kha_new'));
    const b = await startServer(t, ok);
    const reloads: boolean[] = [];
    const { client, attempts } = makeClient(t, [a.url, b.url], {
      apiKey: (reload) => {
        reloads.push(reload);
        return reload ? 'kha_new' : 'kha_old';
      },
    });
    assert.deepEqual(await client.post('status', '/s', { n: 1 }), { ok: true, echo: { n: 1 } });
    assert.deepEqual(reloads, [false, true]);
    assert.deepEqual(
      a.seen.map((s) => s.headers.authorization),
      ['Bearer kha_old', 'Bearer kha_new'],
    );
    assert.equal(b.seen.length, 0, 'a 401 does not fail over');
    assert.deepEqual(attempts, [
      [a.url, 'status', 'unauthenticated'],
      [a.url, 'status', 'ok'],
    ]);
    // The new key is kept for later calls.
    await client.post('status', '/s', {});
    assert.equal(a.seen.at(-1)!.headers.authorization, 'Bearer kha_new');
    assert.deepEqual(reloads, [false, true]);
  });

  it('rejects with unauthenticated when the re-read key is unchanged', async (t) => {
    const a = await startServer(t, rotatingServer('kha_never'));
    const b = await startServer(t, ok);
    const reloads: boolean[] = [];
    const { client } = makeClient(t, [a.url, b.url], {
      apiKey: (reload) => {
        reloads.push(reload);
        return 'kha_same';
      },
    });
    await assert.rejects(client.post('status', '/s', {}), fails('unauthenticated', /unknown API key/));
    assert.deepEqual(reloads, [false, true]);
    assert.equal(a.seen.length, 1);
    assert.equal(b.seen.length, 0);
  });

  it('retries only once when the new key is refused too', async (t) => {
    const a = await startServer(t, rotatingServer('kha_never'));
    let n = 0;
    const { client } = makeClient(t, [a.url], { apiKey: () => `kha_${n++}` });
    await assert.rejects(client.post('status', '/s', {}), fails('unauthenticated'));
    assert.equal(a.seen.length, 2);
  });

  it('re-reads at most every 2 s', async (t) => {
    const clock = manualClock();
    const a = await startServer(t, rotatingServer('kha_never'));
    const reloads: boolean[] = [];
    const { client } = makeClient(t, [a.url], {
      now: clock.now,
      apiKey: (reload) => {
        reloads.push(reload);
        return 'kha_same';
      },
    });
    await assert.rejects(client.post('status', '/s', {}), fails('unauthenticated'));
    await assert.rejects(client.post('status', '/s', {}), fails('unauthenticated'));
    assert.deepEqual(reloads, [false, true]);
    clock.advance(2_001);
    await assert.rejects(client.post('status', '/s', {}), fails('unauthenticated'));
    assert.deepEqual(reloads, [false, true, true]);
  });
});

describe('plugin/key-server-client: apiKeySource', () => {
  function tempDir(t: TestContext): string {
    const dir = ownedTempDir('kh-apikey-');
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    return dir;
  }

  it('reads and trims the key file', (t) => {
    const file = join(tempDir(t), 'api-key');
    writeFileSync(file, '  kha_abc.DEF-123\n\n', { mode: 0o600 });
    assert.equal(apiKeySource({ file })(false), 'kha_abc.DEF-123');
  });

  it('caches the key and reads the file again only on reload', (t) => {
    const file = join(tempDir(t), 'api-key');
    writeFileSync(file, 'kha_one\n', { mode: 0o600 });
    const src = apiKeySource({ file });
    assert.equal(src(false), 'kha_one');
    writeFileSync(file, 'kha_two\n');
    assert.equal(src(false), 'kha_one');
    assert.equal(src(true), 'kha_two');
    assert.equal(src(false), 'kha_two');
  });

  it('uses the readFile it is given', () => {
    const paths: string[] = [];
    const src = apiKeySource({ file: '/virtual/key' }, (p) => {
      paths.push(p);
      return Buffer.from('kha_virtual\r\n');
    });
    assert.equal(src(false), 'kha_virtual');
    assert.deepEqual(paths, ['/virtual/key']);
  });

  it('reads an environment variable', (t) => {
    const name = `KH_TEST_API_KEY_${process.pid}`;
    process.env[name] = ' kha_from_env \n';
    t.after(() => delete process.env[name]);
    assert.equal(apiKeySource({ env: name })(false), 'kha_from_env');
  });

  it('rejects a missing or empty environment variable with config_invalid naming it', (t) => {
    const name = `KH_TEST_API_KEY_MISSING_${process.pid}`;
    delete process.env[name];
    assert.throws(() => apiKeySource({ env: name })(false), fails('config_invalid', new RegExp(`environment variable ${name} \\(provider.apiKeyEnv\\) is not set`)));
    process.env[name] = '';
    t.after(() => delete process.env[name]);
    assert.throws(() => apiKeySource({ env: name })(false), fails('config_invalid', new RegExp(name)));
  });

  it('rejects an environment variable that does not hold a key, without showing its value', (t) => {
    const name = `KH_TEST_API_KEY_BAD_${process.pid}`;
    process.env[name] = 'kha_secret value';
    t.after(() => delete process.env[name]);
    const e = (() => {
      try {
        apiKeySource({ env: name })(false);
      } catch (err) {
        return err as KeyhavenError;
      }
      assert.fail('expected a throw');
    })();
    assert.equal(e.code, 'config_invalid');
    assert.match(e.message, new RegExp(`environment variable ${name} does not hold an API key`));
    assert.ok(!e.message.includes('kha_secret'), e.message);
  });

  for (const [label, content] of [
    ['a control character', 'kha_secret\u0001x'],
    ['two lines', 'kha_secret\nkha_other'],
    ['a NUL byte', 'kha_secret\u0000'.repeat(1) + 'x'],
    ['non-ASCII text', 'kha_secret_ü'],
    ['only whitespace', ' \n\t\n'],
    ['more than 512 characters', `kha_secret${'x'.repeat(503)}`],
  ] as const) {
    it(`rejects a key file holding ${label} with config_invalid, without showing it`, (t) => {
      const file = join(tempDir(t), 'api-key');
      writeFileSync(file, content, { mode: 0o600 });
      assert.throws(
        () => apiKeySource({ file })(false),
        (e: unknown) => {
          fails('config_invalid', new RegExp(`API key file ${escape(file)} does not hold an API key`))(e);
          assert.ok(!(e as Error).message.includes('kha_secret'), (e as Error).message);
          return true;
        },
      );
    });
  }

  it('accepts a key of exactly 512 characters', (t) => {
    const file = join(tempDir(t), 'api-key');
    const key = `kha_${'x'.repeat(508)}`;
    writeFileSync(file, `${key}\n`, { mode: 0o600 });
    assert.equal(apiKeySource({ file })(false), key);
  });

  it('rejects an unreadable key file with config_invalid naming the file', (t) => {
    const file = join(tempDir(t), 'missing');
    assert.throws(() => apiKeySource({ file })(false), fails('config_invalid', new RegExp(`cannot read the API key file ${escape(file)}: ENOENT`)));
  });

  it('keeps the cached key when a reload fails', (t) => {
    const file = join(tempDir(t), 'api-key');
    writeFileSync(file, 'kha_good\n', { mode: 0o600 });
    const src = apiKeySource({ file });
    assert.equal(src(false), 'kha_good');
    writeFileSync(file, 'kha_half\u0000written');
    assert.equal(src(true), 'kha_good', 'a file with a non-printable key');
    unlinkSync(file);
    assert.equal(src(true), 'kha_good', 'a missing file');
    assert.equal(src(false), 'kha_good');
    writeFileSync(file, 'kha_rotated\n');
    assert.equal(src(true), 'kha_rotated', 'a good file is picked up again');
  });

  it('plugs into the client: a rotated key file is picked up after a 401', async (t) => {
    const file = join(tempDir(t), 'api-key');
    writeFileSync(file, 'kha_old\n', { mode: 0o600 });
    const a = await startServer(t, (seen, res) =>
      seen.headers.authorization === 'Bearer kha_new' ? ok(seen, res) : json(res, 401, { error: { code: 'unauthenticated', message: 'unknown API key' } }),
    );
    const { client } = makeClient(t, [a.url], { apiKey: apiKeySource({ file }) });
    writeFileSync(file, 'kha_new\n');
    await client.post('status', '/s', {});
    assert.deepEqual(
      a.seen.map((s) => s.headers.authorization),
      ['Bearer kha_old', 'Bearer kha_new'],
    );
  });

  it('the client constructor fails with config_invalid when the key cannot be read', () => {
    const name = `KH_TEST_API_KEY_CTOR_${process.pid}`;
    delete process.env[name];
    assert.throws(
      () =>
        createKeyServerClient({
          servers: ['http://127.0.0.1:1'],
          tls: {},
          apiKey: apiKeySource({ env: name }),
          cluster: 'c',
          timeoutMs: 1000,
          attemptTimeoutMs: 500,
          backoffMinMs: 50,
          backoffMaxMs: 1000,
        }),
      fails('config_invalid', new RegExp(name)),
    );
  });
});

describe('key server client: breaker and deadline accounting', () => {
  it('many requests failing together open the breaker once, not once each', async (t) => {
    const clock = manualClock();
    let release: () => void = () => {};
    const gate = new Promise<void>((r) => (release = r));
    const a = await startServer(t, (_seen, res) => void gate.then(() => json(res, 503, { error: { code: 'sealed', message: 'sealed' } })));
    const b = await startServer(t, ok);
    const { client } = makeClient(t, [a.url, b.url], { now: clock.now });
    const calls = Array.from({ length: 20 }, () => client.post('encrypt', '/x', {}));
    await new Promise<void>((r) => {
      const wait = () => (a.seen.length >= 20 ? r() : setTimeout(wait, 5));
      wait();
    });
    release();
    await Promise.all(calls);
    const st = client.servers()[0]!;
    assert.equal(st.up, false);
    assert.equal(st.consecutiveFailures, 1, 'one outage, one failure');
    assert.ok(st.retryAt - clock.t <= 63, `back-off stays at its minimum: ${st.retryAt - clock.t} ms`);
  });

  it('an attempt cut short by the call\'s own deadline does not blame the server', async (t) => {
    const slow = await startServer(t, (seen, res) => void setTimeout(() => ok(seen, res), 300));
    const dead = await startServer(t, hang);
    const { client } = makeClient(t, [dead.url, slow.url], { timeoutMs: 600, attemptTimeoutMs: 500, backoffMinMs: 10_000, backoffMaxMs: 10_000 });
    await assert.rejects(client.post('encrypt', '/x', {}), fails('unavailable', /did not answer in time/));
    const [d, s] = client.servers();
    assert.equal(d!.up, false, 'the hanging server used its whole attempt');
    assert.equal(s!.up, true, 'the slow server only had what was left of the deadline');
    assert.deepEqual(await client.post('encrypt', '/x', {}).then(() => 'ok'), 'ok');
  });

  it('a 401 for a request sent with a key another call has replaced is retried with the current key', async (t) => {
    let current = 'kha_old';
    const srv = await startServer(t, (seen, res) => {
      if (seen.headers.authorization === `Bearer ${current}`) json(res, 200, { ok: true });
      else json(res, 401, { error: { code: 'unauthenticated', message: 'bad key' } });
    });
    let fileKey = 'kha_old';
    const { client } = makeClient(t, [srv.url], { apiKey: () => fileKey });
    await client.post('encrypt', '/x', {});
    current = 'kha_new';
    fileKey = 'kha_new';
    // Both go out with the old key; the first to come back reloads, the second must not fail.
    const both = await Promise.all([client.post('encrypt', '/x', {}), client.post('encrypt', '/x', {})]);
    assert.equal(both.length, 2);
  });
});

// With a health probe (what the keyhaven provider uses): failing servers are
// probed in the background, and a call with no healthy server left waits for
// a failing server's probe. Real time passes here; only counts and generous
// bounds are asserted.

const HEALTH = '/v1/sys/health';
const healthy: Handler = (seen, res) => (seen.path === HEALTH ? json(res, 200, { initialized: true, sealed: false, version: 't' }) : ok(seen, res));
const sealed: Handler = (seen, res) =>
  seen.path === HEALTH ? json(res, 503, { initialized: true, sealed: true, version: 't' }) : json(res, 503, { error: { code: 'sealed', message: 'the server is sealed' } });

/** A raw TCP listener that counts connections and either holds them open without a byte of answer, or resets them at once. */
async function tcpListener(t: TestContext, mode: 'stall' | 'reset') {
  const sockets = new Set<Socket>();
  const l = { connections: 0, open: 0, maxOpen: 0, port: 0 };
  const server = createTcpServer((sock) => {
    l.connections += 1;
    if (mode === 'reset') {
      sock.resetAndDestroy();
      return;
    }
    // Read, so that the client closing its end is seen.
    sock.resume();
    sockets.add(sock);
    l.open = sockets.size;
    l.maxOpen = Math.max(l.maxOpen, l.open);
    sock.on('error', () => {});
    sock.on('close', () => {
      sockets.delete(sock);
      l.open = sockets.size;
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  l.port = (server.address() as AddressInfo).port;
  t.after(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return l;
}

async function until(what: string, check: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

describe('plugin/key-server-client: background health probes', () => {
  it('reads keyhaven\'s health answer: only initialised and unsealed is healthy', () => {
    const u = KEYHAVEN_HEALTH_PROBE.unhealthy;
    assert.equal(u(200, { initialized: true, sealed: false, version: '1' }), undefined);
    assert.equal(u(503, { initialized: true, sealed: true, version: '1' }), 'sealed');
    assert.equal(u(200, { initialized: true, sealed: true }), 'sealed', 'a 200 that says sealed is not healthy');
    assert.equal(u(503, { initialized: false, sealed: true }), 'not initialised');
    assert.equal(u(503, { error: { code: 'audit_failed' } }), 'HTTP 503', 'the health request\'s audit record could not be stored');
    assert.equal(u(200, undefined), 'an unexpected health answer');
    assert.equal(u(404, undefined), 'HTTP 404');
  });

  it('probes a failing server in the background while another serves, and prefers it again once healthy', async (t) => {
    const a = await startServer(t, sealed);
    const b = await startServer(t, healthy);
    const { client, states, attempts } = makeClient(t, [a.url, b.url], { healthProbe: KEYHAVEN_HEALTH_PROBE, backoffMinMs: 50, backoffMaxMs: 100 });
    await client.post('status', '/s', {});
    assert.deepEqual(states[0]!.slice(0, 2), [a.url, false]);
    // Sealed: probed again and again in the background, never sent a call.
    await until('three health probes of the sealed server', () => a.seen.filter((x) => x.path === HEALTH).length >= 3);
    for (let i = 0; i < 5; i++) await client.post('status', '/s', {});
    assert.equal(a.seen.filter((x) => x.path !== HEALTH).length, 1, 'only the first call reached it');
    assert.equal(client.servers()[0]!.up, false);
    for (const h of a.seen.filter((x) => x.path === HEALTH)) assert.equal(h.headers.authorization, undefined, 'no credential on the health probe');
    assert.ok(attempts.some(([s, op, r]) => s === a.url && op === 'health' && r === 'unavailable'));

    // Unsealed: the next probe marks it up, with no call needed, and calls go to it first again.
    a.handler = healthy;
    await until('the server marked up', () => states.some(([s, up]) => s === a.url && up));
    assert.equal(a.seen.filter((x) => x.path !== HEALTH).length, 1, 'marked up by the probe alone');
    const before = b.seen.length;
    await client.post('status', '/s', { n: 1 });
    assert.equal(a.seen.at(-1)!.path, '/s');
    assert.equal(b.seen.length, before);
    // Healthy: no more probes.
    const probes = a.seen.filter((x) => x.path === HEALTH).length;
    await sleep(300);
    assert.equal(a.seen.filter((x) => x.path === HEALTH).length, probes);
  });

  for (const mode of ['stall', 'reset'] as const) {
    it(`probes a server that stays down (${mode === 'stall' ? 'accepts and never answers' : 'accepts and resets'}) at the back-off rate, one probe at a time`, async (t) => {
      const l = await tcpListener(t, mode);
      const b = await startServer(t, healthy);
      const aUrl = `http://127.0.0.1:${l.port}`;
      const min = 100;
      const max = 400;
      const { client, attempts } = makeClient(t, [aUrl, b.url], { healthProbe: KEYHAVEN_HEALTH_PROBE, backoffMinMs: min, backoffMaxMs: max, attemptTimeoutMs: 300, timeoutMs: 2_000 });
      await client.post('status', '/s', {});
      assert.equal(client.servers()[0]!.up, false);
      const from = l.connections;
      // The first call's own connection may stay open; from here on only probes connect.
      const base = l.open;
      l.maxOpen = base;
      const started = Date.now();
      // Calls keep coming meanwhile, all served by the other server.
      let served = 0;
      while (Date.now() - started < 3_000) {
        await client.post('status', '/s', {});
        served += 1;
        await sleep(5);
      }
      const elapsed = Date.now() - started;
      const probes = l.connections - from;
      const healthAttempts = attempts.filter(([s, op]) => s === aUrl && op === 'health').length;
      // Each probe waits at least 75 % of the back-off (which doubles from min to max) after the last one ended.
      const gaps = [];
      for (let w = min; gaps.reduce((x, y) => x + y, 0) < elapsed; w = Math.min(w * 2, max)) gaps.push(0.75 * w);
      assert.ok(probes >= 2, `probed again (${probes} probes)`);
      assert.ok(probes <= gaps.length + 2, `${probes} probes in ${elapsed} ms: not hammered (at most ${gaps.length + 2} at the back-off rate)`);
      assert.ok(served > probes * 3, `${served} calls served elsewhere meanwhile`);
      assert.ok(Math.abs(healthAttempts - probes) <= 1, `every connection was a probe (${healthAttempts} probes counted, ${probes} connections)`);
      if (mode === 'stall') assert.ok(l.maxOpen <= base + 1, `never more than one probe in flight (${l.maxOpen - base} at once)`);
    });
  }

  it('when the healthy server dies, concurrent calls wait for the probe of the recovering one instead of failing', async (t) => {
    let release: (() => void) | undefined;
    const a = await startServer(t, (seen, res) => (seen.path === HEALTH ? healthy(seen, res) : json(res, 503, { error: { code: 'unavailable', message: 'A is busy' } })));
    const b = await startServer(t, sealed);
    const { client, states } = makeClient(t, [a.url, b.url], { healthProbe: KEYHAVEN_HEALTH_PROBE, backoffMinMs: 50, backoffMaxMs: 100, attemptTimeoutMs: 3_000, timeoutMs: 5_000 });
    await assert.rejects(client.post('status', '/s', {}), fails('sealed'));
    await until('A marked up by its probe', () => states.some(([s, up]) => s === a.url && up));
    a.handler = ok;
    // B recovers, but its probe is slow to answer: hold it.
    let probesOfB = 0;
    b.handler = (seen, res) => {
      if (seen.path === HEALTH) {
        probesOfB += 1;
        release = () => healthy(seen, res);
      } else ok(seen, res);
    };
    await until('a probe of B in flight', () => release !== undefined);
    await a.close();
    const sentToB = b.seen.filter((x) => x.path === '/s').length;
    const calls = Array.from({ length: 16 }, (_, n) => client.post('status', '/s', { n }));
    await sleep(200);
    release!();
    const out = await Promise.allSettled(calls);
    const failed = out.filter((r) => r.status === 'rejected');
    assert.equal(failed.length, 0, `failed calls: ${failed.map((r) => String((r as PromiseRejectedResult).reason)).join('; ')}`);
    assert.equal(b.seen.filter((x) => x.path === '/s').length - sentToB, 16);
    assert.equal(probesOfB, 1, 'the calls shared the one probe');
  });

  it('when the healthy server dies and the other\'s back-off ends within the deadline, concurrent calls wait for its probe', async (t) => {
    // B refuses its first call only, so whenever its probe comes (on a busy
    // machine it may come before A is closed) it finds B ready.
    let refused = false;
    const b = await startServer(t, (seen, res) => {
      if (!refused && seen.path !== HEALTH) {
        refused = true;
        sealed(seen, res);
      } else healthy(seen, res);
    });
    const a = await startServer(t, healthy);
    // B first in the list, marked down by one call; A serves. B's next probe is 1.5 s away.
    const { client, states } = makeClient(t, [b.url, a.url], { healthProbe: KEYHAVEN_HEALTH_PROBE, backoffMinMs: 1_500, backoffMaxMs: 1_500, attemptTimeoutMs: 1_000, timeoutMs: 5_000 });
    await client.post('status', '/s', {});
    assert.deepEqual(states.map(([s, up]) => [s, up]), [[b.url, false]]);
    await a.close();
    const calls = Array.from({ length: 16 }, (_, n) => client.post('status', '/s', { n }));
    const out = await Promise.allSettled(calls);
    const failed = out.filter((r) => r.status === 'rejected');
    assert.equal(failed.length, 0, `failed calls: ${failed.map((r) => String((r as PromiseRejectedResult).reason)).join('; ')}`);
    assert.equal(b.seen.filter((x) => x.path === HEALTH).length, 1, 'one probe, at the end of the back-off, shared by every call');
    assert.equal(b.seen.filter((x) => x.path === '/s').length, 17);
  });

  it('fails at once when every server is down and no probe is due before the call\'s deadline', async (t) => {
    const b = await startServer(t, sealed);
    const { client } = makeClient(t, [b.url], { healthProbe: KEYHAVEN_HEALTH_PROBE, backoffMinMs: 10_000, backoffMaxMs: 10_000, timeoutMs: 2_000 });
    await assert.rejects(client.post('status', '/s', {}), fails('sealed'));
    const started = Date.now();
    await assert.rejects(client.post('status', '/s', {}), fails('unavailable', /^every key server is failing; next attempt in/));
    assert.ok(Date.now() - started < 1_000, 'did not wait');
    assert.equal(b.seen.length, 1);
  });

  it('a call waiting for a probe that fails goes on, and fails with the reason when nothing is left', async (t) => {
    let release: (() => void) | undefined;
    const b = await startServer(t, sealed);
    const { client } = makeClient(t, [b.url], { healthProbe: KEYHAVEN_HEALTH_PROBE, backoffMinMs: 50, backoffMaxMs: 100, attemptTimeoutMs: 3_000, timeoutMs: 5_000 });
    await assert.rejects(client.post('status', '/s', {}), fails('sealed'));
    b.handler = (seen, res) => {
      if (seen.path === HEALTH) release = () => sealed(seen, res);
      else ok(seen, res);
    };
    await until('a probe in flight', () => release !== undefined);
    const call = client.post('status', '/s', {});
    await sleep(100);
    release!();
    await assert.rejects(call, fails('unavailable', new RegExp(`key server ${escape(b.url)} is not ready \\(sealed\\)`)));
    assert.equal(b.seen.filter((x) => x.path === '/s').length, 1, 'only the first call was sent');
  });

  it('close() stops the background probes', async (t) => {
    const l = await tcpListener(t, 'reset');
    const { client } = makeClient(t, [`http://127.0.0.1:${l.port}`], { healthProbe: KEYHAVEN_HEALTH_PROBE, backoffMinMs: 50, backoffMaxMs: 50 });
    await assert.rejects(client.post('status', '/s', {}), fails('unavailable'));
    await until('two probes', () => l.connections >= 3);
    await client.close();
    const n = l.connections;
    await sleep(400);
    assert.ok(l.connections <= n + 1, `no probes after close (${l.connections - n} more connections)`);
  });

  it('an answer the caller finds unusable goes to the next server, without blaming the first', async (t) => {
    const a = await startServer(t, (_seen, res) => json(res, 200, { version: 1 }));
    const b = await startServer(t, (_seen, res) => json(res, 200, { version: 2 }));
    const { client } = makeClient(t, [a.url, b.url], { healthProbe: KEYHAVEN_HEALTH_PROBE });
    const behind = (body: unknown) => ((body as { version: number }).version < 2 ? 'is behind' : undefined);
    assert.deepEqual(await client.post('encrypt', '/x', {}, { unusable: behind }), { version: 2 });
    assert.equal(client.servers()[0]!.up, true);
    const one = makeClient(t, [a.url]).client;
    await assert.rejects(one.post('encrypt', '/x', {}, { unusable: behind }), fails('unavailable', new RegExp(`key server ${escape(a.url)} is behind`)));
  });
});
