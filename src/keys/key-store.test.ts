import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import BetterSqlite3 from 'better-sqlite3';
import { createAuditLog, verifyStore } from '../audit/audit-log.js';
import { openBarrier } from '../barrier/barrier.js';
import { encodeHeader, HEADER_BYTES, openBlob, parseHeader } from '../crypto/blob.js';
import { deriveKey } from '../crypto/kdf.js';
import { code } from '../../test/expect-error.js';
import { createKeyFile, readKeyFile } from '../seal/keyfile.js';
import { openSqliteStore } from '../storage/sqlite.js';
import type { AuditRow, Store } from '../storage/store.js';
import { DB_FILE, openEmbeddedStore, ROOT_KEY_FILE, type EmbeddedStore } from './embedded-store.js';
import { createKeyStore } from './key-store.js';
import { ownedTempDir } from '../../test/reaper.js';

let root: string;
let n = 0;
const opened: EmbeddedStore[] = [];
const rawDbs: BetterSqlite3.Database[] = [];

before(() => {
  root = ownedTempDir('kh-keys-');
});

afterEach(async () => {
  for (const db of rawDbs.splice(0)) if (db.open) db.close();
  for (const es of opened.splice(0)) await es.close().catch(() => {});
});

after(() => {
  rmSync(root, { recursive: true, force: true });
});

function newDir(): string {
  n += 1;
  return join(root, `case-${n}`);
}

async function open(dataDir: string, opts: { create?: boolean; rootKeyFile?: string } = {}): Promise<EmbeddedStore> {
  const es = await openEmbeddedStore({ dataDir, create: opts.create ?? true, rootKeyFile: opts.rootKeyFile });
  opened.push(es);
  return es;
}

async function closeOne(es: EmbeddedStore): Promise<void> {
  const i = opened.indexOf(es);
  if (i >= 0) opened.splice(i, 1);
  await es.close();
}


async function auditRows(es: EmbeddedStore): Promise<AuditRow[]> {
  await es.audit.flush();
  return es.store.readAudit(0, 100_000);
}

/** Every byte the database holds on disk: the main file plus its WAL. */
function dbBytes(dataDir: string): Buffer {
  const parts: Buffer[] = [];
  for (const name of readdirSync(dataDir)) {
    if (name.startsWith(DB_FILE)) parts.push(readFileSync(join(dataDir, name)));
  }
  return Buffer.concat(parts);
}

const PT = Buffer.from('0123456789abcdef0123456789abcdef'); // a 32-byte seed

describe('keys/key-store: create, list, get (real SQLite)', () => {
  it('creates a key at version 1, enabled', async () => {
    const es = await open(newDir());
    const k = await es.keys.create('kubernetes-secrets', 'tester');
    assert.equal(k.name, 'kubernetes-secrets');
    assert.match(k.id, /^[0-9a-f]{16}$/);
    assert.equal(k.state, 'enabled');
    assert.equal(k.currentVersion, 1);
    assert.equal(k.versions.length, 1);
    assert.equal(k.versions[0]!.version, 1);
    assert.equal(k.versions[0]!.state, 'active');
    assert.equal(k.versions[0]!.destroyedAt, null);
    assert.match(k.versions[0]!.tag, /^[0-9a-f]{16}$/);
    assert.ok(!Number.isNaN(Date.parse(k.createdAt)));
  });

  it('lists keys by name and gets each one', async () => {
    const es = await open(newDir());
    const b = await es.keys.create('bravo', 't');
    const a = await es.keys.create('alpha', 't');
    const list = await es.keys.list();
    assert.deepEqual(
      list.map((k) => k.name),
      ['alpha', 'bravo'],
    );
    assert.deepEqual(await es.keys.get('alpha'), a);
    assert.deepEqual(await es.keys.get('bravo'), b);
    assert.notEqual(a.id, b.id);
  });

  it('an empty store lists no keys', async () => {
    const es = await open(newDir());
    assert.deepEqual(await es.keys.list(), []);
  });

  it('get of a missing key is not_found', async () => {
    const es = await open(newDir());
    await assert.rejects(es.keys.get('nope'), code('not_found', /"nope"/));
  });

  const badNames = ['', '-lead', '.lead', '_lead', 'a/b', 'a b', 'a:b', 'ключ', 'a\nb', 'k'.repeat(129)];
  for (const name of badNames) {
    it(`refuses the key name ${JSON.stringify(name.length > 20 ? `${name.slice(0, 10)}…(${name.length})` : name)} with invalid_argument`, async () => {
      const es = await open(newDir());
      await assert.rejects(es.keys.create(name, 't'), code('invalid_argument'));
      await assert.rejects(es.keys.get(name), code('invalid_argument'));
      await assert.rejects(es.keys.rotate(name, 't'), code('invalid_argument'));
      assert.deepEqual(await es.keys.list(), []);
    });
  }

  it('accepts names of 1 and 128 characters with dots, dashes and underscores', async () => {
    const es = await open(newDir());
    for (const name of ['a', '9', 'A.b_c-1', 'k'.repeat(128)]) assert.equal((await es.keys.create(name, 't')).name, name);
  });

  it('a duplicate create is already_exists and leaves the first key unchanged', async () => {
    const es = await open(newDir());
    const first = await es.keys.create('dup', 't');
    const ct = es.keys.encrypt('dup', PT).ciphertext;
    await assert.rejects(es.keys.create('dup', 't'), code('already_exists', /"dup"/));
    assert.equal((await es.keys.list()).length, 1);
    assert.deepEqual(await es.keys.get('dup'), first);
    assert.deepEqual((await es.keys.decrypt(ct)).plaintext, PT);
  });
});

describe('keys/key-store: encrypt, decrypt, rotate (real SQLite)', () => {
  it('round-trips and reports the key and version', async () => {
    const es = await open(newDir());
    const k = await es.keys.create('k', 't');
    const enc = es.keys.encrypt('k', PT);
    assert.equal(enc.keyName, 'k');
    assert.equal(enc.keyId, k.id);
    assert.equal(enc.version, 1);
    assert.equal(enc.versionTag, k.versions[0]!.tag);
    assert.equal(enc.ciphertext.indexOf(PT), -1);
    const h = parseHeader(enc.ciphertext);
    assert.equal(h.keyRef.toString('hex'), k.id);
    assert.equal(h.version, 1);
    const dec = await es.keys.decrypt(enc.ciphertext);
    assert.deepEqual(dec.plaintext, PT);
    assert.equal(dec.keyName, 'k');
    assert.equal(dec.keyId, k.id);
    assert.equal(dec.version, 1);
    assert.equal(dec.versionTag, k.versions[0]!.tag);
  });

  it('encrypt with an unknown key is not_found', async () => {
    const es = await open(newDir());
    assert.throws(() => es.keys.encrypt('missing', PT), code('not_found'));
  });

  it('encrypt uses the newest version after each rotate, and every earlier version still decrypts', async () => {
    const es = await open(newDir());
    await es.keys.create('k', 't');
    const cts: Buffer[] = [es.keys.encrypt('k', Buffer.from('v1')).ciphertext];
    for (let v = 2; v <= 5; v++) {
      const info = await es.keys.rotate('k', 't');
      assert.equal(info.currentVersion, v);
      assert.equal(info.versions.length, v);
      const enc = es.keys.encrypt('k', Buffer.from(`v${v}`));
      assert.equal(enc.version, v);
      assert.equal(parseHeader(enc.ciphertext).version, v);
      cts.push(enc.ciphertext);
    }
    for (let i = 0; i < cts.length; i++) {
      const dec = await es.keys.decrypt(cts[i]!);
      assert.equal(dec.version, i + 1);
      assert.equal(dec.plaintext.toString(), `v${i + 1}`);
    }
  });

  it('each version has its own material: a ciphertext relabelled with another version fails', async () => {
    const es = await open(newDir());
    await es.keys.create('k', 't');
    const ct1 = es.keys.encrypt('k', PT).ciphertext;
    await es.keys.rotate('k', 't');
    const relabelled = Buffer.concat([encodeHeader(parseHeader(ct1).keyRef, 2), ct1.subarray(HEADER_BYTES)]);
    await assert.rejects(es.keys.decrypt(relabelled), code('integrity'));
  });

  it('refuses a ciphertext naming a key this store never had (unknown_key_id)', async () => {
    const es = await open(newDir());
    await es.keys.create('k', 't');
    const ct = es.keys.encrypt('k', PT).ciphertext;
    const foreign = Buffer.concat([encodeHeader(randomBytes(8), 1), ct.subarray(HEADER_BYTES)]);
    await assert.rejects(es.keys.decrypt(foreign), code('unknown_key_id'));
  });

  it('refuses a ciphertext naming a version that does not exist (unknown_key_id)', async () => {
    const es = await open(newDir());
    await es.keys.create('k', 't');
    const ct = es.keys.encrypt('k', PT).ciphertext;
    const future = Buffer.concat([encodeHeader(parseHeader(ct).keyRef, 7), ct.subarray(HEADER_BYTES)]);
    await assert.rejects(es.keys.decrypt(future), code('unknown_key_id'));
  });

  it('refuses tampered, truncated and malformed ciphertexts', async () => {
    const es = await open(newDir());
    await es.keys.create('k', 't');
    const ct = es.keys.encrypt('k', PT).ciphertext;
    const flipped = Buffer.from(ct);
    flipped[ct.length - 1] = flipped[ct.length - 1]! ^ 1;
    await assert.rejects(es.keys.decrypt(flipped), code('integrity'));
    await assert.rejects(es.keys.decrypt(ct.subarray(0, ct.length - 1)), code('integrity'));
    await assert.rejects(es.keys.decrypt(ct.subarray(0, 5)), code('integrity'));
    await assert.rejects(es.keys.decrypt(Buffer.alloc(0)), code('invalid_argument'));
    await assert.rejects(es.keys.decrypt(Buffer.from('k8s:enc:aescbc:v1:key1:garbage')), code('invalid_argument'));
  });

  it('every version gets its own random tag, reported by encrypt and decrypt', async () => {
    const es = await open(newDir());
    await es.keys.create('k', 't');
    await es.keys.rotate('k', 't');
    const info = await es.keys.rotate('k', 't');
    const tags = info.versions.map((v) => v.tag);
    assert.equal(new Set(tags).size, 3);
    for (const t of tags) assert.match(t, /^[0-9a-f]{16}$/);
    const enc = es.keys.encrypt('k', PT);
    assert.equal(enc.versionTag, tags[2]);
    assert.equal((await es.keys.decrypt(enc.ciphertext)).versionTag, tags[2]);
  });

  it('decrypt with the expected tag succeeds; with another tag it is unknown_key_id', async () => {
    const es = await open(newDir());
    const k = await es.keys.create('k', 't');
    const enc = es.keys.encrypt('k', PT);
    assert.deepEqual((await es.keys.decrypt(enc.ciphertext, { expectTag: k.versions[0]!.tag })).plaintext, PT);
    for (const wrong of ['0000000000000000', '', k.versions[0]!.tag.toUpperCase()]) {
      await assert.rejects(es.keys.decrypt(enc.ciphertext, { expectTag: wrong }), code('unknown_key_id'), `tag ${JSON.stringify(wrong)}`);
    }
  });

  it('two copies of one store rotated separately: a key_id tag from one copy is refused by the other', async () => {
    const dirA = newDir();
    const a0 = await open(dirA);
    await a0.keys.create('k', 't');
    await closeOne(a0);
    const dirB = newDir();
    cpSync(dirA, dirB, { recursive: true });
    const a = await open(dirA, { create: false });
    const b = await open(dirB, { create: false });
    await a.keys.refresh('k');
    await b.keys.refresh('k');
    const infoA = await a.keys.rotate('k', 't');
    const infoB = await b.keys.rotate('k', 't');
    assert.notEqual(infoA.versions[1]!.tag, infoB.versions[1]!.tag);
    const encA = a.keys.encrypt('k', PT);
    assert.equal(encA.version, 2);
    await assert.rejects(b.keys.decrypt(encA.ciphertext, { expectTag: encA.versionTag }), code('unknown_key_id'));
    // Version 1 is shared by both copies and keeps its tag.
    assert.equal(infoA.versions[0]!.tag, infoB.versions[0]!.tag);
  });

  it('rotate of a missing key is not_found', async () => {
    const es = await open(newDir());
    await assert.rejects(es.keys.rotate('missing', 't'), code('not_found'));
  });
});

describe('keys/key-store: disable, enable, destroy (real SQLite)', () => {
  it('disable stops encrypt with key_disabled while existing ciphertexts still decrypt; enable restores encrypt', async () => {
    const es = await open(newDir());
    await es.keys.create('k', 't');
    const ct = es.keys.encrypt('k', PT).ciphertext;
    const off = await es.keys.setEnabled('k', false, 't');
    assert.equal(off.state, 'disabled');
    assert.equal((await es.keys.get('k')).state, 'disabled');
    assert.throws(() => es.keys.encrypt('k', PT), code('key_disabled'));
    assert.deepEqual((await es.keys.decrypt(ct)).plaintext, PT);
    const on = await es.keys.setEnabled('k', true, 't');
    assert.equal(on.state, 'enabled');
    assert.deepEqual((await es.keys.decrypt(ct)).plaintext, PT);
    assert.deepEqual((await es.keys.decrypt(es.keys.encrypt('k', PT).ciphertext)).plaintext, PT);
  });

  it('a disabled key stays disabled after reopening the store', async () => {
    const dir = newDir();
    const es = await open(dir);
    await es.keys.create('k', 't');
    const ct = es.keys.encrypt('k', PT).ciphertext;
    await es.keys.setEnabled('k', false, 't');
    await closeOne(es);
    const again = await open(dir, { create: false });
    await again.keys.refresh('k');
    assert.throws(() => again.keys.encrypt('k', PT), code('key_disabled'));
    assert.deepEqual((await again.keys.decrypt(ct)).plaintext, PT);
  });

  it('destroying the current version is refused (failed_precondition) and changes nothing', async () => {
    const es = await open(newDir());
    await es.keys.create('k', 't');
    await assert.rejects(es.keys.destroyVersion('k', 1, 't'), code('failed_precondition', /current version/));
    await es.keys.rotate('k', 't');
    await assert.rejects(es.keys.destroyVersion('k', 2, 't'), code('failed_precondition'));
    const info = await es.keys.get('k');
    assert.deepEqual(
      info.versions.map((v) => v.state),
      ['active', 'active'],
    );
  });

  it('a destroyed version cannot decrypt (key_destroyed); the others still do', async () => {
    const dir = newDir();
    const es = await open(dir);
    const k = await es.keys.create('k', 't');
    const ct1 = es.keys.encrypt('k', Buffer.from('one')).ciphertext;
    await es.keys.rotate('k', 't');
    const ct2 = es.keys.encrypt('k', Buffer.from('two')).ciphertext;
    await es.keys.rotate('k', 't');
    const info = await es.keys.destroyVersion('k', 1, 't');
    assert.equal(info.versions[0]!.state, 'destroyed');
    assert.ok(info.versions[0]!.destroyedAt !== null && !Number.isNaN(Date.parse(info.versions[0]!.destroyedAt)));
    assert.equal(info.versions[1]!.state, 'active');
    await assert.rejects(es.keys.decrypt(ct1), code('key_destroyed'));
    assert.equal((await es.keys.decrypt(ct2)).plaintext.toString(), 'two');
    // The material is gone from storage, not only marked.
    assert.equal(await es.store.barrierGet(`keys/${k.id}/versions/1`), undefined);
    assert.ok((await es.store.barrierGet(`keys/${k.id}/versions/2`)) !== undefined);

    await closeOne(es);
    const again = await open(dir, { create: false });
    await assert.rejects(again.keys.decrypt(ct1), code('key_destroyed'));
    assert.equal((await again.keys.decrypt(ct2)).plaintext.toString(), 'two');
  });

  it('destroying a version twice is key_destroyed; a missing version not_found; a bad number invalid_argument', async () => {
    const es = await open(newDir());
    await es.keys.create('k', 't');
    await es.keys.rotate('k', 't');
    await es.keys.destroyVersion('k', 1, 't');
    await assert.rejects(es.keys.destroyVersion('k', 1, 't'), code('key_destroyed'));
    await assert.rejects(es.keys.destroyVersion('k', 9, 't'), code('not_found'));
    for (const v of [0, -1, 1.5]) await assert.rejects(es.keys.destroyVersion('k', v, 't'), code('invalid_argument'), `version ${v}`);
  });
});

describe('keys/key-store: audit (real SQLite)', () => {
  it('records every management operation, success and failure, in an intact chain', async () => {
    const es = await open(newDir());
    await es.keys.create('k', 'alice');
    await es.keys.rotate('k', 'alice');
    await es.keys.setEnabled('k', false, 'bob');
    await es.keys.setEnabled('k', true, 'bob');
    await es.keys.destroyVersion('k', 1, 'carol');
    await assert.rejects(es.keys.create('k', 'mallory'));
    await assert.rejects(es.keys.rotate('missing', 'mallory'));
    const rows = await auditRows(es);
    assert.deepEqual(
      rows.map((r) => [r.actor, r.operation, r.key_name, r.key_version, r.result]),
      [
        ['alice', 'key.create', 'k', 1, 'ok'],
        ['alice', 'key.rotate', 'k', 2, 'ok'],
        ['bob', 'key.disable', 'k', null, 'ok'],
        ['bob', 'key.enable', 'k', null, 'ok'],
        ['carol', 'key.destroy-version', 'k', 1, 'ok'],
        ['mallory', 'key.create', 'k', null, 'already_exists'],
        ['mallory', 'key.rotate', 'missing', null, 'not_found'],
      ],
    );
    assert.deepEqual(await verifyStore(es.store), { ok: true, records: 7 });
  });

  it('a failed create with an invalid name is refused without storing the name as a key', async () => {
    const es = await open(newDir());
    await assert.rejects(es.keys.create('bad/name', 'mallory'), code('invalid_argument'));
    assert.deepEqual(await es.keys.list(), []);
  });

  // DESIGN.md: every request is recorded before its answer is sent, and if the
  // record cannot be written the request fails. A change the caller is told
  // failed must not have happened: otherwise it is both unaudited and applied.
  it('a rotation whose audit record cannot be written fails and is not applied', async () => {
    const dir = newDir();
    const es = await open(dir);
    await es.keys.create('k', 't');
    const db = new BetterSqlite3(join(dir, DB_FILE));
    rawDbs.push(db);
    db.exec(`create trigger no_audit before insert on audit begin select raise(abort, 'simulated audit write failure'); end`);
    await assert.rejects(es.keys.rotate('k', 't'), code('audit_failed'));
    db.exec('drop trigger no_audit');
    const info = await es.keys.get('k');
    assert.equal(info.currentVersion, 1, 'the rotation was committed although the caller was told it failed and no audit record exists');
  });

  it('a version destruction whose audit record cannot be written fails and is not applied', async () => {
    const dir = newDir();
    const es = await open(dir);
    await es.keys.create('k', 't');
    const ct1 = es.keys.encrypt('k', PT).ciphertext;
    await es.keys.rotate('k', 't');
    const db = new BetterSqlite3(join(dir, DB_FILE));
    rawDbs.push(db);
    db.exec(`create trigger no_audit before insert on audit begin select raise(abort, 'simulated audit write failure'); end`);
    await assert.rejects(es.keys.destroyVersion('k', 1, 't'), code('audit_failed'));
    db.exec('drop trigger no_audit');
    const info = await es.keys.get('k');
    assert.equal(info.versions[0]!.state, 'active', 'version 1 was destroyed although the caller was told it failed and no audit record exists');
    assert.deepEqual((await es.keys.decrypt(ct1)).plaintext, PT);
  });
});

describe('keys/embedded-store: key material at rest (real files)', () => {
  it('creates root.key (32 bytes, 0600) and the database (0600) in an empty data dir', async () => {
    const dir = newDir();
    const es = await open(dir);
    assert.equal(es.dbPath, join(dir, DB_FILE));
    const keyStat = statSync(join(dir, ROOT_KEY_FILE));
    assert.equal(keyStat.size, 32);
    assert.equal(keyStat.mode & 0o777, 0o600);
    assert.equal(statSync(join(dir, DB_FILE)).mode & 0o777, 0o600);
    assert.match(es.storeId, /^[0-9a-f]{16}$/);
  });

  it('the store id is stable across reopening and differs between stores', async () => {
    const dir = newDir();
    const a = await open(dir);
    const id = a.storeId;
    await closeOne(a);
    const again = await open(dir, { create: false });
    assert.equal(again.storeId, id);
    const other = await open(newDir());
    assert.notEqual(other.storeId, id);
  });

  it('the database files hold neither the root key, the barrier key, the key material nor the plaintext', async () => {
    const dir = newDir();
    const es = await open(dir);
    const k = await es.keys.create('k', 't');
    await es.keys.rotate('k', 't');
    const plaintext = Buffer.from('a recognisable plaintext seed 1!');
    const ct = es.keys.encrypt('k', plaintext).ciphertext;
    await es.audit.flush();

    // Recover the real material through the barrier, to know what to look for.
    const rootKey = readKeyFile(join(dir, ROOT_KEY_FILE));
    const barrier = await openBarrier(es.store, rootKey);
    const material: Buffer[] = [];
    for (const v of [1, 2]) {
      const m = await barrier.get(es.store, `keys/${k.id}/versions/${v}`);
      assert.ok(m, `material of version ${v}`);
      assert.equal(m.length, 32);
      material.push(m);
    }
    assert.deepEqual(openBlob(material[1]!, ct), plaintext, 'the recovered material is the real one');

    const sealedRows = (await es.store.barrierGet(`keys/${k.id}/versions/2`))!;
    assert.equal(sealedRows.indexOf(material[1]!), -1, 'the barrier row is sealed');

    const bytes = dbBytes(dir);
    assert.ok(bytes.length > 0);
    const secrets: Array<[string, Buffer]> = [
      ['root key', rootKey],
      ['barrier key', deriveKey(rootKey, 'keyhaven barrier key v1')],
      ['version 1 material', material[0]!],
      ['version 2 material', material[1]!],
      ['plaintext', plaintext],
    ];
    for (const [what, secret] of secrets) {
      assert.equal(bytes.indexOf(secret), -1, `${what} found in the clear`);
      assert.equal(bytes.indexOf(Buffer.from(secret.toString('hex'))), -1, `${what} found as hex`);
      assert.equal(bytes.indexOf(Buffer.from(secret.toString('base64'))), -1, `${what} found as base64`);
    }
  });
});

describe('keys/embedded-store: opening (real files)', () => {
  it('a different root key file is refused: config_invalid "root key does not match", and the store stays usable', async () => {
    const dir = newDir();
    const es = await open(dir);
    await es.keys.create('k', 't');
    const ct = es.keys.encrypt('k', PT).ciphertext;
    await closeOne(es);

    const otherKey = join(newDir(), 'other.key');
    createKeyFile(otherKey);
    await assert.rejects(open(dir, { create: false, rootKeyFile: otherKey }), code('config_invalid', /root key does not match/));
    await assert.rejects(open(dir, { create: true, rootKeyFile: otherKey }), code('config_invalid', /root key does not match/));

    const again = await open(dir, { create: false });
    assert.deepEqual((await again.keys.decrypt(ct)).plaintext, PT);
  });

  it('a data dir with no database and create:false is config_invalid, and creates nothing', async () => {
    const dir = newDir();
    mkdirSync(dir, { recursive: true });
    await assert.rejects(open(dir, { create: false }), code('config_invalid', /keyhaven init/));
    assert.deepEqual(readdirSync(dir), []);
  });

  it('a data dir that does not exist and create:false is config_invalid, and is not created', async () => {
    const dir = newDir();
    await assert.rejects(open(dir, { create: false }), code('config_invalid'));
    assert.equal(existsSync(dir), false);
  });

  for (const create of [true, false]) {
    it(`a database without its root key file is refused (create:${create}) and no new key file is created`, async () => {
      const dir = newDir();
      const es = await open(dir);
      await es.keys.create('k', 't');
      await closeOne(es);
      unlinkSync(join(dir, ROOT_KEY_FILE));
      await assert.rejects(open(dir, { create }), code('config_invalid', /root key file .* does not exist/));
      assert.equal(existsSync(join(dir, ROOT_KEY_FILE)), false);
    });
  }

  it('a root key file readable by others is refused with config_invalid', async () => {
    const dir = newDir();
    const es = await open(dir);
    await closeOne(es);
    chmodSync(join(dir, ROOT_KEY_FILE), 0o644);
    await assert.rejects(open(dir, { create: false }), code('config_invalid', /mode 0644/));
  });

  it('a data dir whose database file is not a SQLite database is config_invalid naming the file', async () => {
    const dir = newDir();
    mkdirSync(dir, { recursive: true });
    createKeyFile(join(dir, ROOT_KEY_FILE));
    writeFileSync(join(dir, DB_FILE), 'not a database; '.repeat(512));
    for (const create of [false, true]) {
      await assert.rejects(open(dir, { create }), code('config_invalid', new RegExp(DB_FILE.replace('.', '\\.'))), `create:${create}`);
    }
  });

  it('an existing root key file is used for a new database (create:true)', async () => {
    const dir = newDir();
    mkdirSync(dir, { recursive: true });
    const keyFile = join(dir, ROOT_KEY_FILE);
    createKeyFile(keyFile);
    const before = readFileSync(keyFile);
    const es = await open(dir);
    await es.keys.create('k', 't');
    assert.deepEqual(readFileSync(keyFile), before);
  });
});

describe('keys/embedded-store: two instances on one data dir (plugin and CLI)', () => {
  it('a rotation in one is seen by the other after refresh; a new-version ciphertext decrypts without refresh', async () => {
    const dir = newDir();
    const cli = await open(dir);
    await cli.keys.create('k', 'admin');
    const plugin = await open(dir, { create: false });
    await plugin.keys.refresh('k');
    const ct1 = plugin.keys.encrypt('k', Buffer.from('one')).ciphertext;

    await cli.keys.rotate('k', 'admin');
    // The plugin's encrypt works from its cache until it refreshes.
    assert.equal(plugin.keys.encrypt('k', PT).version, 1);
    const info = await plugin.keys.refresh('k');
    assert.equal(info.currentVersion, 2);
    assert.equal(plugin.keys.encrypt('k', PT).version, 2);

    // A version the plugin has never seen loads on demand.
    await cli.keys.rotate('k', 'admin');
    const ct3 = cli.keys.encrypt('k', Buffer.from('three')).ciphertext;
    const dec = await plugin.keys.decrypt(ct3);
    assert.equal(dec.version, 3);
    assert.equal(dec.plaintext.toString(), 'three');
    assert.equal((await cli.keys.decrypt(ct1)).plaintext.toString(), 'one');
  });

  it('a key created in one decrypts in the other without refresh', async () => {
    const dir = newDir();
    const a = await open(dir);
    const b = await open(dir, { create: false });
    await a.keys.create('fresh', 't');
    const ct = a.keys.encrypt('fresh', PT).ciphertext;
    assert.deepEqual((await b.keys.decrypt(ct)).plaintext, PT);
  });

  it('a disable in one stops encrypt in the other after refresh, and enable restores it', async () => {
    const dir = newDir();
    const cli = await open(dir);
    await cli.keys.create('k', 't');
    const plugin = await open(dir, { create: false });
    await plugin.keys.refresh('k');
    await cli.keys.setEnabled('k', false, 't');
    await plugin.keys.refresh('k');
    assert.throws(() => plugin.keys.encrypt('k', PT), code('key_disabled'));
    await cli.keys.setEnabled('k', true, 't');
    await plugin.keys.refresh('k');
    assert.equal(plugin.keys.encrypt('k', PT).version, 1);
  });

  it('a version destroyed in one is refused by the other after refresh', async () => {
    const dir = newDir();
    const cli = await open(dir);
    await cli.keys.create('k', 't');
    const plugin = await open(dir, { create: false });
    await plugin.keys.refresh('k');
    const ct1 = plugin.keys.encrypt('k', PT).ciphertext;
    await cli.keys.rotate('k', 't');
    await cli.keys.destroyVersion('k', 1, 't');
    await plugin.keys.refresh('k');
    await assert.rejects(plugin.keys.decrypt(ct1), code('key_destroyed'));
  });

  it('refreshCached() applies a disable made by the other instance to encrypt and decrypt', async () => {
    const dir = newDir();
    const cli = await open(dir);
    await cli.keys.create('k', 't');
    const plugin = await open(dir, { create: false });
    await plugin.keys.refresh('k');
    const ct = plugin.keys.encrypt('k', PT).ciphertext;
    await cli.keys.setEnabled('k', false, 't');
    await plugin.keys.refreshCached();
    assert.throws(() => plugin.keys.encrypt('k', PT), code('key_disabled'));
    assert.deepEqual((await plugin.keys.decrypt(ct)).plaintext, PT);
    await cli.keys.setEnabled('k', true, 't');
    await plugin.keys.refreshCached();
    assert.deepEqual((await plugin.keys.decrypt(ct)).plaintext, PT);
  });

  it('refreshCached() drops a version destroyed by the other instance', async () => {
    const dir = newDir();
    const cli = await open(dir);
    await cli.keys.create('k', 't');
    const plugin = await open(dir, { create: false });
    await plugin.keys.refresh('k');
    const ct1 = plugin.keys.encrypt('k', PT).ciphertext;
    await cli.keys.rotate('k', 't');
    await cli.keys.destroyVersion('k', 1, 't');
    await plugin.keys.refreshCached();
    await assert.rejects(plugin.keys.decrypt(ct1), code('key_destroyed'));
    assert.equal(plugin.keys.encrypt('k', PT).version, 2);
  });

  it('refreshCached() with nothing cached does nothing', async () => {
    const es = await open(newDir());
    await es.keys.refreshCached();
    assert.throws(() => es.keys.encrypt('k', PT), code('not_found'));
  });

  // The plugin loads a key (at start-up, or on demand for an unseen version)
  // while the CLI destroys one of its versions: the version list is read, the
  // destroy commits, then the material is read. That is a destroyed version,
  // not corrupted storage, and must not fail the whole key.
  it('a version destroyed by another process while this one is loading the key is treated as destroyed', async () => {
    const dir = newDir();
    const cli = await open(dir);
    await cli.keys.create('k', 't');
    const ct1 = cli.keys.encrypt('k', PT).ciphertext;
    await cli.keys.rotate('k', 't');
    const ct2 = cli.keys.encrypt('k', PT).ciphertext;

    const store = await openSqliteStore({ path: join(dir, DB_FILE), create: false });
    try {
      const barrier = await openBarrier(store, readKeyFile(join(dir, ROOT_KEY_FILE)));
      let armed = true;
      const interleaved = Object.create(store) as Store;
      interleaved.listKeyVersions = async (id: string) => {
        const rows = await store.listKeyVersions(id);
        if (armed) {
          armed = false;
          await cli.keys.destroyVersion('k', 1, 'cli');
        }
        return rows;
      };
      const keys = createKeyStore({ store: interleaved, barrier, audit: createAuditLog(store, { headKey: Buffer.alloc(32, 9) }) });
      await keys.refresh('k');
      assert.equal(armed, false, 'the destroy ran between the two reads');
      assert.deepEqual((await keys.decrypt(ct2)).plaintext, PT);
      await keys.refresh('k');
      await assert.rejects(keys.decrypt(ct1), code('key_destroyed'));
    } finally {
      await store.close();
    }
  });

  /** A key store of its own on the data dir's database, counting the store calls it makes. */
  async function countingKeys(dir: string, hook?: (method: string) => Promise<void>) {
    const store = await openSqliteStore({ path: join(dir, DB_FILE), create: false });
    const calls: string[] = [];
    const counted = new Proxy(store, {
      get(target, prop, receiver) {
        const v = Reflect.get(target, prop, receiver) as unknown;
        if (typeof v !== 'function') return v;
        return async (...args: unknown[]) => {
          calls.push(String(prop));
          const out = await (v as (...a: unknown[]) => Promise<unknown>).apply(target, args);
          await hook?.(String(prop));
          return out;
        };
      },
    });
    const barrier = await openBarrier(store, readKeyFile(join(dir, ROOT_KEY_FILE)));
    const keys = createKeyStore({ store: counted, barrier, audit: createAuditLog(store, { headKey: Buffer.alloc(32, 9) }) });
    return { store, keys, calls };
  }

  it('refreshChanged() picks up a rotation, a disable and a destroyed version made by the other instance', async () => {
    const dir = newDir();
    const cli = await open(dir);
    await cli.keys.create('k', 't');
    await cli.keys.create('other', 't');
    const plugin = await open(dir, { create: false });
    await plugin.keys.refresh('k');
    await plugin.keys.refresh('other');
    const ct1 = plugin.keys.encrypt('k', PT).ciphertext;
    await cli.keys.rotate('k', 't');
    await plugin.keys.refreshChanged();
    assert.equal(plugin.keys.encrypt('k', PT).version, 2);
    await cli.keys.setEnabled('k', false, 't');
    await plugin.keys.refreshChanged();
    assert.throws(() => plugin.keys.encrypt('k', PT), code('key_disabled'));
    await cli.keys.setEnabled('k', true, 't');
    await cli.keys.destroyVersion('k', 1, 't');
    await plugin.keys.refreshChanged();
    assert.equal(plugin.keys.encrypt('k', PT).version, 2);
    await assert.rejects(plugin.keys.decrypt(ct1), code('key_destroyed'));
    await cli.keys.setPolicy('other', { deletionAllowed: true }, 't');
    await cli.keys.delete('other', 't');
    await plugin.keys.refreshChanged();
    assert.throws(() => plugin.keys.encrypt('other', PT), code('not_found'));
  });

  it('refreshChanged() costs one query for all keys, and reloads only the key whose row changed', async () => {
    const dir = newDir();
    const cli = await open(dir);
    for (const k of ['a', 'b', 'c']) await cli.keys.create(k, 't');
    const s = await countingKeys(dir);
    try {
      for (const k of ['a', 'b', 'c']) await s.keys.refresh(k);
      s.calls.length = 0;
      await s.keys.refreshChanged();
      assert.deepEqual(s.calls, ['listKeys'], 'nothing changed: one read of the keys table');
      await cli.keys.rotate('b', 't');
      s.calls.length = 0;
      await s.keys.refreshChanged();
      assert.deepEqual(s.calls.filter((c) => c === 'listKeys').length, 1);
      assert.deepEqual(s.calls.filter((c) => c === 'listKeyVersions').length, 1, `only b is reloaded: ${s.calls.join(',')}`);
      assert.equal(s.keys.encrypt('b', PT).version, 2);
      assert.equal(s.keys.encrypt('a', PT).version, 1);
    } finally {
      await s.store.close();
    }
  });

  it('a refresh that read the key rows before this instance rotated never puts the older version back', async () => {
    const dir = newDir();
    const cli = await open(dir);
    await cli.keys.create('k', 't');
    let armed = false;
    let rotated: Promise<unknown> | undefined;
    const s = await countingKeys(dir, async (method) => {
      // The key rows are read; this instance then rotates (and loads the new row) before the refresh goes on.
      if (method !== 'listKeys' || !armed) return;
      armed = false;
      rotated = s.keys.rotate('k', 't');
      await rotated;
    });
    try {
      await s.keys.refresh('k');
      await cli.keys.setPolicy('k', { deletionAllowed: true }, 't'); // the row differs from the cached one
      armed = true;
      await s.keys.refreshChanged();
      assert.ok(rotated, 'the rotation ran between the read and the reload');
      assert.equal(s.keys.encrypt('k', PT).version, 2, 'the current version never goes back');
    } finally {
      await s.store.close();
    }
  });

  it('a load still reading when the key store is wiped (the server sealed) puts nothing back', async () => {
    const dir = newDir();
    const cli = await open(dir);
    await cli.keys.create('k', 't');
    let armed = true;
    const s = await countingKeys(dir, async (method) => {
      if (method !== 'listKeyVersions' || !armed) return;
      armed = false;
      s.keys.wipe();
    });
    try {
      await assert.rejects(s.keys.refresh('k'), code('sealed'));
      assert.equal(armed, false);
      assert.equal(s.keys.idOf('k'), undefined);
      assert.throws(() => s.keys.encrypt('k', PT), code('not_found'));
    } finally {
      await s.store.close();
    }
  });

  it('material of a version destroyed elsewhere, dropped by a refresh, is zeroed at the next wipe', async () => {
    const dir = newDir();
    const cli = await open(dir);
    await cli.keys.create('k', 't');
    await cli.keys.rotate('k', 't');
    const store = await openSqliteStore({ path: join(dir, DB_FILE), create: false });
    try {
      const barrier = await openBarrier(store, readKeyFile(join(dir, ROOT_KEY_FILE)));
      const read: Buffer[] = [];
      const watched = { ...barrier, get: async (...a: Parameters<typeof barrier.get>) => {
        const m = await barrier.get(...a);
        if (m) read.push(m);
        return m;
      } };
      const keys = createKeyStore({ store, barrier: watched, audit: createAuditLog(store, { headKey: Buffer.alloc(32, 9) }) });
      await keys.refresh('k');
      assert.equal(read.length, 2, 'both versions read');
      await cli.keys.destroyVersion('k', 1, 't');
      await keys.refreshChanged();
      assert.throws(() => keys.encrypt('k', PT, 1), code('key_destroyed'));
      keys.wipe();
      assert.ok(read.every((m) => m.every((b) => b === 0)), 'no key material left after the wipe');
    } finally {
      await store.close();
    }
  });

  it('both write one intact audit chain', async () => {
    const dir = newDir();
    const a = await open(dir);
    const b = await open(dir, { create: false });
    await a.keys.create('k', 'a');
    await b.keys.rotate('k', 'b');
    await a.keys.rotate('k', 'a');
    await b.keys.create('k2', 'b');
    const rows = await auditRows(a);
    assert.deepEqual(
      rows.map((r) => r.seq),
      [1, 2, 3, 4],
    );
    assert.deepEqual(await verifyStore(b.store), { ok: true, records: 4 });
  });

  it('with a real second process: a rotation made by a child process is picked up', async () => {
    const dir = newDir();
    const plugin = await open(dir);
    await plugin.keys.create('k', 't');
    await plugin.keys.refresh('k');
    const moduleUrl = new URL('./embedded-store.js', import.meta.url).href;
    const script = `
      const { openEmbeddedStore } = await import(${JSON.stringify(moduleUrl)});
      const es = await openEmbeddedStore({ dataDir: ${JSON.stringify(dir)}, create: false });
      await es.keys.rotate('k', 'cli');
      const ct = es.keys.encrypt('k', Buffer.from('from the child'));
      await es.close();
      process.stdout.write(JSON.stringify({ ct: ct.ciphertext.toString('base64'), version: ct.version }));
    `;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', cwd: fileURLToPath(new URL('.', import.meta.url)), timeout: 60_000 });
    const { ct, version } = JSON.parse(out) as { ct: string; version: number };
    assert.equal(version, 2);
    assert.equal(plugin.keys.encrypt('k', PT).version, 1, 'cached until refresh');
    const dec = await plugin.keys.decrypt(Buffer.from(ct, 'base64'));
    assert.equal(dec.plaintext.toString(), 'from the child');
    assert.equal((await plugin.keys.refresh('k')).currentVersion, 2);
    assert.equal(plugin.keys.encrypt('k', PT).version, 2);
    assert.deepEqual(await verifyStore(plugin.store), { ok: true, records: 2 });
  });
});
