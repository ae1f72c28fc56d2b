import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { code } from '../../test/expect-error.js';
import { openEmbeddedStore, type EmbeddedStore } from './embedded-store.js';
import { ownedTempDir } from '../../test/reaper.js';

// Server-side key lifecycle on a real SQLite store: rotation policy and the
// scheduler, minimum decryption version, scheduled destruction, bound context.


describe('key lifecycle', () => {
  let dir: string;
  let es: EmbeddedStore;
  let n = 0;
  const name = () => `k${++n}`;

  before(async () => {
    dir = ownedTempDir('kh-life-');
    es = await openEmbeddedStore({ dataDir: dir, create: true });
  });
  after(async () => {
    await es.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a rotation period sets the next rotation; the scheduler rotates only when due, once', async () => {
    const k = name();
    const made = await es.keys.create(k, 'test', { rotationPeriodS: 3600 });
    assert.equal(made.rotationPeriodS, 3600);
    assert.equal(Date.parse(made.nextRotationAt!) - Date.parse(made.createdAt), 3600_000);
    assert.deepEqual((await es.keys.runScheduled(new Date(), 'sched')).rotated, []);
    const later = new Date(Date.parse(made.nextRotationAt!) + 1000);
    assert.deepEqual((await es.keys.runScheduled(later, 'sched')).rotated, [k]);
    const after1 = await es.keys.get(k);
    assert.equal(after1.currentVersion, 2);
    assert.equal(Date.parse(after1.nextRotationAt!), later.getTime() + 3600_000);
    // Same instant again: nothing is due any more.
    assert.deepEqual((await es.keys.runScheduled(later, 'sched')).rotated, []);
    assert.equal((await es.keys.get(k)).currentVersion, 2);
  });

  it('turning the period off clears the next rotation; bad periods are refused', async () => {
    const k = name();
    await es.keys.create(k, 'test', { rotationPeriodS: 86400 });
    const off = await es.keys.setPolicy(k, { rotationPeriodS: null }, 'test');
    assert.equal(off.rotationPeriodS, null);
    assert.equal(off.nextRotationAt, null);
    await assert.rejects(es.keys.setPolicy(k, { rotationPeriodS: 5 }, 'test'), code('invalid_argument', /between 1 minute/));
    await assert.rejects(es.keys.create(name(), 'test', { rotationPeriodS: 1.5 }), code('invalid_argument'));
  });

  it('minDecryptionVersion retires older versions and can be lowered again', async () => {
    const k = name();
    await es.keys.create(k, 'test');
    const v1 = es.keys.encrypt(k, Buffer.from('one'));
    await es.keys.rotate(k, 'test');
    await es.keys.rotate(k, 'test');
    const v3 = es.keys.encrypt(k, Buffer.from('three'));
    await es.keys.setPolicy(k, { minDecryptionVersion: 3 }, 'test');
    await assert.rejects(es.keys.decrypt(v1.ciphertext), code('key_disabled', /retired/));
    assert.equal((await es.keys.decrypt(v3.ciphertext)).plaintext.toString(), 'three');
    await assert.rejects(es.keys.setPolicy(k, { minDecryptionVersion: 4 }, 'test'), code('invalid_argument'));
    await es.keys.setPolicy(k, { minDecryptionVersion: 1 }, 'test');
    assert.equal((await es.keys.decrypt(v1.ciphertext)).plaintext.toString(), 'one');
  });

  it('scheduled destruction stops the key at once, is cancellable, and destroys every version when due', async () => {
    const k = name();
    await es.keys.create(k, 'test');
    const ct = es.keys.encrypt(k, Buffer.from('secret'));
    const pending = await es.keys.scheduleDestroy(k, 7 * 86400, 'test');
    assert.equal(pending.state, 'pending_destruction');
    assert.throws(() => es.keys.encrypt(k, Buffer.from('x')), code('key_disabled'));
    await assert.rejects(es.keys.decrypt(ct.ciphertext), code('key_disabled', /scheduled for destruction/));
    await assert.rejects(es.keys.rotate(k, 'test'), code('failed_precondition'));
    const back = await es.keys.cancelDestroy(k, 'test');
    assert.equal(back.state, 'disabled');
    assert.equal(back.destroyAt, null);
    assert.equal((await es.keys.decrypt(ct.ciphertext)).plaintext.toString(), 'secret');
    await assert.rejects(es.keys.cancelDestroy(k, 'test'), code('failed_precondition'));

    const again = await es.keys.scheduleDestroy(k, 60, 'test');
    assert.deepEqual((await es.keys.runScheduled(new Date(), 'sched')).destroyed, []);
    const run = await es.keys.runScheduled(new Date(Date.parse(again.destroyAt!) + 1), 'sched');
    assert.deepEqual(run.destroyed, [k]);
    const gone = await es.keys.get(k);
    assert.equal(gone.state, 'destroyed');
    assert.ok(gone.versions.every((v) => v.state === 'destroyed'));
    await assert.rejects(es.keys.decrypt(ct.ciphertext), code('key_destroyed'));
    await assert.rejects(es.keys.setEnabled(k, true, 'test'), code('key_destroyed'));
    const audit = await es.store.queryAudit({ keyName: k, operation: 'key.destroy', limit: 10 });
    assert.equal(audit.length, 1);
    assert.equal(JSON.parse(audit[0]!.details!).scheduled, true);
  });

  it('context is bound: decrypting needs the same bytes', async () => {
    const k = name();
    await es.keys.create(k, 'test');
    const ctx = randomBytes(12);
    const ct = es.keys.encrypt(k, Buffer.from('bound'), undefined, ctx);
    assert.equal((await es.keys.decrypt(ct.ciphertext, { context: ctx })).plaintext.toString(), 'bound');
    await assert.rejects(es.keys.decrypt(ct.ciphertext), code('integrity'));
    await assert.rejects(es.keys.decrypt(ct.ciphertext, { context: randomBytes(12) }), code('integrity'));
  });

  it('wipe() zeroes and forgets cached material', async () => {
    const k = name();
    await es.keys.create(k, 'test');
    es.keys.wipe();
    assert.equal(es.keys.idOf(k), undefined);
    assert.throws(() => es.keys.encrypt(k, Buffer.from('x')), code('not_found'));
    await es.keys.ensureLoaded(k);
    assert.ok(es.keys.idOf(k));
  });
});
