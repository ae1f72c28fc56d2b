import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { removeDir, tempDir } from './helpers.js';
import { api, setupCast, startServerProcess, type ServerProcess } from './server-helpers.js';

// Attack: read /metrics anonymously to learn what the API hides — the names
// of keys, which an app without a grant cannot list. Fails if a key name
// (or a name an attacker made up) shows, or if a metrics token is bypassed.

const SECRET_KEY = 'payroll-2027-merger-zq7x';
const PLAIN = Buffer.from('x').toString('base64');

function cryptoLines(text: string): string[] {
  return text.split('\n').filter((l) => l.startsWith('keyhaven_crypto_operations_total{'));
}

describe('adversary: /metrics tells an anonymous caller no more than the API', () => {
  it('default: key ids, not names, label crypto metrics; a made-up key name never becomes a label', async () => {
    const dir = tempDir('kh-adv-metrics-');
    let s: ServerProcess | undefined;
    try {
      s = await startServerProcess({ dir });
      const cast = await setupCast(s.url, SECRET_KEY);
      assert.equal((await api(s.url, 'POST', `/v1/keys/${SECRET_KEY}/encrypt`, { token: cast.appKey, body: { plaintext: PLAIN } })).status, 200);
      // The API hides the key from an app without a grant: it answers as for a key that does not exist ...
      const probe = await api(s.url, 'POST', `/v1/keys/${SECRET_KEY}/encrypt`, { token: cast.strangerKey, body: { plaintext: PLAIN } });
      const guess = await api(s.url, 'POST', '/v1/keys/guessed-name-qq9/encrypt', { token: cast.strangerKey, body: { plaintext: PLAIN } });
      assert.notEqual(probe.status, 200, probe.text);
      assert.equal(probe.status, guess.status);
      assert.equal(probe.body.error.code, guess.body.error.code);
      const own = await api(s.url, 'POST', '/v1/keys/guessed-name-qq9/encrypt', { token: cast.appKey, body: { plaintext: PLAIN } });
      assert.notEqual(own.status, 200, own.text);
      // ... so /metrics must as well.
      const m = await api(s.url, 'GET', '/metrics');
      assert.equal(m.status, 200);
      assert.ok(!m.text.includes(SECRET_KEY), `the key name is on /metrics:\n${cryptoLines(m.text).join('\n')}`);
      assert.ok(!m.text.includes('guessed-name-qq9'), 'a made-up key name became a label');
      const lines = cryptoLines(m.text);
      assert.ok(lines.some((l) => /operation="encrypt",result="ok"/.test(l)), `the encrypt is counted:\n${lines.join('\n')}`);
      const ids = new Set(lines.map((l) => /key="([^"]*)"/.exec(l)?.[1]));
      assert.ok(ids.size >= 1 && [...ids].every((k) => k !== undefined && k !== SECRET_KEY), `labels: ${[...ids].join(', ')}`);
    } finally {
      await s?.stop();
      removeDir(dir);
    }
  });

  it('with tokenFile: anonymous and wrong tokens get 401 in the native error shape; the token reads metrics; keyNames puts names back; the token is never logged', async () => {
    const dir = tempDir('kh-adv-metrics-tok-');
    const token = 'metrics-token-Vq3nR8sLw2';
    const tokenFile = join(dir, 'metrics.token');
    writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
    let s: ServerProcess | undefined;
    try {
      s = await startServerProcess({ dir, config: { metrics: { tokenFile, keyNames: true } } });
      const cast = await setupCast(s.url, SECRET_KEY);
      assert.equal((await api(s.url, 'POST', `/v1/keys/${SECRET_KEY}/encrypt`, { token: cast.appKey, body: { plaintext: PLAIN } })).status, 200);
      for (const [what, headers] of [
        ['anonymous', {}],
        ['wrong token', { authorization: 'Bearer metrics-token-Vq3nR8sLw' }],
        ['token with a suffix', { authorization: `Bearer ${token}x` }],
        ['a session token', { authorization: `Bearer ${cast.admin}` }],
        ['basic auth', { authorization: `Basic ${Buffer.from(`x:${token}`).toString('base64')}` }],
      ] as const) {
        const r: { status: number; text: string; body: any } = await api(s.url, 'GET', '/metrics', { headers });
        assert.equal(r.status, 401, `${what}: ${r.status}`);
        assert.equal(r.body.error.code, 'unauthenticated', what);
        assert.ok(!r.text.includes('keyhaven_'), `${what}: metrics leaked`);
      }
      const ok = await api(s.url, 'GET', '/metrics', { headers: { authorization: `Bearer ${token}` } });
      assert.equal(ok.status, 200, ok.text);
      assert.ok(cryptoLines(ok.text).some((l) => l.includes(`key="${SECRET_KEY}"`)), 'keyNames: true labels with the name');
      assert.ok(!s.output().includes(token), 'the metrics token reached the log');
    } finally {
      await s?.stop();
      removeDir(dir);
    }
  });

  it('a metrics token file readable by others, empty or missing stops start-up with a readable error', async () => {
    const dir = tempDir('kh-adv-metrics-bad-');
    const tokenFile = join(dir, 'metrics.token');
    try {
      for (const [what, prepare, message] of [
        ['mode 0644', () => {
          writeFileSync(tokenFile, 'some-token-value\n', { mode: 0o600 });
          chmodSync(tokenFile, 0o644);
        }, /metrics token file .* readable or writable by group or others; chmod 600 it/],
        ['empty', () => {
          chmodSync(tokenFile, 0o600);
          writeFileSync(tokenFile, '\n');
        }, /metrics token file .* is empty/],
        ['missing', () => removeDir(tokenFile), /cannot read the metrics token file .*ENOENT/],
      ] as const) {
        prepare();
        const s = await startServerProcess({ dir, config: { metrics: { tokenFile } }, waitReady: false });
        const code = await s.exited;
        assert.notEqual(code, 0, `${what}: the server started:\n${s.output()}`);
        assert.match(s.output(), message, what);
        assert.doesNotMatch(s.output(), /some-token-value/, `${what}: the token was printed`);
      }
      const bad = await startServerProcess({ dir, config: { metrics: { keyNames: 'yes' } }, waitReady: false });
      assert.notEqual(await bad.exited, 0);
      assert.match(bad.output(), /metrics\.keyNames/);
    } finally {
      removeDir(dir);
    }
  });
});
