import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { before, describe, it, type TestContext } from 'node:test';
import { openLiveEtcd, openSnapshot, type EtcdEntry, type EtcdSource } from '../src/k8s/etcd/index.js';
import { ETCD_AVAILABLE, startEtcd, type EtcdProcess } from './etcd.js';
import { caught } from './expect-error.js';
import { ROOT } from './helpers.js';
import { makePki, type Pki } from './pki.js';
import { freePort } from './ports.js';
import { ownedTempDir, spawnOwned, suiteTeardown } from './reaper.js';
import { requireDependency } from './require.js';

// The etcd reading layer against a real etcd: paging, one revision, byte-exact
// values, snapshots served by a temporary etcd, TLS, and the errors a user
// meets (unreachable, wrong CA, no client certificate, corrupt snapshot).

const FIXTURE = join(ROOT, 'dist', 'test', 'fixtures', 'open-snapshot.js');
const need = (t: TestContext) => requireDependency(t, ETCD_AVAILABLE, 'etcd-server and etcd-client (apt-get install etcd-server etcd-client)');

async function readAll(src: EtcdSource, prefix: string, pageSize?: number): Promise<{ entries: EtcdEntry[]; pages: number[] }> {
  const entries: EtcdEntry[] = [];
  const pages: number[] = [];
  for await (const page of src.pages(prefix, pageSize)) {
    pages.push(page.length);
    entries.push(...page);
  }
  return { entries, pages };
}

const PREFIX = '/registry/';

/** What the store holds under PREFIX, as raw key → value, in etcd's (byte) order. */
type Expected = [Buffer, Buffer][];

/** 250 ASCII keys, a few non-ASCII and non-UTF-8 ones under the prefix, and neighbours outside it. */
async function fill(etcd: EtcdProcess): Promise<Expected> {
  const inside: [Buffer, Buffer][] = [];
  for (let i = 0; i < 250; i++) {
    const key = Buffer.from(`${PREFIX}secrets/ns${i % 7}/s-${String(i).padStart(3, '0')}`);
    // Values of every byte, some empty, some larger than a page of keys.
    const value = i % 50 === 0 ? Buffer.alloc(0) : randomBytes(i % 10 === 0 ? 20_000 : 1 + (i % 97));
    inside.push([key, value]);
  }
  inside.push([Buffer.from(`${PREFIX}configmaps/ÿÿ-\u{10FFFF}`), randomBytes(40)]);
  for (const tail of [[0xff], [0xff, 0xfe], [0xff, 0xff, 0x00], [0xc3], [0x80, 0x01]]) {
    inside.push([Buffer.concat([Buffer.from(`${PREFIX}raw/`), Buffer.from(tail)]), randomBytes(30)]);
  }
  const outside = ['/registry', '/registryX', '/registryX/a', '/registr', '/registrz', '/a', '/registry0', 'registry/x'].map((k) => Buffer.from(k));
  outside.push(Buffer.from([0x2f, 0x72, 0x65, 0x67, 0xff]));
  for (let i = 0; i < inside.length; i += 25) await Promise.all(inside.slice(i, i + 25).map(([k, v]) => etcd.put(k, v)));
  await Promise.all(outside.map((k) => etcd.put(k, Buffer.from('outside'))));
  return inside.sort((a, b) => Buffer.compare(a[0], b[0]));
}

function assertSame(entries: EtcdEntry[], expected: Expected): void {
  assert.equal(entries.length, expected.length);
  entries.forEach((e, i) => {
    const [k, v] = expected[i]!;
    assert.equal(e.key, k.toString('utf8'), `key ${i}`);
    assert.ok(e.value.equals(v), `value of ${e.key}`);
    assert.ok(e.modRevision > 0);
  });
}

describe('a live etcd and a snapshot of it', () => {
  const td = suiteTeardown();
  let etcd: EtcdProcess;
  let expected: Expected;
  let live: EtcdSource;
  before(async () => {
    if (!ETCD_AVAILABLE) return;
    etcd = await startEtcd(td);
    expected = await fill(etcd);
    live = await openLiveEtcd({ endpoint: etcd.endpoint });
    td.after(() => live.close());
  });

  it('reads every key under the prefix once, in order, byte-exact, 100 at a time', async (t) => {
    if (!need(t)) return;
    assert.equal(live.label, `etcd ${etcd.endpoint}`);
    const { entries, pages } = await readAll(live, PREFIX, 100);
    assert.deepEqual(pages, [100, 100, expected.length - 200]);
    assertSame(entries, expected);
    assert.equal(await live.count(PREFIX), expected.length);
    assert.equal(await live.count('/nothing-here/'), 0);
    assert.deepEqual((await readAll(live, '/nothing-here/')).pages, []);
  });

  it('pages across keys that are not UTF-8, at any page size', async (t) => {
    if (!need(t)) return;
    for (const size of [1, 7, expected.length, 10_000]) assertSame((await readAll(live, PREFIX, size)).entries, expected);
    // The prefix of all: every key, the outside ones too.
    assert.equal((await readAll(live, '', 50)).entries.length, await live.count(''));
    assert.equal(await live.count(''), expected.length + 9);
  });

  it('reads every page at the first page revision', async (t) => {
    if (!need(t)) return;
    const lastKey = expected.at(-1)![0];
    const before = await etcd.get(lastKey);
    const entries: EtcdEntry[] = [];
    let first = true;
    for await (const page of live.pages(PREFIX, 100)) {
      entries.push(...page);
      if (first) {
        first = false;
        // Written after the first page: neither may show.
        await etcd.put(`${PREFIX}secrets/zz-late`, Buffer.from('late'));
        await etcd.put(lastKey, Buffer.from('changed'));
      }
    }
    assert.ok(!entries.some((e) => e.key.endsWith('zz-late')));
    assert.ok(entries.at(-1)!.value.equals(before!));
    // Put the store back for the snapshot test.
    await etcd.put(lastKey, before!);
    await etcd.etcdctl('del', `${PREFIX}secrets/zz-late`);
  });

  it('rejects a bad page size', async (t) => {
    if (!need(t)) return;
    for (const n of [0, -1, 1.5, 10_001, Number.NaN]) {
      const e = await caught(readAll(live, PREFIX, n));
      assert.equal(e.code, 'invalid_argument');
      assert.match(e.message, /page size/);
    }
  });

  it('reads a snapshot of it back identically, and leaves nothing behind on close', async (t) => {
    if (!need(t)) return;
    const dir = ownedTempDir('kh-snap-', t);
    const file = join(dir, 'backup.db');
    await etcd.snapshot(file);
    const work = ownedTempDir('kh-snapwork-', t);
    const snap = await openSnapshot({ file, workDir: work });
    try {
      assert.equal(snap.label, `snapshot ${file}`);
      const dirs = readdirSync(work);
      assert.equal(dirs.length, 1);
      // The restored copy holds every Secret: only its owner may enter.
      assert.equal(execFileSync('stat', ['-c', '%a', join(work, dirs[0]!)]).toString().trim(), '700');
      const fromSnap = await readAll(snap, PREFIX, 100);
      const fromLive = await readAll(live, PREFIX, 100);
      assert.deepEqual(fromSnap.pages, fromLive.pages);
      assertSame(fromSnap.entries, expected);
      assert.deepEqual(fromSnap.entries.map((e) => e.modRevision), fromLive.entries.map((e) => e.modRevision));
      assert.equal(await snap.count(PREFIX), expected.length);
    } finally {
      await snap.close();
    }
    assert.deepEqual(readdirSync(work), []);
    await snap.close(); // twice is fine
    const e = await caught(snap.count(PREFIX));
    assert.equal(e.code, 'failed_precondition');

    // A damaged copy of the same file: cut in half, and random bytes of a plausible size.
    const whole = readFileSync(file);
    for (const [name, bytes] of [['truncated.db', whole.subarray(0, Math.floor(whole.length / 2))], ['random.db', randomBytes(whole.length)], ['empty.db', Buffer.alloc(0)]] as const) {
      const bad = join(dir, name);
      writeFileSync(bad, bytes);
      const err = await caught(openSnapshot({ file: bad, workDir: work }));
      assert.equal(err.code, 'invalid_argument', err.message);
      assert.ok(err.message.startsWith(`cannot restore the etcd snapshot ${bad}: `), err.message);
      assert.ok(!err.message.includes('\n'));
      assert.deepEqual(readdirSync(work), [], `nothing left after ${name}`);
    }
  });
});

describe('a snapshot opened by a process that ends', () => {
  it('is removed on exit, SIGTERM and SIGINT, and the signal still ends the process', async (t) => {
    if (!need(t)) return;
    const dir = ownedTempDir('kh-snapexit-', t);
    const etcd = await startEtcd(t);
    await etcd.put('/registry/a', Buffer.from('x'));
    const file = join(dir, 'backup.db');
    await etcd.snapshot(file);
    await etcd.stop();
    for (const how of ['exit', 'SIGTERM', 'SIGINT'] as const) {
      const work = ownedTempDir('kh-snapwork-', t);
      const child = spawnOwned(process.execPath, [FIXTURE, file, work, how], { t, stdio: ['pipe', 'pipe', 'inherit'] });
      const exited = new Promise<[number | null, string | null]>((r) => child.once('exit', (code, sig) => r([code, sig])));
      let out = '';
      await new Promise<void>((resolve, reject) => {
        child.stdout!.on('data', (d: Buffer) => {
          out += d.toString();
          if (out.includes('\n')) resolve();
        });
        child.once('exit', () => reject(new Error(`the fixture exited before it was ready: ${out}`)));
      });
      assert.equal(out, 'ready 1\n');
      assert.equal(readdirSync(work).length, 1);
      if (how === 'exit') child.stdin!.write('go\n');
      else child.kill(how);
      assert.deepEqual(await exited, how === 'exit' ? [3, null] : [null, how]);
      assert.deepEqual(readdirSync(work), [], how);
    }
  });
});

describe('opening a snapshot fails cleanly', () => {
  it('names a missing file, a missing etcd, and removes its temp dir when etcd does not start', async (t) => {
    if (!need(t)) return;
    const dir = ownedTempDir('kh-snapfail-', t);
    const work = ownedTempDir('kh-snapwork-', t);
    const missing = await caught(openSnapshot({ file: join(dir, 'nope.db'), workDir: work }));
    assert.equal(missing.code, 'invalid_argument');
    assert.match(missing.message, /nope\.db: ENOENT/);

    const etcd = await startEtcd(t);
    await etcd.put('/registry/a', Buffer.from('x'));
    const file = join(dir, 'ok.db');
    await etcd.snapshot(file);
    await etcd.stop();

    const noEtcd = await caught(openSnapshot({ file, workDir: work, etcdBinary: join(dir, 'no-such-etcd') }));
    assert.equal(noEtcd.code, 'failed_precondition');
    assert.match(noEtcd.message, /apt-get install etcd-server etcd-client/);

    // An "etcd" that dies at start, and one that never answers.
    const dies = join(dir, 'etcd-dies');
    writeFileSync(dies, '#!/bin/sh\necho \'{"level":"fatal","msg":"cannot start","error":"broken"}\' >&2\nexit 1\n');
    chmodSync(dies, 0o755);
    const died = await caught(openSnapshot({ file, workDir: work, etcdBinary: dies }));
    assert.equal(died.code, 'unavailable');
    assert.match(died.message, /stopped during start: cannot start: broken/);
    assert.deepEqual(readdirSync(work), []);

    const hangs = join(dir, 'etcd-hangs');
    writeFileSync(hangs, '#!/bin/sh\nexec sleep 60\n');
    chmodSync(hangs, 0o755);
    const hung = await caught(openSnapshot({ file, workDir: work, etcdBinary: hangs, startTimeoutMs: 500 }));
    assert.equal(hung.code, 'unavailable');
    assert.match(hung.message, /did not answer within/);
    assert.deepEqual(readdirSync(work), []);
  });
});

/** An etcd server certificate for 127.0.0.1 signed by the test CA, usable as a client certificate too (etcd's gateway sends it to its own gRPC port). */
function etcdServerCert(pki: Pki): { certFile: string; keyFile: string } {
  const ssl = (...args: string[]) => execFileSync('openssl', args, { cwd: pki.dir, stdio: ['ignore', 'pipe', 'pipe'] });
  writeFileSync(join(pki.dir, 'etcd.ext'), 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n');
  ssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'etcd.key', '-out', 'etcd.csr', '-subj', '/CN=etcd');
  chmodSync(join(pki.dir, 'etcd.key'), 0o600);
  ssl('x509', '-req', '-in', 'etcd.csr', '-CA', 'kh-test-ca.crt', '-CAkey', 'kh-test-ca.key', '-CAcreateserial', '-out', 'etcd.crt', '-days', '2', '-extfile', 'etcd.ext');
  return { certFile: join(pki.dir, 'etcd.crt'), keyFile: join(pki.dir, 'etcd.key') };
}

describe('a TLS etcd with client-certificate auth', () => {
  const td = suiteTeardown();
  let etcd: EtcdProcess;
  let pki: Pki;
  before(async () => {
    if (!ETCD_AVAILABLE) return;
    pki = makePki();
    td.after(() => execFileSync('rm', ['-rf', pki.dir]));
    const server = etcdServerCert(pki);
    etcd = await startEtcd(td, { tls: { caFile: pki.caFile, ...server, clientCertAuth: true } });
    await etcd.put('/registry/secrets/default/a', Buffer.from('a'));
    await etcd.put('/registry/secrets/default/b', Buffer.from('b'));
  });

  it('reads with the right CA and client certificate', async (t) => {
    if (!need(t)) return;
    const src = await openLiveEtcd({ endpoint: etcd.endpoint, caFile: pki.caFile, certFile: pki.client.certFile, keyFile: pki.client.keyFile });
    try {
      assert.equal(await src.count(PREFIX), 2);
      const { entries } = await readAll(src, PREFIX);
      assert.deepEqual(entries.map((e) => [e.key, e.value.toString()]), [['/registry/secrets/default/a', 'a'], ['/registry/secrets/default/b', 'b']]);
    } finally {
      await src.close();
    }
  });

  it('says what is wrong: a wrong CA, no client certificate, a foreign one, plain http', async (t) => {
    if (!need(t)) return;
    const client = { certFile: pki.client.certFile, keyFile: pki.client.keyFile };
    const wrongCa = await caught(openLiveEtcd({ endpoint: etcd.endpoint, caFile: pki.foreignCaFile, ...client }));
    assert.equal(wrongCa.code, 'unauthenticated');
    assert.match(wrongCa.message, /^TLS failure: the certificate of etcd https:\/\/127\.0\.0\.1:\d+ does not verify against the CA file .*kh-foreign-ca\.crt/);

    const systemCas = await caught(openLiveEtcd({ endpoint: etcd.endpoint, ...client }));
    assert.equal(systemCas.code, 'unauthenticated');
    assert.match(systemCas.message, /system CAs/);

    const noCert = await caught(openLiveEtcd({ endpoint: etcd.endpoint, caFile: pki.caFile }));
    assert.equal(noCert.code, 'unauthenticated', noCert.message);
    assert.match(noCert.message, /client certificate/);

    const foreign = await caught(openLiveEtcd({ endpoint: etcd.endpoint, caFile: pki.caFile, certFile: pki.foreign.certFile, keyFile: pki.foreign.keyFile }));
    assert.equal(foreign.code, 'unauthenticated', foreign.message);
    assert.match(foreign.message, /refused the client certificate .*foreign\.crt/);

    const plain = await caught(openLiveEtcd({ endpoint: etcd.endpoint.replace('https:', 'http:') }));
    assert.equal(plain.code, 'invalid_argument', plain.message);
    assert.match(plain.message, /serves TLS; use an https:\/\/ endpoint/);

    // Nothing of a key file in a message, only its path.
    const key = readFileSync(pki.client.keyFile, 'utf8');
    for (const e of [wrongCa, systemCas, noCert, foreign, plain]) assert.ok(!e.message.includes(key.slice(40, 80)));

    const mismatch = await caught(openLiveEtcd({ endpoint: etcd.endpoint, caFile: pki.caFile, certFile: pki.client.certFile, keyFile: pki.other.keyFile }));
    assert.equal(mismatch.code, 'config_invalid');
    assert.match(mismatch.message, /does not match/);
    const unreadable = await caught(openLiveEtcd({ endpoint: etcd.endpoint, caFile: join(pki.dir, 'none.crt') }));
    assert.equal(unreadable.code, 'config_invalid');
    assert.match(unreadable.message, /CA file .*none\.crt: ENOENT/);
  });
});

describe('endpoints that are not a working etcd', () => {
  it('unreachable, not etcd, not a URL, a URL with a password', async (t) => {
    const port = await freePort();
    const refused = await caught(openLiveEtcd({ endpoint: `http://127.0.0.1:${port}` }));
    assert.equal(refused.code, 'unavailable');
    assert.equal(refused.message, `cannot reach etcd http://127.0.0.1:${port}: connection refused`);

    const server = createServer((req, res) => {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('Not Found');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    t.after(() => server.close());
    const other = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const notEtcd = await caught(openLiveEtcd({ endpoint: other }));
    assert.equal(notEtcd.code, 'invalid_argument');
    assert.match(notEtcd.message, /does not look like etcd \(HTTP 404 on POST \/v3\/kv\/range\)/);

    for (const endpoint of ['127.0.0.1:2379', 'ftp://127.0.0.1:2379', 'http://127.0.0.1:2379/v3', 'not a url']) {
      assert.equal((await caught(openLiveEtcd({ endpoint }))).code, 'invalid_argument', endpoint);
    }
    const withPassword = await caught(openLiveEtcd({ endpoint: 'https://root:hunter2@127.0.0.1:2379' }));
    assert.equal(withPassword.code, 'invalid_argument');
    assert.ok(!withPassword.message.includes('hunter2'));
    const tlsOnHttp = await caught(openLiveEtcd({ endpoint: 'http://127.0.0.1:2379', caFile: '/ca.crt' }));
    assert.match(tlsOnHttp.message, /plain-http/);
    assert.equal((await caught(openLiveEtcd({ endpoint: 'https://127.0.0.1:2379', certFile: '/c.crt' }))).code, 'invalid_argument');
  });

  it('an etcd with authentication enabled', async (t) => {
    if (!need(t)) return;
    const etcd = await startEtcd(t);
    await etcd.etcdctl('user', 'add', 'root:kh-test-password');
    await etcd.etcdctl('auth', 'enable');
    const e = await caught(openLiveEtcd({ endpoint: etcd.endpoint }));
    assert.equal(e.code, 'unauthenticated', e.message);
    assert.match(e.message, /authentication enabled/);
    assert.ok(!e.message.includes('kh-test-password'));
  });
});
