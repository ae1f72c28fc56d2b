import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { KeyhavenError } from '../../../errors.js';
import { openEmbeddedStore, type EmbeddedStore } from '../../../keys/embedded-store.js';
import type { KeyStore } from '../../../keys/key-store.js';
import { createEmbeddedProvider } from './embedded-provider.js';
import { parseKeyId } from '../../../keys/key-id.js';
import { ownedTempDir } from '../../../../test/reaper.js';

const ENC = { uid: 'test', annotations: true };
const DEC = { uid: 'test' };
const code = (c: string) => (e: unknown) => e instanceof KeyhavenError && e.code === c;

describe('embedded provider (real SQLite store)', () => {
  let dir: string;
  let es: EmbeddedStore;

  before(async () => {
    dir = ownedTempDir('kh-provider-');
    es = await openEmbeddedStore({ dataDir: dir, create: true });
    await es.keys.create('cluster-a', 'test');
    await es.keys.create('cluster-b', 'test');
  });

  after(async () => {
    await es.close();
    rmSync(dir, { recursive: true, force: true });
  });

  // As the plugin does at start: a first probe confirms the key before any Encrypt.
  const provider = async (keyName: string, previousKeys?: string[]) => {
    const p = createEmbeddedProvider({ keys: es.keys, storeId: es.storeId, keyName, refreshIntervalMs: 60_000, previousKeys, graceMs: 60_000 });
    await p.healthCheck();
    return p;
  };

  it('encrypts with its key and reports a key_id that names store, key, version and tag', async () => {
    const p = await provider('cluster-a');
    const seed = randomBytes(32);
    const e = await p.encrypt(seed, ENC);
    const id = parseKeyId(e.keyId);
    assert.equal(id.storeId, es.storeId);
    assert.equal(id.version, 1);
    assert.equal(e.keyId, await p.healthCheck());
    assert.deepEqual((await p.decrypt(e.ciphertext, e.keyId, {}, DEC)).plaintext, seed);
    assert.deepEqual((await p.decrypt(e.ciphertext, undefined, {}, DEC)).plaintext, seed);
    await p.close();
  });

  it("refuses another key's ciphertext in the same store, with or without its key_id", async () => {
    const a = await provider('cluster-a');
    const b = await provider('cluster-b');
    const eb = await b.encrypt(randomBytes(32), ENC);
    await assert.rejects(a.decrypt(eb.ciphertext, eb.keyId, {}, DEC), code('permission_denied'));
    await assert.rejects(a.decrypt(eb.ciphertext, undefined, {}, DEC), code('permission_denied'));
    await a.close();
    await b.close();
  });

  it('previousKeys lets Decrypt use a key the cluster moved away from; Encrypt never does', async () => {
    const b = await provider('cluster-b');
    const seed = randomBytes(32);
    const eb = await b.encrypt(seed, ENC);
    const a = await provider('cluster-a', ['cluster-b']);
    assert.deepEqual((await a.decrypt(eb.ciphertext, eb.keyId, {}, DEC)).plaintext, seed);
    const ea = await a.encrypt(randomBytes(32), ENC);
    assert.equal(ea.keyName, 'cluster-a');
    await a.close();
    await b.close();
  });

  it('the runtime gate: Encrypt waits for a probe; a disable a probe saw refuses it until a probe succeeds again; a store failing past the grace period refuses it', async () => {
    await es.keys.create('cluster-g', 'test');
    // Real time that the test can move forward, to cross the grace period without waiting.
    const jump = { ms: 0 };
    let unreachable = false;
    // The same store, whose metadata read fails on demand as a database that cannot be read would.
    const keys = Object.create(es.keys, {
      refresh: {
        value: async (name: string) => {
          if (unreachable) throw new Error('SQLITE_IOERR: disk I/O error');
          return es.keys.refresh(name);
        },
      },
    }) as KeyStore;
    const p = createEmbeddedProvider({ keys, storeId: es.storeId, keyName: 'cluster-g', refreshIntervalMs: 60_000, graceMs: 60_000, now: () => Date.now() + jump.ms });
    const refused = (c: string, message: RegExp) => (e: unknown) => code(c)(e) && message.test((e as Error).message);
    try {
      const seed = randomBytes(32);
      await assert.rejects(p.encrypt(seed, ENC), refused('unavailable', /^the key store has not confirmed the key yet$/));
      const keyId = await p.healthCheck();
      const ct = (await p.encrypt(seed, ENC)).ciphertext;

      await es.keys.setEnabled('cluster-g', false, 'test');
      await assert.rejects(p.healthCheck(), code('key_disabled'));
      await es.keys.setEnabled('cluster-g', true, 'test');
      await assert.rejects(p.encrypt(seed, ENC), code('key_disabled'), 'refused until a probe succeeds again');
      assert.equal(await p.healthCheck(), keyId);
      assert.equal((await p.encrypt(seed, ENC)).keyId, keyId);

      unreachable = true;
      await assert.rejects(p.healthCheck(), refused('unavailable', /^key store is not reachable$/));
      assert.equal((await p.encrypt(seed, ENC)).keyId, keyId, 'within the grace period');
      jump.ms += 61_000;
      await assert.rejects(p.encrypt(seed, ENC), refused('unavailable', /^the key store has not confirmed the key within the Status grace period$/));
      assert.deepEqual((await p.decrypt(ct, keyId, {}, DEC)).plaintext, seed, 'Decrypt is not gated');
      unreachable = false;
      assert.equal(await p.healthCheck(), keyId);
      assert.equal((await p.encrypt(seed, ENC)).keyId, keyId);
    } finally {
      await p.close();
    }
  });

  it('refuses a key_id of another store and a key_id whose version tag differs', async () => {
    const a = await provider('cluster-a');
    const e = await a.encrypt(randomBytes(32), ENC);
    const id = parseKeyId(e.keyId);
    const otherStore = e.keyId.replace(id.storeId, 'f'.repeat(16));
    await assert.rejects(a.decrypt(e.ciphertext, otherStore, {}, DEC), code('unknown_key_id'));
    const otherTag = e.keyId.replace(new RegExp(`${id.tag}$`), '0'.repeat(16));
    await assert.rejects(a.decrypt(e.ciphertext, otherTag, {}, DEC), code('unknown_key_id'));
    await a.close();
  });
});
