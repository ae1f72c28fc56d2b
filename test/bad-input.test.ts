import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { call, CALL_CAP_MS, callError, cli, grpc, initStore, kmsClients, removeDir, startPlugin, tempDir, type KmsClients, type PluginProcess } from './helpers.js';

// Bad input from the apiserver side of the socket: every malformed, oversized,
// tampered or mismatched request gets a gRPC error that says what is wrong,
// and after each one the same plugin process still serves and still decrypts
// everything it wrapped before. One plugin process serves the whole file.

interface Written {
  readonly api: 'v2' | 'v1beta1';
  readonly seed: Buffer;
  readonly ciphertext: Buffer;
  readonly keyId?: string;
}

/** Sends raw bytes as the request body, bypassing protobuf encoding. */
function rawCall(client: grpc.Client, path: string, body: Buffer): Promise<grpc.ServiceError> {
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest<Buffer, Buffer>(
      path,
      (x) => x,
      (x) => x,
      body,
      new grpc.Metadata(),
      { deadline: Date.now() + CALL_CAP_MS },
      (err) => (err ? resolve(err) : reject(new Error(`${path} accepted ${body.toString('hex')}`))),
    );
  });
}

function flipBit(buf: Buffer, index: number, bit = 0): Buffer {
  const out = Buffer.from(buf);
  out[index] = out[index]! ^ (1 << bit);
  return out;
}

function assertError(err: grpc.ServiceError, code: grpc.status, details: RegExp): void {
  assert.equal(err.code, code, `expected ${grpc.status[code]}, got ${grpc.status[err.code]}: ${err.details}`);
  assert.match(err.details, details);
}

describe('bad input: clear gRPC errors, the plugin keeps serving, nothing is lost', () => {
  let dir: string;
  let plugin: PluginProcess;
  let c: KmsClients;
  let keyId: string;
  /** A 73-byte v2 ciphertext of a 32-byte seed, and its key_id. */
  let base: Written;
  const written: Written[] = [];
  let n = 0;

  const encryptV2 = async (seed: Buffer): Promise<Written> => {
    const e = await call(c.v2, 'Encrypt', { plaintext: seed, uid: `bad-input-enc-${n++}` });
    const w: Written = { api: 'v2', seed, ciphertext: e.ciphertext, keyId: e.key_id };
    written.push(w);
    return w;
  };

  /** The process is alive, Status answers, a fresh round trip works and every earlier ciphertext still decrypts. */
  const stillServes = async (what: string): Promise<void> => {
    assert.equal(plugin.child.exitCode, null, `plugin exited after ${what}:\n${plugin.output()}`);
    assert.equal(plugin.child.signalCode, null, `plugin was killed after ${what}`);
    const s = await call(c.v2, 'Status', {});
    assert.equal(s.healthz, 'ok', `Status after ${what}`);
    assert.equal(s.key_id, keyId, `Status key_id after ${what}`);
    const seed = randomBytes(32);
    const w = await encryptV2(seed);
    assert.equal(w.keyId, keyId);
    const d = await call(c.v2, 'Decrypt', { ciphertext: w.ciphertext, uid: `after-${what}`, key_id: w.keyId });
    assert.deepEqual(d.plaintext, seed, `round trip after ${what}`);
    const v1 = await call(c.v1, 'Encrypt', { version: 'v1beta1', plain: seed });
    written.push({ api: 'v1beta1', seed, ciphertext: v1.cipher });
    for (const [i, old] of written.entries()) {
      const plain =
        old.api === 'v2'
          ? (await call(c.v2, 'Decrypt', { ciphertext: old.ciphertext, uid: `recheck-${i}`, key_id: old.keyId })).plaintext
          : (await call(c.v1, 'Decrypt', { version: 'v1beta1', cipher: old.ciphertext })).plain;
      assert.deepEqual(plain, old.seed, `ciphertext #${i} (${old.api}) no longer decrypts after ${what}`);
    }
  };

  const decryptError = (req: { ciphertext: Buffer; key_id: string; annotations?: Record<string, Buffer> }) =>
    callError(c.v2, 'Decrypt', { uid: `bad-decrypt-${n++}`, ...req });

  before(async () => {
    dir = tempDir('kh-bad-');
    initStore(dir);
    plugin = await startPlugin({ dataDir: dir });
    c = kmsClients(plugin.socket);
    keyId = (await call(c.v2, 'Status', {})).key_id;
    base = await encryptV2(randomBytes(32));
    assert.equal(base.ciphertext.length, 73);
    const seed = randomBytes(32);
    written.push({ api: 'v1beta1', seed, ciphertext: (await call(c.v1, 'Encrypt', { version: 'v1beta1', plain: seed })).cipher });
  });

  after(async () => {
    c?.close();
    await plugin?.stop();
    removeDir(dir);
  });

  describe('malformed protobuf', () => {
    const garbage: Array<[string, Buffer]> = [
      ['invalid wire type', Buffer.from([0xff, 0xff, 0xff, 0xff])],
      ['text', Buffer.from('this is not a protobuf message at all')],
      ['a lone tag', Buffer.from([0x0f])],
    ];
    for (const path of ['/v2.KeyManagementService/Encrypt', '/v2.KeyManagementService/Decrypt', '/v1beta1.KeyManagementService/Decrypt']) {
      it(`${path}: garbage bytes get a gRPC error, not a crash`, async () => {
        const client = path.startsWith('/v2.') ? c.v2 : c.v1;
        for (const [what, body] of garbage) {
          const err = await rawCall(client, path, body);
          assert.equal(err.code, grpc.status.INTERNAL, `${what}: ${grpc.status[err.code]} ${err.details}`);
          assert.match(err.details, /deserializ/i, what);
        }
        await stillServes(`garbage to ${path}`);
      });
    }

    it('a length-delimited field that runs past the end of the message is refused', async () => {
      for (const path of ['/v2.KeyManagementService/Encrypt', '/v2.KeyManagementService/Decrypt']) {
        const err = await rawCall(c.v2, path, Buffer.from([0x0a, 0x50, 0x01, 0x02]));
        assertError(err, grpc.status.INTERNAL, /deserializ/i);
      }
      await stillServes('truncated protobuf field');
    });

    it('an unknown method is UNIMPLEMENTED', async () => {
      const err = await rawCall(c.v2, '/v2.KeyManagementService/Rewrap', Buffer.alloc(0));
      assert.equal(err.code, grpc.status.UNIMPLEMENTED);
      await stillServes('unknown method');
    });
  });

  describe('plaintext size', () => {
    it('empty plaintext is INVALID_ARGUMENT (v2 and v1beta1)', async () => {
      assertError(await callError(c.v2, 'Encrypt', { plaintext: Buffer.alloc(0), uid: 'empty' }), grpc.status.INVALID_ARGUMENT, /plaintext is empty/);
      assertError(await callError(c.v1, 'Encrypt', { version: 'v1beta1', plain: Buffer.alloc(0) }), grpc.status.INVALID_ARGUMENT, /plaintext is empty/);
      await stillServes('empty plaintext');
    });

    it('984 bytes is INVALID_ARGUMENT naming the 983-byte limit', async () => {
      const err = await callError(c.v2, 'Encrypt', { plaintext: randomBytes(984), uid: 'p984' });
      assertError(err, grpc.status.INVALID_ARGUMENT, /984 bytes/);
      assert.match(err.details, /983/);
      assert.match(err.details, /1024/);
      const err1 = await callError(c.v1, 'Encrypt', { version: 'v1beta1', plain: randomBytes(984) });
      assertError(err1, grpc.status.INVALID_ARGUMENT, /984 bytes.*983/);
      await stillServes('984-byte plaintext');
    });

    it('983 bytes is accepted and its ciphertext is exactly 1024 bytes', async () => {
      const seed = randomBytes(983);
      const w = await encryptV2(seed);
      assert.equal(w.ciphertext.length, 1024);
      const d = await call(c.v2, 'Decrypt', { ciphertext: w.ciphertext, uid: 'p983-d', key_id: w.keyId });
      assert.deepEqual(d.plaintext, seed);
      const v1 = await call(c.v1, 'Encrypt', { version: 'v1beta1', plain: seed });
      assert.equal(v1.cipher.length, 1024);
      written.push({ api: 'v1beta1', seed, ciphertext: v1.cipher });
      await stillServes('983-byte plaintext');
    });

    it('a message over the 128 KiB receive limit is RESOURCE_EXHAUSTED', async () => {
      const big = randomBytes(129 * 1024);
      assertError(await callError(c.v2, 'Encrypt', { plaintext: big, uid: 'huge' }), grpc.status.RESOURCE_EXHAUSTED, /larger than max.*131072/);
      assertError(await decryptError({ ciphertext: big, key_id: keyId }), grpc.status.RESOURCE_EXHAUSTED, /larger than max.*131072/);
      assertError(await callError(c.v1, 'Decrypt', { version: 'v1beta1', cipher: big }), grpc.status.RESOURCE_EXHAUSTED, /larger than max/);
      await stillServes('a 129 KiB message');
    });
  });

  describe('bad ciphertext', () => {
    it('empty ciphertext is INVALID_ARGUMENT (v2 and v1beta1)', async () => {
      assertError(await decryptError({ ciphertext: Buffer.alloc(0), key_id: keyId }), grpc.status.INVALID_ARGUMENT, /ciphertext is empty/);
      assertError(await callError(c.v1, 'Decrypt', { version: 'v1beta1', cipher: Buffer.alloc(0) }), grpc.status.INVALID_ARGUMENT, /ciphertext is empty/);
      await stillServes('empty ciphertext');
    });

    it('truncated ciphertext is INVALID_ARGUMENT at every length', async () => {
      // 1 format + 8 key ref + 4 version = 13-byte header; 12-byte nonce; 32-byte body; 16-byte tag.
      for (const len of [1, 5, 13, 20, 25, 40]) {
        const err = await decryptError({ ciphertext: base.ciphertext.subarray(0, len), key_id: keyId });
        assertError(err, grpc.status.INVALID_ARGUMENT, /truncated/);
      }
      for (const len of [41, 50, 57, 72]) {
        const err = await decryptError({ ciphertext: base.ciphertext.subarray(0, len), key_id: keyId });
        assertError(err, grpc.status.INVALID_ARGUMENT, /failed authentication/);
      }
      for (const len of [1, 40, 72]) {
        const err = await callError(c.v1, 'Decrypt', { version: 'v1beta1', cipher: base.ciphertext.subarray(0, len) });
        assertError(err, grpc.status.INVALID_ARGUMENT, /truncated|failed authentication/);
      }
      await stillServes('truncated ciphertexts');
    });

    it('a flipped bit in the format byte is refused as an unknown format', async () => {
      const err = await decryptError({ ciphertext: flipBit(base.ciphertext, 0), key_id: keyId });
      assertError(err, grpc.status.INVALID_ARGUMENT, /unknown format byte 0x00/);
      await stillServes('format byte flipped');
    });

    it('a flipped bit in the header (key ref, version) no longer matches the key_id', async () => {
      for (const i of [1, 8, 9, 12]) {
        const err = await decryptError({ ciphertext: flipBit(base.ciphertext, i, 3), key_id: keyId });
        assertError(err, grpc.status.INVALID_ARGUMENT, /does not belong to key_id/);
      }
      // v1beta1 has no key_id: the header names a key or version this store does not hold.
      const ref = await callError(c.v1, 'Decrypt', { version: 'v1beta1', cipher: flipBit(base.ciphertext, 1) });
      assertError(ref, grpc.status.NOT_FOUND, /does not hold/);
      const ver = await callError(c.v1, 'Decrypt', { version: 'v1beta1', cipher: flipBit(base.ciphertext, 12, 2) });
      assertError(ver, grpc.status.NOT_FOUND, /has no version 5/);
      await stillServes('header bits flipped');
    });

    it('a flipped bit in the nonce, body or tag fails authentication', async () => {
      const positions = { nonce: [13, 24], body: [25, 40, 56], tag: [57, 64, 72] };
      for (const [part, idx] of Object.entries(positions)) {
        for (const i of idx) {
          for (const bit of [0, 7]) {
            const err = await decryptError({ ciphertext: flipBit(base.ciphertext, i, bit), key_id: keyId });
            assertError(err, grpc.status.INVALID_ARGUMENT, /failed authentication/);
            assert.ok(err.details.length > 0, `${part} byte ${i} bit ${bit}`);
          }
        }
        const v1 = await callError(c.v1, 'Decrypt', { version: 'v1beta1', cipher: flipBit(base.ciphertext, idx[0]!) });
        assertError(v1, grpc.status.INVALID_ARGUMENT, /failed authentication/);
      }
      await stillServes('nonce/body/tag bits flipped');
    });

    it('a ciphertext of 1025 bytes or more is INVALID_ARGUMENT naming the 1024-byte limit', async () => {
      for (const len of [1025, 1100, 64 * 1024]) {
        const ct = Buffer.concat([base.ciphertext, randomBytes(len - base.ciphertext.length)]);
        const err = await decryptError({ ciphertext: ct, key_id: keyId });
        assertError(err, grpc.status.INVALID_ARGUMENT, new RegExp(`ciphertext is ${len} bytes.*1024`));
        const v1 = await callError(c.v1, 'Decrypt', { version: 'v1beta1', cipher: ct });
        assertError(v1, grpc.status.INVALID_ARGUMENT, new RegExp(`${len} bytes.*1024`));
      }
      await stillServes('oversized ciphertexts');
    });
  });

  describe('ciphertexts and key_ids from elsewhere', () => {
    // A second key in the same store, served by a second plugin on its own socket.
    let other: { ciphertext: Buffer; keyId: string; seed: Buffer } | undefined;
    const otherKey = async () => {
      if (other) return other;
      const r = cli(['key', 'create', 'key2', '--data-dir', dir]);
      assert.equal(r.code, 0, r.stderr);
      const p2 = await startPlugin({ dataDir: dir, socketPath: join(dir, 'kms2.sock'), extraArgs: ['--key', 'key2'] });
      const c2 = kmsClients(p2.socket);
      try {
        const seed = randomBytes(32);
        const e = await call(c2.v2, 'Encrypt', { plaintext: seed, uid: 'key2-enc' });
        assert.notEqual(e.key_id, keyId);
        other = { ciphertext: e.ciphertext, keyId: e.key_id, seed };
      } finally {
        c2.close();
        assert.equal(await p2.stop(), 0);
      }
      return other;
    };

    it('another key of the same store, with that key\'s key_id: refused by the plugin serving kubernetes-secrets', async () => {
      const o = await otherKey();
      const err = await decryptError({ ciphertext: o.ciphertext, key_id: o.keyId });
      assert.ok([grpc.status.INVALID_ARGUMENT, grpc.status.NOT_FOUND, grpc.status.PERMISSION_DENIED].includes(err.code), `${grpc.status[err.code]}: ${err.details}`);
      assert.match(err.details, /key2|another key|not the key|kubernetes-secrets/);
      await stillServes('a ciphertext of another key with its key_id');
    });

    it('another key of the same store, via v1beta1: refused by the plugin serving kubernetes-secrets', async () => {
      const o = await otherKey();
      const err = await callError(c.v1, 'Decrypt', { version: 'v1beta1', cipher: o.ciphertext });
      assert.ok([grpc.status.INVALID_ARGUMENT, grpc.status.NOT_FOUND, grpc.status.PERMISSION_DENIED].includes(err.code), `${grpc.status[err.code]}: ${err.details}`);
      assert.match(err.details, /key2|another key|not the key|kubernetes-secrets/);
      await stillServes('a v1beta1 ciphertext of another key');
    });

    it('another key of the same store, with this plugin\'s key_id: does not belong to it', async () => {
      const o = await otherKey();
      const err = await decryptError({ ciphertext: o.ciphertext, key_id: keyId });
      assertError(err, grpc.status.INVALID_ARGUMENT, /does not belong to key_id/);
      assert.ok(err.details.includes(keyId), err.details);
      // And the reverse: this key's ciphertext under the other key's key_id.
      const rev = await decryptError({ ciphertext: base.ciphertext, key_id: o.keyId });
      assertError(rev, grpc.status.INVALID_ARGUMENT, /does not belong to key_id/);
      await stillServes('a key_id that does not match the ciphertext');
    });

    it('a ciphertext from another store entirely', async () => {
      const dir2 = tempDir('kh-bad-other-');
      try {
        initStore(dir2);
        const p2 = await startPlugin({ dataDir: dir2 });
        const c2 = kmsClients(p2.socket);
        let e: { ciphertext: Buffer; key_id: string };
        try {
          e = await call(c2.v2, 'Encrypt', { plaintext: randomBytes(32), uid: 'other-store' });
        } finally {
          c2.close();
          await p2.stop();
        }
        assert.notEqual(e.key_id.split(':')[1], keyId.split(':')[1], 'stores have different ids');
        assertError(await decryptError({ ciphertext: e.ciphertext, key_id: e.key_id }), grpc.status.NOT_FOUND, /issued by another key store/);
        assertError(await decryptError({ ciphertext: e.ciphertext, key_id: keyId }), grpc.status.INVALID_ARGUMENT, /does not belong to key_id/);
        assertError(await callError(c.v1, 'Decrypt', { version: 'v1beta1', cipher: e.ciphertext }), grpc.status.NOT_FOUND, /key this store does not hold/);
      } finally {
        removeDir(dir2);
      }
      await stillServes('a ciphertext from another store');
    });
  });

  describe('unknown key_id', () => {
    const parts = () => {
      const [prefix, store, ref, version, vtag] = keyId.split(':');
      assert.equal(prefix, 'kh1');
      return { store: store!, ref: ref!, version: Number(version), tag: vtag! };
    };

    it('a garbage key_id is NOT_FOUND: not issued by keyhaven', async () => {
      for (const k of ['garbage', 'kh1:', 'kh1:zz:zz:1:zz', `${keyId}:extra`, keyId.toUpperCase()]) {
        assertError(await decryptError({ ciphertext: base.ciphertext, key_id: k }), grpc.status.NOT_FOUND, /was not issued by keyhaven/);
      }
      await stillServes('garbage key_ids');
    });

    it('a well-formed key_id with a random store id is NOT_FOUND: another key store', async () => {
      const p = parts();
      const k = `kh1:${randomBytes(8).toString('hex')}:${p.ref}:${p.version}:${p.tag}`;
      assertError(await decryptError({ ciphertext: base.ciphertext, key_id: k }), grpc.status.NOT_FOUND, /issued by another key store/);
      await stillServes('a key_id of a random store');
    });

    it('a key_id of this store naming a version that never existed is NOT_FOUND', async () => {
      const p = parts();
      const k7 = `kh1:${p.store}:${p.ref}:7:${p.tag}`;
      // Paired with the real ciphertext, the header (version 1) does not match.
      assertError(await decryptError({ ciphertext: base.ciphertext, key_id: k7 }), grpc.status.INVALID_ARGUMENT, /does not belong to key_id/);
      // A ciphertext relabelled to version 7 to match: the store has no such version.
      const relabelled = Buffer.from(base.ciphertext);
      relabelled.writeUInt32BE(7, 9);
      assertError(await decryptError({ ciphertext: relabelled, key_id: k7 }), grpc.status.NOT_FOUND, /has no version 7/);
      // A version beyond what a ciphertext header can carry.
      const huge = `kh1:${p.store}:${p.ref}:4294967296:${p.tag}`;
      const err = await decryptError({ ciphertext: base.ciphertext, key_id: huge });
      assert.equal(err.code, grpc.status.NOT_FOUND, `${grpc.status[err.code]}: ${err.details}`);
      assert.match(err.details, /4294967296/);
      await stillServes('a version that never existed');
    });

    it('the right key and version with another version tag is NOT_FOUND (a separately rotated copy)', async () => {
      const p = parts();
      const k = `kh1:${p.store}:${p.ref}:${p.version}:${randomBytes(8).toString('hex')}`;
      assertError(await decryptError({ ciphertext: base.ciphertext, key_id: k }), grpc.status.NOT_FOUND, /not the version this key_id names/);
      await stillServes('a wrong version tag');
    });

    it('a key_id of 1025 bytes is INVALID_ARGUMENT naming the limit; 1024 bytes is judged on content', async () => {
      const long = `${keyId}${'x'.repeat(1025 - keyId.length)}`;
      assert.equal(Buffer.byteLength(long), 1025);
      assertError(await decryptError({ ciphertext: base.ciphertext, key_id: long }), grpc.status.INVALID_ARGUMENT, /key_id is 1025 bytes.*1024/);
      const multibyte = 'é'.repeat(513); // 1026 bytes, 513 characters
      assertError(await decryptError({ ciphertext: base.ciphertext, key_id: multibyte }), grpc.status.INVALID_ARGUMENT, /key_id is 1026 bytes/);
      const atLimit = `${keyId}${'x'.repeat(1024 - keyId.length)}`;
      assertError(await decryptError({ ciphertext: base.ciphertext, key_id: atLimit }), grpc.status.NOT_FOUND, /was not issued by keyhaven/);
      await stillServes('an over-long key_id');
    });

    it('an empty key_id is INVALID_ARGUMENT', async () => {
      assertError(await decryptError({ ciphertext: base.ciphertext, key_id: '' }), grpc.status.INVALID_ARGUMENT, /key_id is empty/);
      await stillServes('an empty key_id');
    });
  });

  describe('annotations on Decrypt', () => {
    it('valid FQDN annotations are accepted', async () => {
      const d = await call(c.v2, 'Decrypt', { ciphertext: base.ciphertext, uid: 'ann-ok', key_id: keyId, annotations: { 'kek.keyhaven.io': Buffer.from('v') } });
      assert.deepEqual(d.plaintext, base.seed);
    });

    it('a key with a slash is INVALID_ARGUMENT naming the key', async () => {
      const err = await decryptError({ ciphertext: base.ciphertext, key_id: keyId, annotations: { 'keyhaven.io/kek': Buffer.from('v') } });
      assertError(err, grpc.status.INVALID_ARGUMENT, /"keyhaven\.io\/kek" is not a fully qualified domain name/);
      await stillServes('an annotation key with a slash');
    });

    it('a single-label key is INVALID_ARGUMENT', async () => {
      const err = await decryptError({ ciphertext: base.ciphertext, key_id: keyId, annotations: { kek: Buffer.from('v') } });
      assertError(err, grpc.status.INVALID_ARGUMENT, /"kek" is not a fully qualified domain name/);
      await stillServes('a single-label annotation key');
    });

    it('annotations totalling over 32 KiB are INVALID_ARGUMENT naming the limit', async () => {
      const annotations = { 'a.keyhaven.io': Buffer.alloc(16 * 1024), 'b.keyhaven.io': Buffer.alloc(16 * 1024) };
      const err = await decryptError({ ciphertext: base.ciphertext, key_id: keyId, annotations });
      assertError(err, grpc.status.INVALID_ARGUMENT, /annotations total 32794 bytes, above the 32768-byte limit/);
      await stillServes('over-size annotations');
    });
  });

  describe('v1beta1 with a wrong version string', () => {
    it('Version, Encrypt and Decrypt refuse anything but v1beta1 with INVALID_ARGUMENT', async () => {
      for (const version of ['v2', 'v1', '', 'V1BETA1']) {
        const msg = /unsupported KMS API version.*this service speaks v1beta1/;
        assertError(await callError(c.v1, 'Version', { version }), grpc.status.INVALID_ARGUMENT, msg);
        assertError(await callError(c.v1, 'Encrypt', { version, plain: randomBytes(32) }), grpc.status.INVALID_ARGUMENT, msg);
        const v1ct = written.find((w) => w.api === 'v1beta1')!;
        assertError(await callError(c.v1, 'Decrypt', { version, cipher: v1ct.ciphertext }), grpc.status.INVALID_ARGUMENT, msg);
      }
      await stillServes('wrong v1beta1 version strings');
    });
  });
});
