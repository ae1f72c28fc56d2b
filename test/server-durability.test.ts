import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { verifyRecords } from '../src/audit/chain.js';
import type { AuditRow } from '../src/storage/store.js';
import { removeDir, tempDir } from './helpers.js';
import { api, login, setupCast, startServerProcess, type ApiResult, type Cast, type ServerProcess } from './server-helpers.js';

// Fail-closed audit and crash durability of the key server on SQLite.

const b64 = (s: string) => Buffer.from(s).toString('base64');

async function readAudit(url: string, token: string): Promise<AuditRow[]> {
  const out: AuditRow[] = [];
  let after = 0;
  for (;;) {
    const r = await api(url, 'GET', `/v1/audit?after=${after}&limit=10000`, { token });
    assert.equal(r.status, 200, r.text);
    const rows = r.text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as AuditRow);
    out.push(...rows);
    if (rows.length < 10000) return out;
    after = rows[rows.length - 1]!.seq;
  }
}

describe('fail-closed audit: a request whose record cannot be written is refused', () => {
  let s: ServerProcess;
  let cast: Cast;
  let dbPath = '';

  before(async () => {
    s = await startServerProcess();
    cast = await setupCast(s.url);
    dbPath = join(s.dir, 'keyhaven.db');
  });
  after(async () => {
    await s?.stop();
    if (s) removeDir(s.dir);
  });

  it('while another connection holds the write lock past the busy timeout, encrypt answers 503 audit_failed and never 200', async () => {
    const lock = new Database(dbPath);
    lock.pragma('busy_timeout = 5000');
    const results: ApiResult[] = [];
    let auditorAfter = '';
    try {
      lock.exec('begin immediate');
      // Sent together: one group commit, one busy timeout.
      const sent = [0, 1, 2].map((i) => api(s.url, 'POST', '/v1/keys/k1/encrypt', { token: cast.appKey, body: { plaintext: b64(`locked-${i}`) } }));
      results.push(...(await Promise.all(sent)));
    } finally {
      if (lock.inTransaction) lock.exec('rollback');
      lock.close();
    }
    for (const r of results) {
      assert.equal(r.status, 503, `answered ${r.status} while its record could not be written: ${r.text}`);
      assert.equal(r.body.error.code, 'audit_failed');
      assert.ok(!('ciphertext' in r.body), 'no ciphertext in a refused answer');
      assert.equal(r.body.error.requestId, r.headers.get('x-request-id'));
    }

    // Released: the server serves again, and the refused requests left no record.
    const ok = await api(s.url, 'POST', '/v1/keys/k1/encrypt', { token: cast.appKey, body: { plaintext: b64('after') } });
    assert.equal(ok.status, 200, ok.text);
    auditorAfter = await login(s.url, 'auditor', cast.passwords.auditor!);
    const rows = await readAudit(s.url, auditorAfter);
    for (const r of results) assert.ok(!rows.some((x) => x.request_id === r.headers.get('x-request-id')), 'a refused request has no record');
    assert.equal(rows.filter((x) => x.request_id === ok.headers.get('x-request-id')).length, 1);
    assert.deepEqual(verifyRecords(rows), { ok: true, records: rows.length });
    const v = await api(s.url, 'GET', '/v1/audit/verify', { token: auditorAfter });
    assert.equal(v.status, 200);
    assert.equal(v.body.ok, true, JSON.stringify(v.body));
  });

  it('a key change whose record cannot be written is refused and not applied', async () => {
    const before = await api(s.url, 'GET', '/v1/keys/k1', { token: cast.keyAdmin });
    const lock = new Database(dbPath);
    let r: ApiResult;
    try {
      lock.exec('begin immediate');
      r = await api(s.url, 'POST', '/v1/keys/k1/rotate', { token: cast.keyAdmin, body: {} });
    } finally {
      if (lock.inTransaction) lock.exec('rollback');
      lock.close();
    }
    assert.equal(r.status, 503, r.text);
    const after = await api(s.url, 'GET', '/v1/keys/k1', { token: cast.keyAdmin });
    assert.equal(after.status, 200, after.text);
    assert.equal(after.body.currentVersion, before.body.currentVersion, 'the rotation did not happen');
    const v = await api(s.url, 'GET', '/v1/audit/verify', { token: cast.auditor });
    assert.equal(v.body.ok, true, JSON.stringify(v.body));
  });
});

describe('kill -9 under load', () => {
  it('every acknowledged encrypt decrypts after a restart, every acknowledged request has its record, the chain verifies', async () => {
    const dir = tempDir('kh-kill-');
    let s = await startServerProcess({ dir });
    try {
      const cast = await setupCast(s.url);
      const acked: { id: string; plaintext: string; ciphertext: string }[] = [];
      const refused: number[] = [];
      let stop = false;
      let n = 0;
      const loop = async (w: number) => {
        while (!stop) {
          const plaintext = `w${w}-m${n++}-${Math.random().toString(36).slice(2)}`;
          let r: ApiResult;
          try {
            r = await api(s.url, 'POST', '/v1/keys/k1/encrypt', { token: cast.appKey, body: { plaintext: b64(plaintext) } });
          } catch {
            return; // connection reset by the kill
          }
          if (r.status === 200) acked.push({ id: r.headers.get('x-request-id')!, plaintext, ciphertext: r.body.ciphertext });
          else refused.push(r.status);
        }
      };
      const loops = Array.from({ length: 8 }, (_, w) => loop(w));
      // Kill once a fair amount of work has been acknowledged.
      const deadline = Date.now() + 20_000;
      while (acked.length < 300 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      s.child.kill('SIGKILL');
      await s.exited;
      stop = true;
      await Promise.all(loops);
      assert.ok(acked.length >= 50, `load ran (${acked.length} acknowledged)`);
      assert.deepEqual(refused, [], 'no refusals before the kill');

      s = await startServerProcess({ dir });
      // Decrypt every acknowledged ciphertext (batches of 1000).
      for (let i = 0; i < acked.length; i += 1000) {
        const part = acked.slice(i, i + 1000);
        const d = await api(s.url, 'POST', '/v1/keys/k1/decrypt', { token: cast.appKey, body: { batch: part.map((a) => ({ ciphertext: a.ciphertext })) } });
        assert.equal(d.status, 200, d.text);
        d.body.batch.forEach((item: { plaintext?: string; error?: unknown }, j: number) => {
          assert.ok(item.plaintext !== undefined, `acknowledged ciphertext ${i + j} does not decrypt: ${JSON.stringify(item)}`);
          assert.equal(Buffer.from(item.plaintext, 'base64').toString(), part[j]!.plaintext);
        });
      }
      const auditor = await login(s.url, 'auditor', cast.passwords.auditor!);
      const rows = await readAudit(s.url, auditor);
      const ids = new Set(rows.map((r) => r.request_id));
      const missing = acked.filter((a) => !ids.has(a.id));
      assert.equal(missing.length, 0, `${missing.length} of ${acked.length} acknowledged requests have no audit record`);
      assert.deepEqual(verifyRecords(rows), { ok: true, records: rows.length });
      const v = await api(s.url, 'GET', '/v1/audit/verify', { token: auditor });
      assert.equal(v.status, 200);
      assert.equal(v.body.ok, true, JSON.stringify(v.body));
    } finally {
      await s.stop('SIGKILL');
      removeDir(dir);
    }
  });
});
