import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { KeyhavenError } from '../../errors.js';
import { createProviderRuntime, type KeyBackend } from './key-backend.js';

/** A backend double: scripted probe answers, and a record of what each call was given. */
function backend() {
  const b = {
    next: [] as Array<{ keyId: string; state: number } | Error>,
    wraps: [] as Array<{ state: number; deadlineAt: number; uid: string }>,
    unwraps: [] as Array<{ deadlineAt: number; keyId: string | undefined }>,
    probes: [] as number[],
    closed: 0,
  };
  const impl: KeyBackend<number> = {
    kind: 'double',
    service: 'the double',
    maxPlaintextBytes: 64,
    async probe(deadlineAt) {
      b.probes.push(deadlineAt);
      const n = b.next.shift();
      if (!n) throw new Error('no scripted answer');
      if (n instanceof Error) throw n;
      return n;
    },
    async wrap(plaintext, state, ctx) {
      b.wraps.push({ state, deadlineAt: ctx.deadlineAt, uid: ctx.uid });
      return { ciphertext: Buffer.concat([Buffer.from([state]), plaintext]), keyId: `k${state}`, keyName: 'k', keyVersion: state };
    },
    async unwrap(ciphertext, keyId, _annotations, ctx) {
      b.unwraps.push({ deadlineAt: ctx.deadlineAt, keyId });
      return { plaintext: ciphertext.subarray(1), keyId: keyId ?? 'k?', keyName: 'k', keyVersion: ciphertext[0]! };
    },
    async close() {
      b.closed += 1;
    },
  };
  return { b, impl };
}

function clock() {
  const c = { t: 50_000, now: () => c.t, advance: (ms: number) => void (c.t += ms) };
  return c;
}

describe('runtime: a provider over a KeyBackend', () => {
  it('Encrypt waits for a good probe, then uses what the last good probe confirmed, with one deadline per call', async () => {
    const { b, impl } = backend();
    const c = clock();
    const refused: string[] = [];
    const p = createProviderRuntime(impl, { graceMs: 10_000, timeoutMs: 3_000, clock: c.now, onRefused: (e) => refused.push(e.code) });
    assert.equal(p.kind, 'double');
    assert.equal(p.maxPlaintextBytes, 64);
    await assert.rejects(p.encrypt(Buffer.from('x'), { uid: 'u1', annotations: true }), /the double has not confirmed the key yet/);
    b.next.push({ keyId: 'k1', state: 1 });
    assert.equal(await p.healthCheck(), 'k1');
    assert.deepEqual(b.probes, [53_000]);
    c.advance(100);
    const e = await p.encrypt(Buffer.from('x'), { uid: 'u2', annotations: true });
    assert.equal(e.keyId, 'k1');
    assert.deepEqual(b.wraps, [{ state: 1, deadlineAt: 53_100, uid: 'u2' }]);
    const d = await p.decrypt(e.ciphertext, e.keyId, {}, { uid: 'u3' });
    assert.equal(d.plaintext.toString(), 'x');
    assert.deepEqual(b.unwraps, [{ deadlineAt: 53_100, keyId: 'k1' }]);

    // A failed probe does not replace the confirmed state; a good one does.
    b.next.push(new KeyhavenError('unavailable', 'blip'), { keyId: 'k2', state: 2 });
    await assert.rejects(p.healthCheck(), /blip/);
    assert.equal((await p.encrypt(Buffer.from('y'), { uid: 'u', annotations: true })).keyId, 'k1');
    assert.equal(await p.healthCheck(), 'k2');
    assert.equal((await p.encrypt(Buffer.from('y'), { uid: 'u', annotations: true })).keyId, 'k2');
    assert.deepEqual(refused, []);
  });

  it('a refusal blocks Encrypt at once and reaches onRefused; Decrypt is not gated (old data stays readable while the KMS allows it)', async () => {
    const { b, impl } = backend();
    const refused: string[] = [];
    const p = createProviderRuntime(impl, { graceMs: 10_000, timeoutMs: 3_000, onRefused: (e) => refused.push(e.code) });
    b.next.push({ keyId: 'k1', state: 1 }, new KeyhavenError('key_disabled', 'disabled'));
    await p.healthCheck();
    const e = await p.encrypt(Buffer.from('x'), { uid: 'u', annotations: true });
    await assert.rejects(p.healthCheck(), /disabled/);
    await assert.rejects(p.encrypt(Buffer.from('x'), { uid: 'u', annotations: true }), /disabled/);
    assert.deepEqual(refused, ['key_disabled']);
    assert.equal((await p.decrypt(e.ciphertext, e.keyId, {}, { uid: 'u' })).plaintext.toString(), 'x');
  });

  it('a foreign error from a probe is reported as unavailable, and close() reaches the backend', async () => {
    const { b, impl } = backend();
    const p = createProviderRuntime(impl, { graceMs: 10_000, timeoutMs: 3_000 });
    b.next.push(new TypeError('socket hang up'));
    await assert.rejects(p.healthCheck(), (e: unknown) => e instanceof KeyhavenError && e.code === 'unavailable' && e.message === 'the double health check failed');
    await p.close();
    assert.equal(b.closed, 1);
  });
});
