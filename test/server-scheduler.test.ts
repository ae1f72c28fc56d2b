import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import type { AuditRow } from '../src/storage/store.js';
import { removeDir, waitFor } from './helpers.js';
import { api, setupCast, startServerProcess, type Cast, type ServerProcess } from './server-helpers.js';

// The key server's scheduler (interval 1 s) on SQLite: automatic rotation,
// scheduled destruction, and the minimum decryption version.

const b64 = (s: string) => Buffer.from(s).toString('base64');

describe('key lifecycle over time', () => {
  let s: ServerProcess;
  let cast: Cast;

  before(async () => {
    s = await startServerProcess();
    cast = await setupCast(s.url);
  });
  after(async () => {
    await s?.stop();
    if (s) removeDir(s.dir);
  });

  const key = async (name: string) => {
    const r = await api(s.url, 'GET', `/v1/keys/${name}`, { token: cast.keyAdmin });
    assert.equal(r.status, 200, r.text);
    return r.body;
  };
  const encrypt = async (name: string, text: string) => {
    const r = await api(s.url, 'POST', `/v1/keys/${name}/encrypt`, { token: cast.appKey, body: { plaintext: b64(text) } });
    assert.equal(r.status, 200, r.text);
    return r.body as { ciphertext: string; version: number };
  };
  const decrypt = (name: string, ciphertext: string) => api(s.url, 'POST', `/v1/keys/${name}/decrypt`, { token: cast.appKey, body: { ciphertext } });
  const newKey = async (name: string) => {
    assert.equal((await api(s.url, 'POST', '/v1/keys', { token: cast.keyAdmin, body: { name } })).status, 200);
    const g = await api(s.url, 'PUT', `/v1/apps/app1/grants/${name}`, { token: cast.keyAdmin, body: { operations: ['encrypt', 'decrypt', 'rewrap'] } });
    assert.equal(g.status, 200, g.text);
  };
  const records = async (query: string): Promise<AuditRow[]> => {
    const r = await api(s.url, 'GET', `/v1/audit?limit=10000&${query}`, { token: cast.auditor });
    assert.equal(r.status, 200, r.text);
    return r.text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as AuditRow);
  };
  /** Changes a key row behind the server's back, as time passing would. */
  const backdate = (name: string, column: 'next_rotation_at' | 'destroy_at', iso: string) => {
    const db = new Database(join(s.dir, 'keyhaven.db'));
    try {
      db.pragma('busy_timeout = 5000');
      const res = db.prepare(`update keys set ${column} = ? where name = ?`).run(iso, name);
      assert.equal(res.changes, 1);
    } finally {
      db.close();
    }
  };

  it('a due rotation happens on the next tick: the version goes up by one and nextRotationAt moves on by the period', async () => {
    await newKey('rot');
    const p = await api(s.url, 'PUT', '/v1/keys/rot/policy', { token: cast.keyAdmin, body: { rotationPeriod: '30d' } });
    assert.equal(p.status, 200, p.text);
    assert.equal(p.body.rotationPeriod, '30d');
    const old = await encrypt('rot', 'before rotation');
    assert.equal(old.version, 1);
    backdate('rot', 'next_rotation_at', new Date(Date.now() - 60_000).toISOString());
    const k = await waitFor(async () => {
      const cur = await key('rot');
      return cur.currentVersion > 1 ? cur : undefined;
    }, 'the scheduled rotation', 15_000);
    assert.equal(k.currentVersion, 2);
    const v2 = k.versions.find((v: { version: number }) => v.version === 2);
    assert.ok(v2, 'version 2 exists');
    assert.equal(Date.parse(k.nextRotationAt) - Date.parse(v2.createdAt), 30 * 86400_000, 'next rotation is one period after this one');
    assert.ok(Date.parse(k.nextRotationAt) > Date.now());
    // New encryptions use version 2; the old ciphertext still decrypts.
    assert.equal((await encrypt('rot', 'after rotation')).version, 2);
    const d = await decrypt('rot', old.ciphertext);
    assert.equal(d.status, 200, d.text);
    assert.equal(Buffer.from(d.body.plaintext, 'base64').toString(), 'before rotation');
    // Recorded once, as scheduled, by the scheduler.
    const rot = await records('key=rot&operation=key.rotate');
    assert.equal(rot.length, 1, 'one rotation record: the scheduler\'s');
    assert.equal(rot[0]!.actor, 'system:scheduler');
    assert.equal(rot[0]!.key_version, 2);
    assert.equal(JSON.parse(rot[0]!.details!).scheduled, true);
    // Not again on later ticks: it is not due.
    await new Promise((r) => setTimeout(r, 2500));
    assert.equal((await key('rot')).currentVersion, 2);
  });

  it('a destruction scheduled with pendingDays 0 takes effect on the next tick: key and versions destroyed, old ciphertext refused', async () => {
    await newKey('doomed');
    const ct = await encrypt('doomed', 'soon unreadable');
    assert.equal((await api(s.url, 'POST', '/v1/keys/doomed/rotate', { token: cast.keyAdmin, body: {} })).status, 200);
    const d = await api(s.url, 'POST', '/v1/keys/doomed/destroy', { token: cast.keyAdmin, body: { pendingDays: 0 } });
    assert.equal(d.status, 200, d.text);
    assert.equal(d.body.state, 'pending_destruction');
    const k = await waitFor(async () => {
      const cur = await key('doomed');
      return cur.state === 'destroyed' ? cur : undefined;
    }, 'the scheduled destruction', 15_000);
    assert.equal(k.versions.length, 2);
    for (const v of k.versions) {
      assert.equal(v.state, 'destroyed');
      assert.ok(v.destroyedAt);
    }
    const dec = await decrypt('doomed', ct.ciphertext);
    assert.equal(dec.status, 410, dec.text);
    assert.equal(dec.body.error.code, 'key_destroyed');
    const enc = await api(s.url, 'POST', '/v1/keys/doomed/encrypt', { token: cast.appKey, body: { plaintext: b64('x') } });
    assert.ok(enc.status === 409 || enc.status === 410, `encrypt with a destroyed key: ${enc.status} ${enc.text}`);
    const cancel = await api(s.url, 'POST', '/v1/keys/doomed/cancel-destroy', { token: cast.keyAdmin, body: {} });
    assert.equal(cancel.status, 409, 'a destroyed key cannot come back');
    // The material is gone from storage, not only marked.
    const db = new Database(join(s.dir, 'keyhaven.db'), { readonly: true });
    try {
      const id = (db.prepare('select id from keys where name = ?').get('doomed') as { id: string }).id;
      const left = db.prepare("select count(*) as n from barrier where path like 'keys/' || ? || '/%'").get(id) as { n: number };
      assert.equal(left.n, 0);
    } finally {
      db.close();
    }
    const rec = await records('key=doomed&operation=key.destroy&principal=system:scheduler');
    assert.equal(rec.length, 1);
    assert.equal(rec[0]!.result, 'ok');
    assert.equal(JSON.parse(rec[0]!.details!).scheduled, true);
  });

  it('cancel-destroy before the deadline brings the key back disabled; enabled again, it decrypts and encrypts', async () => {
    await newKey('spared');
    const ct = await encrypt('spared', 'still here');
    const d = await api(s.url, 'POST', '/v1/keys/spared/destroy', { token: cast.keyAdmin, body: { pendingDays: 1 } });
    assert.equal(d.status, 200, d.text);
    assert.equal(d.body.state, 'pending_destruction');
    assert.ok(Date.parse(d.body.destroyAt) > Date.now() + 86000_000);
    // Pending: the key is out of use.
    assert.equal((await decrypt('spared', ct.ciphertext)).status, 409);
    const c = await api(s.url, 'POST', '/v1/keys/spared/cancel-destroy', { token: cast.keyAdmin, body: {} });
    assert.equal(c.status, 200, c.text);
    assert.equal(c.body.state, 'disabled');
    assert.equal(c.body.destroyAt, null);
    // A tick later nothing has been destroyed.
    await new Promise((r) => setTimeout(r, 2500));
    const k = await key('spared');
    assert.equal(k.state, 'disabled');
    assert.ok(k.versions.every((v: { state: string }) => v.state === 'active'));
    const e = await api(s.url, 'POST', '/v1/keys/spared/enable', { token: cast.keyAdmin, body: {} });
    assert.equal(e.status, 200, e.text);
    const dec = await decrypt('spared', ct.ciphertext);
    assert.equal(dec.status, 200, dec.text);
    assert.equal(Buffer.from(dec.body.plaintext, 'base64').toString(), 'still here');
    await encrypt('spared', 'new');
  });

  it('a destruction whose deadline is moved into the past happens on the next tick', async () => {
    await newKey('late');
    const d = await api(s.url, 'POST', '/v1/keys/late/destroy', { token: cast.keyAdmin, body: { pendingDays: 30 } });
    assert.equal(d.status, 200, d.text);
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal((await key('late')).state, 'pending_destruction', 'not before its deadline');
    backdate('late', 'destroy_at', new Date(Date.now() - 1000).toISOString());
    await waitFor(async () => ((await key('late')).state === 'destroyed' ? true : undefined), 'the destruction', 15_000);
  });

  it('minDecryptionVersion 3 refuses v1 and v2 ciphertexts (409 key_disabled) and keeps v3; lowering it re-allows v1', async () => {
    await newKey('mdv');
    const v1 = await encrypt('mdv', 'one');
    assert.equal((await api(s.url, 'POST', '/v1/keys/mdv/rotate', { token: cast.keyAdmin, body: {} })).status, 200);
    const v2 = await encrypt('mdv', 'two');
    assert.equal((await api(s.url, 'POST', '/v1/keys/mdv/rotate', { token: cast.keyAdmin, body: {} })).status, 200);
    const v3 = await encrypt('mdv', 'three');
    assert.deepEqual([v1.version, v2.version, v3.version], [1, 2, 3]);

    const tooHigh = await api(s.url, 'PUT', '/v1/keys/mdv/policy', { token: cast.keyAdmin, body: { minDecryptionVersion: 4 } });
    assert.equal(tooHigh.status, 400, 'above the current version');
    const p = await api(s.url, 'PUT', '/v1/keys/mdv/policy', { token: cast.keyAdmin, body: { minDecryptionVersion: 3 } });
    assert.equal(p.status, 200, p.text);
    assert.equal(p.body.minDecryptionVersion, 3);
    for (const old of [v1, v2]) {
      const r = await decrypt('mdv', old.ciphertext);
      assert.equal(r.status, 409, r.text);
      assert.equal(r.body.error.code, 'key_disabled');
    }
    const ok3 = await decrypt('mdv', v3.ciphertext);
    assert.equal(ok3.status, 200, ok3.text);
    assert.equal(Buffer.from(ok3.body.plaintext, 'base64').toString(), 'three');
    // A retired version cannot be used by rewrap either.
    const rw = await api(s.url, 'POST', '/v1/keys/mdv/rewrap', { token: cast.appKey, body: { ciphertext: v1.ciphertext } });
    assert.equal(rw.status, 409, rw.text);

    const back = await api(s.url, 'PUT', '/v1/keys/mdv/policy', { token: cast.keyAdmin, body: { minDecryptionVersion: 1 } });
    assert.equal(back.status, 200, back.text);
    const ok1 = await decrypt('mdv', v1.ciphertext);
    assert.equal(ok1.status, 200, ok1.text);
    assert.equal(Buffer.from(ok1.body.plaintext, 'base64').toString(), 'one');
  });

  it('rotate, disable, enable and cancel-destroy accept a bare POST without a body', async () => {
    await newKey('bare');
    const post = (path: string) => fetch(`${s.url}${path}`, { method: 'POST', headers: { authorization: `Bearer ${cast.keyAdmin}` } });
    const r = await post('/v1/keys/bare/rotate');
    assert.equal(r.status, 200, await r.text());
    assert.equal((await post('/v1/keys/bare/disable')).status, 200);
    assert.equal((await post('/v1/keys/bare/enable')).status, 200);
    assert.equal((await post('/v1/keys/bare/destroy')).status, 200, 'destroy with the default pending window');
    const c = await post('/v1/keys/bare/cancel-destroy');
    assert.equal(c.status, 200, await c.text());
    assert.equal((await key('bare')).state, 'disabled');
  });
});
