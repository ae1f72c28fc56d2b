import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { chmodSync, existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Agent, setGlobalDispatcher } from 'undici';
import { stringify as toYaml } from 'yaml';
import { call, callError, grpc, httpGet, kmsClients, logLines, removeDir, startPlugin, tempDir, waitFor, type KmsClients, type PluginProcess, waitForFailure } from './helpers.js';
import { HAVE_OPENSSL, makePki, type Pki } from './pki.js';
import { api, rotateAppKeyApproved, setupCast, startServerProcess, type ApiResult, type Cast, type ServerProcess } from './server-helpers.js';
import { byteForms } from './secret-forms.js';

// The KMS plugin's remote provider when things go wrong, end to end: a real
// `keyhaven server` on HTTPS (the test PKI), real plugin processes on unix
// sockets. A revoked API key, a revoked grant, a disabled key, TLS trust and
// pinning, client certificates, start-up refusals, secrets in output and a
// key server that answers garbage or nothing. In each failure the plugin
// logs a precise 'Status fails' line, Status itself fails (a gRPC error, not
// a key_id) and the process keeps serving.

const STATUS_FAILS = 'Status fails: the apiserver will stop writing with this plugin';

interface Plugin {
  proc: PluginProcess;
  kms: KmsClients;
  configPath: string;
}

interface EncryptReply {
  ciphertext: Buffer;
  key_id: string;
  annotations: Record<string, Buffer>;
}


describe('plugin remote provider: failures end to end', { skip: !HAVE_OPENSSL && process.env.KEYHAVEN_REQUIRE_ALL !== '1' ? 'openssl is not installed' : false }, () => {
  let pki: Pki;
  let srv: ServerProcess;
  let url: string;
  let cast: Cast;
  let work: string;
  let dispatcher: Agent;
  const plugins: Plugin[] = [];
  const httpServers: Server[] = [];
  /** Output of plugins that refused to start, scanned for secrets too. */
  const refusedOutputs = new Map<string, string>();
  /** name -> forms that must never appear in any output. */
  const secrets = new Map<string, Record<string, Buffer>>();
  let seq = 0;

  const plantText = (name: string, s: string) => secrets.set(name, byteForms(Buffer.from(s, 'utf8')));
  const plantApiKey = (name: string, k: string) => {
    assert.match(k, /^kha_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/, 'API key format');
    plantText(name, k);
    const secret = k.slice(21);
    plantText(`${name} (secret part)`, secret);
    secrets.set(`${name} (secret bytes)`, byteForms(Buffer.from(secret, 'base64url')));
  };
  /** A fresh 32-byte seed, remembered as a secret. */
  const seed = (label: string) => {
    const s = randomBytes(32);
    secrets.set(`seed ${label} #${++seq}`, byteForms(s));
    return s;
  };

  const ok = async (r: Promise<ApiResult>, what: string): Promise<ApiResult> => {
    const res = await r;
    assert.ok(res.status >= 200 && res.status < 300, `${what}: ${res.status} ${res.text.slice(0, 300)}`);
    return res;
  };

  /** A key, an app granted encrypt and decrypt on it, and the app's API key in a 0600 file. */
  const newApp = async (app: string, key: string): Promise<{ apiKey: string; apiKeyFile: string }> => {
    await ok(api(url, 'POST', '/v1/keys', { token: cast.keyAdmin, body: { name: key } }), `create key ${key}`);
    const made = await ok(api(url, 'POST', '/v1/apps', { token: cast.admin, body: { name: app } }), `create app ${app}`);
    await ok(api(url, 'PUT', `/v1/apps/${app}/grants/${key}`, { token: cast.keyAdmin, body: { operations: ['encrypt', 'decrypt'] } }), `grant ${app}`);
    const apiKey = made.body.apiKey as string;
    plantApiKey(`API key of ${app}`, apiKey);
    const apiKeyFile = join(work, `${app}.key`);
    writeFileSync(apiKeyFile, `${apiKey}\n`, { mode: 0o600 });
    return { apiKey, apiKeyFile };
  };

  const writeConfig = (name: string, provider: Record<string, unknown>, extra: Record<string, unknown> = {}): string => {
    const path = join(work, `${name}.yaml`);
    writeFileSync(path, toYaml({ provider: { type: 'keyhaven', cluster: 'errors-test', ...provider }, ...extra }), { mode: 0o600 });
    return path;
  };

  const pluginArgs = (configPath: string, socket: string, logLevel: string) => [
    'plugin', '--config', configPath, '--socket', `unix://${socket}`, '--health-addr', '127.0.0.1:0', '--log-level', logLevel, '--status-cache-ttl', '100ms',
  ];

  /** Starts a plugin on `provider` (servers default to the HTTPS server, trusting the test CA). */
  const start = async (name: string, provider: Record<string, unknown>, opts: { logLevel?: string; extra?: Record<string, unknown> } = {}): Promise<Plugin> => {
    const configPath = writeConfig(name, { servers: [url], tls: { ca: pki.caFile }, ...provider }, opts.extra);
    const socket = join(work, `${name}.sock`);
    const proc = await startPlugin({ dataDir: work, socketPath: socket, command: pluginArgs(configPath, socket, opts.logLevel ?? 'debug') });
    const p = { proc, kms: kmsClients(socket), configPath };
    plugins.push(p);
    return p;
  };

  /** Starts a plugin that must refuse to start; resolves its exit code and output. */
  const refused = async (name: string, provider: Record<string, unknown>): Promise<{ code: number | null; out: string; socket: string }> => {
    const configPath = writeConfig(name, provider);
    const socket = join(work, `${name}.sock`);
    const proc = await startPlugin({ dataDir: work, socketPath: socket, waitReady: false, command: pluginArgs(configPath, socket, 'trace') });
    const timer = setTimeout(() => proc.child.kill('SIGKILL'), 20_000);
    const code = await proc.exited;
    clearTimeout(timer);
    refusedOutputs.set(name, proc.output());
    return { code, out: proc.output(), socket };
  };

  const status = (p: Plugin) => call<{ version: string; healthz: string; key_id: string }>(p.kms.v2, 'Status', {});
  const encrypt = (p: Plugin, plaintext: Buffer) => call<EncryptReply>(p.kms.v2, 'Encrypt', { plaintext, uid: `enc-${++seq}` });
  const decrypt = (p: Plugin, e: EncryptReply) => call<{ plaintext: Buffer }>(p.kms.v2, 'Decrypt', { ciphertext: e.ciphertext, uid: `dec-${++seq}`, key_id: e.key_id, annotations: e.annotations });

  /** Polls Status until it fails; returns the gRPC error. */
  const statusError = (p: Plugin, what: string) => waitForFailure(() => status(p), what);
  /** Polls Status until it answers a key_id. */
  const statusOk = (p: Plugin, what: string) => waitFor(async () => (await status(p)).key_id, what);

  /** The err of every 'Status fails' log line so far. */
  const failures = (p: Plugin) => logLines(p.proc.output()).filter((l) => l.msg === STATUS_FAILS).map((l) => l.err as { code: string; message: string });
  /** Waits for a 'Status fails' line whose message matches `re`. */
  const failureLogged = (p: Plugin, re: RegExp, what: string) => waitFor(() => failures(p).find((e) => re.test(e.message)), `${what} (log: ${JSON.stringify(failures(p).slice(-3))})`, 10_000);

  /** The process is alive and still answers gRPC (an error from the plugin, not from a dead socket). */
  const alive = async (p: Plugin) => {
    assert.equal(p.proc.child.exitCode, null, `plugin exited:\n${p.proc.output()}`);
    assert.equal(p.proc.child.signalCode, null);
    const v = await call(p.kms.v1, 'Version', { version: 'v1beta1' });
    assert.equal(v.version, 'v1beta1');
  };

  const metrics = async (p: Plugin) => (await httpGet(p.proc.healthPort!, '/metrics')).body;

  const listen = async (handler: Parameters<typeof createServer>[1]): Promise<string> => {
    const s = createServer(handler);
    httpServers.push(s);
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
    return `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
  };

  before(async () => {
    pki = makePki();
    work = tempDir('kh-remote-errors-');
    // Node's fetch (api(), setupCast) trusts the test CA through the global dispatcher.
    dispatcher = new Agent({ connect: { ca: pki.ca } });
    setGlobalDispatcher(dispatcher);
    srv = await startServerProcess({ config: { tls: { cert: pki.serverCert, key: pki.serverKey, clientCa: pki.caFile }, log: { level: 'trace' } } });
    url = srv.url;
    assert.match(url, /^https:\/\/127\.0\.0\.1:\d+$/);
    cast = await setupCast(url, 'k1');
    plantApiKey('API key of app1', cast.appKey);
    plantApiKey('API key of stranger', cast.strangerKey);
    writeFileSync(join(work, 'app1.key'), `${cast.appKey}\n`, { mode: 0o600 });
  });

  after(async () => {
    for (const p of plugins) {
      p.kms.close();
      await p.proc.stop();
    }
    for (const s of httpServers) {
      s.closeAllConnections();
      await new Promise((r) => s.close(r));
    }
    await srv?.stop();
    if (srv) removeDir(srv.dir);
    await dispatcher?.close();
    if (work) removeDir(work);
    if (pki) removeDir(pki.dir);
  });

  it('a rotated app API key: Status fails UNAUTHENTICATED naming the server; the new key in apiKeyFile recovers it without a restart', async () => {
    const { apiKeyFile } = await newApp('app-rot', 'k-rot');
    const p = await start('rot', { key: 'k-rot', apiKeyFile });
    const keyId = (await status(p)).key_id;
    assert.match(keyId, /^kh1:/);
    const before = await encrypt(p, seed('rot before'));

    const rotated = await rotateAppKeyApproved(url, cast.admin, cast.keyAdmin, 'app-rot');
    plantApiKey('rotated API key of app-rot', rotated);

    const err = await statusError(p, 'Status to fail after the API key was rotated');
    assert.equal(err.code, grpc.status.UNAUTHENTICATED, err.details);
    assert.ok(err.details.includes(`key server ${url} refused status`), err.details);
    const logged = await failureLogged(p, /refused status/, 'a Status failure in the log');
    assert.equal(logged.code, 'unauthenticated');
    assert.ok(logged.message.includes(url), logged.message);
    // Encrypt is refused too, and the process keeps serving.
    const encErr = await callError(p.kms.v2, 'Encrypt', { plaintext: seed('rot refused'), uid: 'rot-refused' });
    assert.equal(encErr.code, grpc.status.UNAUTHENTICATED, encErr.details);
    await alive(p);

    // The operator installs the new key; the plugin re-reads the file after the next 401.
    writeFileSync(apiKeyFile, `${rotated}\n`);
    assert.equal(await statusOk(p, 'Status to recover with the new API key'), keyId, 'same key version, same key_id');
    const after = await encrypt(p, seed('rot after'));
    assert.equal(after.key_id, keyId);
    assert.ok((await decrypt(p, before)).plaintext.length === 32, 'a seed sealed before the rotation still opens');
    await alive(p);
  });

  it('a revoked grant: Status fails PERMISSION_DENIED, Encrypt and a fresh Decrypt are refused; a new grant recovers', async () => {
    const { apiKeyFile } = await newApp('app-grant', 'k-grant');
    const p = await start('grant', { key: 'k-grant', apiKeyFile });
    const keyId = (await status(p)).key_id;
    const s = seed('grant');
    const sealed = await encrypt(p, s);

    await ok(api(url, 'DELETE', '/v1/apps/app-grant/grants/k-grant', { token: cast.keyAdmin }), 'revoke grant');
    const err = await statusError(p, 'Status to fail after the grant was revoked');
    assert.equal(err.code, grpc.status.PERMISSION_DENIED, err.details);
    assert.ok(err.details.includes(url), err.details);
    const logged = await failureLogged(p, /refused status/, 'a Status failure in the log');
    assert.equal(logged.code, 'permission_denied');
    const encErr = await callError(p.kms.v2, 'Encrypt', { plaintext: seed('grant refused'), uid: 'grant-refused' });
    assert.equal(encErr.code, grpc.status.PERMISSION_DENIED, encErr.details);
    // A revoked app also loses its cached KEKs: Decrypt goes back to the server, which refuses.
    const decErr = await callError(p.kms.v2, 'Decrypt', { ciphertext: sealed.ciphertext, uid: 'grant-dec', key_id: sealed.key_id, annotations: sealed.annotations });
    assert.equal(decErr.code, grpc.status.PERMISSION_DENIED, decErr.details);
    await alive(p);

    await ok(api(url, 'PUT', '/v1/apps/app-grant/grants/k-grant', { token: cast.keyAdmin, body: { operations: ['encrypt', 'decrypt'] } }), 're-grant');
    assert.equal(await statusOk(p, 'Status to recover after the new grant'), keyId);
    assert.equal((await encrypt(p, seed('grant after'))).key_id, keyId);
    assert.deepEqual((await decrypt(p, sealed)).plaintext, s);
  });

  it('a disabled key: Status fails FAILED_PRECONDITION (key_disabled), Encrypt is refused, Decrypt still works; enable recovers', async () => {
    const { apiKeyFile } = await newApp('app-dis', 'k-dis');
    const p = await start('dis', { key: 'k-dis', apiKeyFile });
    const keyId = (await status(p)).key_id;
    const s = seed('dis');
    const sealed = await encrypt(p, s);

    await ok(api(url, 'POST', '/v1/keys/k-dis/disable', { token: cast.keyAdmin, body: {} }), 'disable');
    const err = await statusError(p, 'Status to fail after the key was disabled');
    assert.equal(err.code, grpc.status.FAILED_PRECONDITION, err.details);
    assert.ok(err.details.includes(url), err.details);
    const logged = await failureLogged(p, /refused status/, 'a Status failure in the log');
    assert.equal(logged.code, 'key_disabled');
    const encErr = await callError(p.kms.v2, 'Encrypt', { plaintext: seed('dis refused'), uid: 'dis-refused' });
    assert.equal(encErr.code, grpc.status.FAILED_PRECONDITION, encErr.details);
    // Decrypt keeps working: from the cached KEK here ...
    assert.deepEqual((await decrypt(p, sealed)).plaintext, s);
    // ... and through the server for a plugin that never saw the KEK (keyhaven keeps decrypt for a disabled key).
    const fresh = await start('dis-fresh', { key: 'k-dis', apiKeyFile });
    const freshErr = await callError(fresh.kms.v2, 'Status', {});
    assert.equal(freshErr.code, grpc.status.FAILED_PRECONDITION, freshErr.details);
    assert.deepEqual((await decrypt(fresh, sealed)).plaintext, s);
    await alive(p);
    await alive(fresh);

    await ok(api(url, 'POST', '/v1/keys/k-dis/enable', { token: cast.keyAdmin, body: {} }), 'enable');
    assert.equal(await statusOk(p, 'Status to recover after enable'), keyId);
    assert.equal((await encrypt(p, seed('dis after'))).key_id, keyId);
  });

  it('KMS v1beta1 only (no Status ever): a disabled key reaches Encrypt through the background check', async () => {
    const { apiKeyFile } = await newApp('app-v1', 'k-v1');
    const p = await start('v1-only', { key: 'k-v1', apiKeyFile }, { extra: { status: { recheckInterval: '200ms' } } });
    const v1Encrypt = () => call<{ cipher: Buffer }>(p.kms.v1, 'Encrypt', { version: 'v1beta1', plain: seed('v1 only') });
    const sealed = await v1Encrypt();
    await ok(api(url, 'POST', '/v1/keys/k-v1/disable', { token: cast.keyAdmin, body: {} }), 'disable');
    const refusedErr = await waitFor(async () => {
      try {
        await v1Encrypt();
        return undefined;
      } catch (e) {
        return e as grpc.ServiceError;
      }
    }, 'v1beta1 Encrypt to be refused without any Status call');
    assert.equal(refusedErr.code, grpc.status.FAILED_PRECONDITION, refusedErr.details);
    assert.ok((await call<{ plain: Buffer }>(p.kms.v1, 'Decrypt', { version: 'v1beta1', cipher: sealed.cipher })).plain.length === 32, 'Decrypt still works');
    await ok(api(url, 'POST', '/v1/keys/k-v1/enable', { token: cast.keyAdmin, body: {} }), 'enable');
    await waitFor(async () => ((await v1Encrypt().catch(() => undefined)) ? true : undefined), 'v1beta1 Encrypt to work again');
  });

  it('TLS trust: a foreign CA fails Status (not trusted, check provider.tls.ca) without exiting; the right CA and a right pin work; a wrong pin fails', async () => {
    const [foreign, right, pinned, wrongPin] = await Promise.all([
      start('tls-foreign', { key: 'k1', apiKeyFile: join(work, 'app1.key'), tls: { ca: pki.foreignCaFile } }),
      start('tls-right', { key: 'k1', apiKeyFile: join(work, 'app1.key') }),
      // Local KEK off: every Encrypt is a server call, so concurrent calls open new connections (no TLS session resumption may skip the pin).
      start('tls-pin', { key: 'k1', apiKeyFile: join(work, 'app1.key'), tls: { pinSha256: [pki.serverFingerprint] }, localKek: { enabled: false } }),
      start('tls-wrong-pin', { key: 'k1', apiKeyFile: join(work, 'app1.key'), tls: { pinSha256: ['ab'.repeat(32)] } }),
    ]);

    const fErr = await callError(foreign.kms.v2, 'Status', {});
    assert.equal(fErr.code, grpc.status.UNAVAILABLE, fErr.details);
    const fLog = await failureLogged(foreign, /certificate is not trusted/, 'a not-trusted certificate in the log');
    assert.match(fLog.message, /provider\.tls\.ca/);
    assert.ok(fLog.message.includes(url), fLog.message);
    await alive(foreign);

    assert.match((await status(right)).key_id, /^kh1:/);
    const rs = seed('tls right');
    assert.deepEqual((await decrypt(right, await encrypt(right, rs))).plaintext, rs);

    const pinnedId = (await status(pinned)).key_id;
    assert.match(pinnedId, /^kh1:/);
    const seeds = Array.from({ length: 8 }, () => seed('tls pinned'));
    const sealed = await Promise.all(seeds.map((s) => encrypt(pinned, s)));
    const opened = await Promise.all(sealed.map((e) => decrypt(pinned, e)));
    opened.forEach((o, i) => assert.deepEqual(o.plaintext, seeds[i]));
    assert.equal(failures(pinned).length, 0, JSON.stringify(failures(pinned)));

    const wErr = await callError(wrongPin.kms.v2, 'Status', {});
    assert.equal(wErr.code, grpc.status.UNAVAILABLE, wErr.details);
    assert.match(wErr.details, /pinSha256/);
    await failureLogged(wrongPin, /matches none of provider\.tls\.pinSha256/, 'a pin mismatch in the log');
    await alive(wrongPin);
  });

  it('mTLS: with a valid client certificate the plugin works (the API key authenticates)', async () => {
    const p = await start('mtls-ok', { key: 'k1', apiKeyFile: join(work, 'app1.key'), tls: { ca: pki.caFile, clientCert: pki.client.certFile, clientKey: pki.client.keyFile } });
    assert.match((await status(p)).key_id, /^kh1:/);
    const s = seed('mtls');
    assert.deepEqual((await decrypt(p, await encrypt(p, s))).plaintext, s);
    assert.equal(failures(p).length, 0);
  });

  it('mTLS: an expired client certificate fails Status: the server refuses it, naming the reason', async () => {
    const p = await start('mtls-expired', { key: 'k1', apiKeyFile: join(work, 'app1.key'), tls: { ca: pki.caFile, clientCert: pki.expiredClient.certFile, clientKey: pki.expiredClient.keyFile } });
    const err = await callError(p.kms.v2, 'Status', {});
    assert.equal(err.code, grpc.status.UNAUTHENTICATED, err.details);
    assert.match(err.details, /client certificate was refused \(CERT_HAS_EXPIRED\)/);
    await failureLogged(p, /client certificate was refused \(CERT_HAS_EXPIRED\)/, 'the expired certificate in the log');
    await alive(p);
  });

  it('start-up refusals: precise messages, exit 78, no socket, the API key never printed', async () => {
    const keyFile = join(work, 'app1.key');
    const loose = join(work, 'loose.key');
    writeFileSync(loose, `${cast.appKey}\n`, { mode: 0o600 });
    chmodSync(loose, 0o644);
    const unset = `KH_TEST_UNSET_${randomBytes(6).toString('hex').toUpperCase()}`;
    assert.equal(process.env[unset], undefined);
    const base = { servers: [url], key: 'k1', apiKeyFile: keyFile };
    const cases: Array<[string, Record<string, unknown>, RegExp]> = [
      ['mode-0644', { ...base, apiKeyFile: loose }, /API key file \S*loose\.key is readable or writable by group or others; chmod 600 it/],
      ['missing-file', { ...base, apiKeyFile: join(work, 'no-such.key') }, /cannot read (the )?API key file \S*no-such\.key: ENOENT/],
      ['unset-env', { servers: [url], key: 'k1', apiKeyEnv: unset }, new RegExp(`environment variable ${unset} \\(provider\\.apiKeyEnv\\) is not set`)],
      ['file-and-env', { ...base, apiKeyEnv: 'HOME' }, /set exactly one of apiKeyFile and apiKeyEnv/],
      ['plain-http', { ...base, servers: ['http://keys.example.com:8200'] }, /provider\.servers: http:\/\/keys\.example\.com:8200 is plain HTTP to a host that is not loopback.*allowInsecureHttp/],
      ['url-path', { ...base, servers: [`${url}/v1`] }, /provider\.servers\.0: must be an http\(s\):\/\/host\[:port\] URL without a path, query or credentials/],
      ['url-credentials', { ...base, servers: [`https://app1:${encodeURIComponent(cast.appKey)}@127.0.0.1:8200`] }, /provider\.servers\.0: must be an http\(s\):\/\/host\[:port\] URL without a path, query or credentials/],
      ['timeout-3s', { ...base, timeout: '3s' }, /provider\.timeout \(3000 ms\) must stay below the apiserver's 3 s deadline/],
      ['cert-without-key', { ...base, tls: { ca: pki.caFile, clientCert: pki.client.certFile } }, /provider\.tls: clientCert and clientKey go together/],
    ];
    const results = await Promise.all(cases.map(([name, provider]) => refused(`refuse-${name}`, provider)));
    const apiKeyForms = [...secrets.entries()].filter(([n]) => n.startsWith('API key of app1'));
    assert.equal(apiKeyForms.length, 3);
    for (const [i, [name, , re]] of cases.entries()) {
      const r = results[i]!;
      assert.equal(r.code, 78, `${name}: exit ${r.code}\n${r.out}`);
      assert.match(r.out, re, `${name}: ${r.out}`);
      assert.match(r.out, /^keyhaven: /m, `${name}: one error line on stderr`);
      assert.doesNotMatch(r.out, /kms plugin listening|    at /, `${name}: refused before serving, without a stack trace`);
      assert.equal(existsSync(r.socket), false, `${name}: no socket left behind`);
      for (const [secret, forms] of apiKeyForms) for (const [form, needle] of Object.entries(forms)) assert.ok(!r.out.includes(needle.toString()), `${name}: ${secret} (${form}) printed`);
    }
  });

  it('a key server that answers garbage or nothing: Status fails precisely within the deadline and the plugin keeps serving', async () => {
    const garbage = await listen((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<html>not a key server</html>');
    });
    const hang = await listen(() => {
      // never answers
    });
    const apiKeyFile = join(work, 'app1.key');
    const [onlyGarbage, onlyHang] = await Promise.all([
      start('only-garbage', { key: 'k1', apiKeyFile, servers: [garbage] }),
      start('only-hang', { key: 'k1', apiKeyFile, servers: [hang] }),
    ]);

    const gErr = await callError(onlyGarbage.kms.v2, 'Status', {});
    assert.equal(gErr.code, grpc.status.UNAVAILABLE, gErr.details);
    assert.ok(gErr.details.includes(garbage), gErr.details);
    await failureLogged(onlyGarbage, new RegExp(`key server ${garbage} answered HTTP 200 with a body that is not JSON`), 'a not-JSON failure in the log');
    const gEnc = await callError(onlyGarbage.kms.v2, 'Encrypt', { plaintext: seed('garbage refused'), uid: 'garbage-enc' });
    assert.equal(gEnc.code, grpc.status.UNAVAILABLE, gEnc.details);
    await alive(onlyGarbage);

    await failureLogged(onlyHang, new RegExp(`key server ${hang} did not answer in time`), 'a timeout in the log');
    for (let i = 0; i < 3; i++) {
      // The server never answers: only the plugin's own deadline can end the
      // call with UNAVAILABLE (the caller's deadline, CALL_CAP_MS, would end it
      // with DEADLINE_EXCEEDED), so the code proves the plugin gave up first.
      const hErr = await callError(onlyHang.kms.v2, 'Status', {});
      assert.equal(hErr.code, grpc.status.UNAVAILABLE, hErr.details);
      assert.match(hErr.details, /did not answer in time|every key server is failing/);
      assert.ok(hErr.details.includes(hang), hErr.details);
    }
    await alive(onlyHang);

    // First in the list, a bad server is passed over for the good one.
    const [garbageFirst, hangFirst] = await Promise.all([
      start('garbage-first', { key: 'k1', apiKeyFile, servers: [garbage, url] }),
      start('hang-first', { key: 'k1', apiKeyFile, servers: [hang, url] }),
    ]);
    for (const [p, bad] of [[garbageFirst, garbage], [hangFirst, hang]] as const) {
      assert.match((await status(p)).key_id, /^kh1:/);
      const s = seed('failover');
      assert.deepEqual((await decrypt(p, await encrypt(p, s))).plaintext, s);
      const down = logLines(p.proc.output()).find((l) => l.msg === 'key server failing; trying the others first');
      assert.equal(down?.server, bad, p.proc.output());
      assert.ok(String(down?.reason).includes(bad));
      assert.match(await metrics(p), new RegExp(`keyhaven_plugin_key_server_up\\{server="${bad}"\\} 0`));
      assert.equal(failures(p).length, 0, JSON.stringify(failures(p)));
    }
  });

  it('secrets hygiene: API keys and seeds never appear in plugin output (trace), plugin /metrics or server output', async () => {
    // A plugin at trace level through the usual flows and some failing ones.
    const { apiKeyFile } = await newApp('app-sec', 'k-sec');
    const p = await start('secrets', { key: 'k-sec', apiKeyFile }, { logLevel: 'trace' });
    const p2 = await start('secrets-direct', { key: 'k-sec', apiKeyFile, localKek: { enabled: false } }, { logLevel: 'trace' });
    for (const q of [p, p2]) {
      await status(q);
      for (let i = 0; i < 3; i++) {
        const s = seed('hygiene v2');
        assert.deepEqual((await decrypt(q, await encrypt(q, s))).plaintext, s);
        const s1 = seed('hygiene v1beta1');
        const c1 = await call<{ cipher: Buffer }>(q.kms.v1, 'Encrypt', { version: 'v1beta1', plain: s1 });
        assert.deepEqual((await call<{ plain: Buffer }>(q.kms.v1, 'Decrypt', { version: 'v1beta1', cipher: c1.cipher })).plain, s1);
      }
    }
    // A rotated key (401s, a re-read of the file), refused calls carrying seeds, then recovery.
    const rotated = await rotateAppKeyApproved(url, cast.admin, cast.keyAdmin, 'app-sec');
    plantApiKey('rotated API key of app-sec', rotated);
    await statusError(p, 'Status to fail after rotation');
    await statusError(p2, 'Status to fail after rotation');
    await callError(p.kms.v2, 'Encrypt', { plaintext: seed('hygiene refused'), uid: 'sec-refused' });
    await callError(p2.kms.v2, 'Encrypt', { plaintext: seed('hygiene refused direct'), uid: 'sec-refused-2' });
    writeFileSync(apiKeyFile, `${rotated}\n`);
    await statusOk(p, 'Status to recover');
    await statusOk(p2, 'Status to recover');
    const last = seed('hygiene after');
    assert.deepEqual((await decrypt(p2, await encrypt(p2, last))).plaintext, last);

    const places = new Map<string, Buffer>();
    for (const q of plugins) {
      const name = q.configPath.replace(/^.*\/|\.yaml$/g, '');
      if (q.proc.child.exitCode === null) places.set(`/metrics of plugin ${name}`, Buffer.from(await metrics(q)));
      places.set(`output of plugin ${name}`, Buffer.from(q.proc.output()));
    }
    for (const [name, out] of refusedOutputs) places.set(`output of refused plugin ${name}`, Buffer.from(out));
    places.set('server output', Buffer.from(srv.output()));
    // The scan covers real output.
    assert.match(places.get('output of plugin secrets')!.toString(), /"level":"trace"|"msg":"kms call"/);
    assert.match(places.get('/metrics of plugin secrets')!.toString(), /keyhaven_plugin_key_server_calls_total/);
    assert.match(places.get('server output')!.toString(), /keyhaven server listening/);
    assert.ok(secrets.size > 40, `${secrets.size} secrets planted`);

    const found: string[] = [];
    for (const [where, hay] of places) {
      for (const [name, forms] of secrets) for (const [form, needle] of Object.entries(forms)) if (hay.includes(needle)) found.push(`${where}: ${name} (${form})`);
    }
    assert.deepEqual(found, []);
  });
});
