import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { code } from '../../test/expect-error.js';
import { createAuditLog } from '../audit/audit-log.js';
import { verifyDatabase } from '../cli/audit-offline.js';
import { deriveKey } from '../crypto/kdf.js';
import { createKeyFile, keyFileSeal, readKeyFile } from '../seal/keyfile.js';
import { openServerCore } from '../server/core.js';
import { openSqliteStore } from '../storage/sqlite.js';
import type { Store } from '../storage/store.js';
import { DB_FILE, openEmbeddedStore, ROOT_KEY_FILE } from './embedded-store.js';
import { openKeyhaven } from './open-keyhaven.js';
import { ownedTempDir } from '../../test/reaper.js';

// One key stack for the key server, the embedded store and offline verify,
// on real SQLite files: a log signed by one of them verifies with the others,
// so a label that drifted in one place fails here.

describe('openKeyhaven', () => {
  let base: string;
  let n = 0;
  const freshDir = () => join(base, `s${++n}`);
  const lastRecord = (dbPath: string) => {
    const db = new BetterSqlite3(dbPath, { readonly: true });
    try {
      return db.prepare<[], { operation: string; details: string | null }>('select operation, details from audit order by seq desc limit 1').get()!;
    } finally {
      db.close();
    }
  };

  before(() => {
    base = ownedTempDir('kh-open-');
  });
  after(() => {
    rmSync(base, { recursive: true, force: true });
  });

  it('embedded store, key server and offline verify sign and check one audit head', async () => {
    const dir = freshDir();
    const dbPath = join(dir, DB_FILE);
    const keyFile = join(dir, ROOT_KEY_FILE);
    const es = await openEmbeddedStore({ dataDir: dir, create: true });
    await es.keys.create('k1', 'test');
    await es.keys.rotate('k1', 'test');
    const embeddedId = es.storeId;
    await es.close();

    const offline1 = await verifyDatabase(dbPath, keyFile);
    assert.equal(offline1.ok, true, JSON.stringify(offline1));
    assert.equal(offline1.headChecked, true);

    // The key server on the embedded store's file (keyfile seal, same root key): it unseals at start-up
    // and adopts the head the embedded store signed; a head it could not check would be named in the unseal record.
    const store = await openSqliteStore({ path: dbPath, create: false });
    const core = await openServerCore({ store, seal: keyFileSeal(keyFile), auditFsync: true });
    try {
      assert.equal(core.status().sealed, false);
      const unseal = lastRecord(dbPath);
      assert.equal(unseal.operation, 'sys.unseal');
      assert.doesNotMatch(unseal.details ?? '', /auditHeadBroken/);
      const s = core.services();
      assert.equal(s.storeId, embeddedId);
      assert.equal((await s.keys.get('k1')).currentVersion, 2);
      await s.keys.create('k2', 'test');
      assert.deepEqual(await core.audit.verify(), { ok: true, records: (await store.lastAuditSeq()) });
    } finally {
      await core.close();
      await store.close();
    }

    const offline2 = await verifyDatabase(dbPath, keyFile);
    assert.equal(offline2.ok, true, JSON.stringify(offline2));
    assert.ok(offline2.records > offline1.records);

    const again = await openEmbeddedStore({ dataDir: dir, create: false });
    try {
      assert.equal((await again.keys.get('k2')).currentVersion, 1);
      assert.equal((await again.audit.verify()).ok, true);
    } finally {
      await again.close();
    }
  });

  it('the head key is derived with the label existing databases were signed with', async () => {
    const dir = freshDir();
    const store = await openSqliteStore({ path: join(dir, DB_FILE), create: true });
    const rootKey = randomBytes(32);
    try {
      const kh = await openKeyhaven({ store, rootKey });
      assert.equal(kh.headIntact, true);
      await kh.keys.create('k1', 'test');
      await kh.audit.record({ actor: 'test', operation: 'x', result: 'ok' });
      await kh.audit.flush();
      // Written out here on purpose: changing the label makes every stored head unverifiable.
      const pinned = createAuditLog(store, { headKey: deriveKey(rootKey, 'keyhaven audit head key v1') });
      assert.deepEqual(await pinned.verify(), { ok: true, records: 2 });
      const other = createAuditLog(store, { headKey: deriveKey(rootKey, 'keyhaven audit head key v2') });
      assert.equal((await other.verify()).ok, false, 'a head checked with another key must not verify');
    } finally {
      await store.close();
    }
  });

  it('a wrong root key is refused by every caller, naming the key, not the log', async () => {
    const dir = freshDir();
    const es = await openEmbeddedStore({ dataDir: dir, create: true });
    await es.keys.create('k1', 'test');
    await es.close();
    const otherKey = join(base, `other-${n}.key`);
    createKeyFile(otherKey);
    const store = await openSqliteStore({ path: join(dir, DB_FILE), create: false });
    const wrong = readKeyFile(otherKey);
    try {
      await assert.rejects(openKeyhaven({ store, rootKey: wrong }), code('config_invalid', /root key does not match/));
    } finally {
      wrong.fill(0);
      await store.close();
    }
    await assert.rejects(openEmbeddedStore({ dataDir: dir, rootKeyFile: otherKey, create: false }), code('config_invalid', /root key does not match/));
    await assert.rejects(verifyDatabase(join(dir, DB_FILE), otherKey), code('config_invalid', /root key does not match/));
    // The right key still verifies: nothing was written by the refused opens.
    assert.equal((await verifyDatabase(join(dir, DB_FILE), join(dir, ROOT_KEY_FILE))).ok, true);
  });

  it('a head deleted from a store signed before is reported, not replaced', async () => {
    const dir = freshDir();
    const dbPath = join(dir, DB_FILE);
    const rootKey = randomBytes(32);
    const open = async (fn: (s: Store) => Promise<void>) => {
      const s = await openSqliteStore({ path: dbPath, create: true });
      try {
        await fn(s);
      } finally {
        await s.close();
      }
    };
    await open(async (store) => {
      const kh = await openKeyhaven({ store, rootKey });
      await kh.keys.create('k1', 'test');
      await kh.audit.flush();
    });
    const db = new BetterSqlite3(dbPath);
    db.exec("delete from meta where name = 'audit_head'");
    db.close();
    await open(async (store) => {
      const kh = await openKeyhaven({ store, rootKey });
      assert.equal(kh.headIntact, false);
      await kh.audit.record({ actor: 'test', operation: 'after', result: 'ok' });
      assert.equal((await kh.audit.verify()).ok, false, 'the damage stays visible');
    });
    // Told that the log was never signed (the server's first unseal after init), a missing head is no damage.
    await open(async (store) => {
      const kh = await openKeyhaven({ store, rootKey, expectSignedHead: false });
      assert.equal(kh.headIntact, true);
    });
  });
});
