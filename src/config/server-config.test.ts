import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { KeyhavenError } from '../errors.js';
import { PACKAGE_ROOT } from '../paths.js';
import { parseServerConfig } from './server-config.js';

const base = { storage: { sqlite: { path: 'db' } }, seal: { keyfile: { path: 'root.key' } } };

function refused(raw: unknown, pattern: RegExp): void {
  assert.throws(
    () => parseServerConfig(raw, 'server.yaml'),
    (e: unknown) => e instanceof KeyhavenError && e.code === 'config_invalid' && pattern.test(e.message),
  );
}

describe('server.yaml', () => {
  it('defaults, resolved paths, frozen', () => {
    const c = parseServerConfig(base, 'server.yaml', '/etc/keyhaven');
    assert.equal(c.listen, '127.0.0.1:8200');
    assert.deepEqual(c.storage, { sqlite: { path: '/etc/keyhaven/db' } });
    assert.deepEqual(c.seal, { keyfile: { path: '/etc/keyhaven/root.key' } });
    assert.equal(c.audit.fsync, true);
    assert.equal(c.auth.sessionTTL, 8 * 3600_000);
    assert.equal(c.keys.destroyPending, 7 * 86400_000);
    assert.equal(c.http.bodyLimit, 1024 * 1024);
    assert.deepEqual(c.audit.checkpoint, { every: 1000, interval: 10_000 });
    assert.ok(Object.isFrozen(c) && Object.isFrozen(c.auth));
  });

  it('audit checkpoints and the stdout sink', () => {
    const c = parseServerConfig({ ...base, audit: { sink: { stdout: {} }, checkpoint: { path: 'cp.jsonl', every: 10, interval: '2s' } } }, 'server.yaml', '/etc/keyhaven');
    assert.deepEqual(c.audit.sink, { stdout: {} });
    assert.deepEqual(c.audit.checkpoint, { path: '/etc/keyhaven/cp.jsonl', every: 10, interval: 2000 });
    refused({ ...base, audit: { checkpoint: { every: 0 } } }, /audit.checkpoint.every/);
    refused({ ...base, audit: { checkpoint: { interval: '10ms' } } }, /audit.checkpoint.interval: must be between 100ms and 24h/);
    refused({ ...base, audit: { checkpoint: { interval: 'soon' } } }, /audit.checkpoint.interval: must be a duration/);
    refused({ ...base, audit: { checkpoint: { path: '' } } }, /audit.checkpoint.path/);
    refused({ ...base, audit: { sink: { stdout: { pretty: true } } } }, /audit.sink/);
  });

  it('auth: sign-in throttling, rate limit and hashing pool defaults and bounds', () => {
    const c = parseServerConfig(base, 'server.yaml');
    assert.deepEqual(
      { max: c.auth.maxFailedLogins, base: c.auth.lockBase, lockMax: c.auth.lockMax, rate: c.auth.rateLimit, hashing: c.auth.hashing },
      { max: 5, base: 30_000, lockMax: 900_000, rate: { max: 20, window: 60_000 }, hashing: { workers: 1, queue: 16, scryptN: 32768 } },
    );
    const set = parseServerConfig({ ...base, auth: { rateLimit: { max: 100, window: '10m' }, hashing: { workers: 2, queue: 0 } } }, 'x');
    assert.deepEqual([set.auth.rateLimit, set.auth.hashing], [{ max: 100, window: 600_000 }, { workers: 2, queue: 0, scryptN: 32768 }]);
    refused({ ...base, auth: { rateLimit: { max: 0 } } }, /auth.rateLimit.max/);
    refused({ ...base, auth: { rateLimit: { window: 'soon' } } }, /auth.rateLimit.window: must be a duration/);
    refused({ ...base, auth: { rateLimit: { max: 5, per: 'ip' } } }, /auth.rateLimit|Unrecognized key: "per"/);
    refused({ ...base, auth: { hashing: { workers: 0 } } }, /auth.hashing.workers/);
    refused({ ...base, auth: { hashing: { workers: 1, queue: -1 } } }, /auth.hashing.queue/);
    for (const n of [1024, 1 << 17]) assert.equal(parseServerConfig({ ...base, auth: { hashing: { scryptN: n } } }, 'x').auth.hashing.scryptN, n);
    for (const n of [512, 3000, 1 << 18, '32768']) refused({ ...base, auth: { hashing: { scryptN: n } } }, /auth.hashing.scryptN/);
    refused({ ...base, auth: { lockBase: '1h', lockMax: '1m' } }, /auth.lockBase: lockBase must not exceed lockMax/);
  });

  it('plain HTTP only on loopback unless allowed', () => {
    refused({ ...base, listen: '0.0.0.0:8200' }, /not a loopback address; configure tls/);
    assert.equal(parseServerConfig({ ...base, listen: '0.0.0.0:8200', allowInsecureHttp: true }, 'x').listen, '0.0.0.0:8200');
    assert.ok(parseServerConfig({ ...base, listen: '0.0.0.0:8200', tls: { cert: 'c', key: 'k' } }, 'x').tls);
    assert.ok(parseServerConfig({ ...base, listen: '[::1]:8200' }, 'x'));
  });

  it('each problem is named by its field', () => {
    refused({ ...base, listen: 'nope' }, /listen: must be host:port/);
    refused({ ...base, listen: '127.0.0.1:70000' }, /port must be 0-65535/);
    refused({ ...base, storage: { mysql: {} } }, /storage: (must be|Unrecognized key: "mysql")/);
    refused({ ...base, storage: { postgres: { url: 'mysql://x' } } }, /storage/);
    refused({ ...base, seal: { vault: {} } }, /seal: (must be|Unrecognized key: "vault")/);
    refused({ ...base, seal: { pkcs11: { module: 'm', tokenLabel: 't' } } }, /seal/);
    refused({ ...base, auth: { sessionTTL: '8 hours' } }, /auth.sessionTTL: must be a duration/);
    refused({ ...base, surprise: 1 }, /surprise|Unrecognized/);
    refused({ ...base, http: { bodyLimit: 10 } }, /http.bodyLimit/);
    refused({ storage: base.storage }, /seal/);
  });

  it('the PostgreSQL write lock bounds default, parse and refuse nonsense', () => {
    const pgBase = { ...base, storage: { postgres: { url: 'postgres://db/keyhaven' } } };
    const c = parseServerConfig(pgBase, 'server.yaml');
    assert.ok('postgres' in c.storage);
    assert.equal(c.storage.postgres.lockHold, 500);
    assert.equal(c.storage.postgres.lockWait, 5000);
    const tuned = parseServerConfig({ ...base, storage: { postgres: { url: 'postgres://db/k', lockHold: '250ms', lockWait: '2s' } } }, 'x');
    assert.ok('postgres' in tuned.storage && tuned.storage.postgres.lockHold === 250 && tuned.storage.postgres.lockWait === 2000);
    const refusedPg = (pg: Record<string, unknown>, pattern: RegExp) => refused({ ...base, storage: { postgres: { url: 'postgres://db/k', ...pg } } }, pattern);
    refusedPg({ lockHold: '10ms' }, /storage.postgres.lockHold: must be between 100ms and 60s/);
    refusedPg({ lockHold: 'forever' }, /storage.postgres.lockHold: must be a duration/);
    refusedPg({ lockHold: '2s', lockWait: '1s' }, /storage.postgres.lockWait: lockWait must be longer than lockHold/);
    refusedPg({ lockWait: -1 }, /storage.postgres.lockWait/);
  });

  it('pkcs11 takes the PIN from a file or the environment, never inline', () => {
    const ok = parseServerConfig({ ...base, seal: { pkcs11: { module: '/m.so', tokenLabel: 't', pinEnv: 'PIN' } } }, 'x');
    assert.ok('pkcs11' in ok.seal && ok.seal.pkcs11.keyLabel === 'keyhaven-root-wrap');
    refused({ ...base, seal: { pkcs11: { module: '/m.so', tokenLabel: 't', pin: '1234' } } }, /seal/);
    refused({ ...base, seal: { pkcs11: { module: '/m.so', tokenLabel: 't', pinEnv: 'PIN', pinFile: 'f' } } }, /seal/);
  });

  it('metrics: key ids and no token by default; tokenFile resolved; bad fields refused by name', () => {
    assert.deepEqual(parseServerConfig(base, 'server.yaml').metrics, { keyNames: false });
    const c = parseServerConfig({ ...base, metrics: { tokenFile: 'metrics.token', keyNames: true } }, 'server.yaml', '/etc/keyhaven');
    assert.deepEqual(c.metrics, { tokenFile: '/etc/keyhaven/metrics.token', keyNames: true });
    refused({ ...base, metrics: { keyNames: 'yes' } }, /metrics\.keyNames/);
    refused({ ...base, metrics: { tokenFile: '' } }, /metrics\.tokenFile/);
    refused({ ...base, metrics: { token: 'inline-secret' } }, /metrics/);
  });

  it('the example in deploy/server.yaml is valid', () => {
    const raw = parseYaml(readFileSync(join(PACKAGE_ROOT, 'deploy', 'server.yaml'), 'utf8'));
    const c = parseServerConfig(raw, 'deploy/server.yaml');
    assert.ok('shamir' in c.seal);
  });
});
