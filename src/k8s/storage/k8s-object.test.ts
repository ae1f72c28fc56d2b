import * as assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parse } from 'yaml';
import type { ErrorCode } from '../../errors.js';
import { code } from '../../../test/expect-error.js';
import { decodeStoredObject, encodeSecretProtobuf, toApplyYaml } from './k8s-object.js';

// Protobuf built by hand in the test, independent of the code under test.
function varint(n: number): Buffer {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return Buffer.from(out);
}
const ld = (field: number, b: Buffer | string): Buffer => {
  const bytes = Buffer.from(b);
  return Buffer.concat([varint((field << 3) | 2), varint(bytes.length), bytes]);
};
const vi = (field: number, n: number): Buffer => Buffer.concat([varint(field << 3), varint(n)]);
const entry = (field: number, k: string, v: Buffer | string): Buffer => ld(field, Buffer.concat([ld(1, k), ld(2, v)]));
const MAGIC = Buffer.from('k8s\x00', 'latin1');
const unknown = (apiVersion: string, kind: string, raw: Buffer, extra: Buffer = Buffer.alloc(0)): Buffer =>
  Buffer.concat([MAGIC, ld(1, Buffer.concat([ld(1, apiVersion), ld(2, kind)])), ld(2, raw), extra]);

const meta = Buffer.concat([
  ld(1, 'settings'),
  ld(3, 'prod'),
  ld(5, '6f1c1a52-0000-4000-8000-000000000001'),
  ld(6, '12345'),
  ld(8, Buffer.concat([vi(1, 1_700_000_000), vi(2, 0)])), // 2023-11-14T22:13:20Z
  entry(11, 'app', 'web'),
  entry(12, 'note.example.com/owner', 'team-a'),
]);

const expectError = (f: () => unknown, c: ErrorCode, re: RegExp): void => assert.throws(f, code(c, re));

describe('decodeStoredObject', () => {
  it('decodes a ConfigMap built by hand (metadata, data, binaryData, immutable)', () => {
    const raw = Buffer.concat([ld(1, meta), entry(2, 'mode', 'fast'), entry(3, 'blob', Buffer.from([0, 1, 2, 255])), vi(4, 1)]);
    const d = decodeStoredObject(unknown('v1', 'ConfigMap', raw));
    assert.equal(d.kind, 'ConfigMap');
    assert.equal(d.namespace, 'prod');
    assert.equal(d.name, 'settings');
    assert.deepEqual(d.raw, raw);
    assert.deepEqual(d.object, {
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: {
        name: 'settings',
        namespace: 'prod',
        uid: '6f1c1a52-0000-4000-8000-000000000001',
        resourceVersion: '12345',
        creationTimestamp: '2023-11-14T22:13:20Z',
        labels: { app: 'web' },
        annotations: { 'note.example.com/owner': 'team-a' },
      },
      immutable: true,
      data: { mode: 'fast' },
      binaryData: { blob: 'AAEC/w==' },
    });
  });

  it('decodes a Secret built by hand, data base64 as kubectl shows it', () => {
    const raw = Buffer.concat([ld(1, meta), entry(2, 'password', 'hunter2'), ld(3, 'kubernetes.io/basic-auth')]);
    const d = decodeStoredObject(unknown('v1', 'Secret', raw));
    assert.deepEqual(d.object?.data, { password: Buffer.from('hunter2').toString('base64') });
    assert.equal(d.object?.type, 'kubernetes.io/basic-auth');
    assert.equal(d.object?.immutable, undefined);
  });

  it('round-trips encodeSecretProtobuf, whose bytes match the hand-built form', () => {
    const bytes = encodeSecretProtobuf({ namespace: 'ns', name: 'db', data: { b: Buffer.from('2'), a: Buffer.from('1') }, uid: 'u1', labels: { x: 'y' } });
    const m = Buffer.concat([ld(1, 'db'), ld(2, ''), ld(3, 'ns'), ld(4, ''), ld(5, 'u1'), ld(6, ''), vi(7, 0), ld(8, Buffer.alloc(0)), entry(11, 'x', 'y')]);
    const raw = Buffer.concat([ld(1, m), entry(2, 'a', '1'), entry(2, 'b', '2'), ld(3, 'Opaque')]);
    assert.deepEqual(bytes, unknown('v1', 'Secret', raw, Buffer.concat([ld(3, ''), ld(4, '')])));
    const d = decodeStoredObject(bytes);
    assert.deepEqual(d.object, {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name: 'db', namespace: 'ns', uid: 'u1', labels: { x: 'y' } },
      data: { a: 'MQ==', b: 'Mg==' },
      type: 'Opaque',
    });
  });

  it('gives other kinds apiVersion, kind, namespace and name, and says only raw bytes are kept', () => {
    const raw = Buffer.concat([ld(1, Buffer.concat([ld(1, 'web-0'), ld(3, 'prod')])), ld(2, Buffer.from([0x0a, 0x00]))]);
    const d = decodeStoredObject(unknown('apps/v1', 'Deployment', raw));
    assert.deepEqual({ ...d, raw: undefined }, {
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      namespace: 'prod',
      name: 'web-0',
      raw: undefined,
      note: 'only Secret and ConfigMap are decoded in full; raw holds the Deployment as protobuf',
    });
    expectError(() => toApplyYaml(d), 'failed_precondition', /Deployment prod\/web-0: only raw bytes are known/);
  });

  it('decodes JSON objects (custom resources) in full', () => {
    const json = Buffer.from(JSON.stringify({ apiVersion: 'example.com/v1', kind: 'Widget', metadata: { name: 'w', namespace: 'ns', uid: 'u' }, spec: { size: 3 } }));
    const d = decodeStoredObject(json);
    assert.equal(d.kind, 'Widget');
    assert.equal(d.name, 'w');
    assert.deepEqual(parse(toApplyYaml(d)), { apiVersion: 'example.com/v1', kind: 'Widget', metadata: { name: 'w', namespace: 'ns' }, spec: { size: 3 } });
  });

  it('notes a raw in a content type it does not decode', () => {
    const d = decodeStoredObject(unknown('v1', 'Secret', Buffer.from('{}'), ld(4, 'application/json')));
    assert.equal(d.object, undefined);
    assert.match(d.note ?? '', /content type "application\/json"/);
  });

  const bad: [string, Buffer, RegExp][] = [
    ['truncated protobuf', unknown('v1', 'Secret', Buffer.concat([ld(1, meta), entry(2, 'k', 'v')])).subarray(0, 40), /not a valid Unknown protobuf message/],
    ['a truncated Secret inside a whole Unknown', unknown('v1', 'Secret', ld(1, meta).subarray(0, 20)), /Secret is not a valid Secret protobuf message/],
    ['no kind', Buffer.concat([MAGIC, ld(2, 'x')]), /no kind in its TypeMeta/],
    ['bad JSON', Buffer.from('{"kind":'), /does not parse/],
    ['JSON without kind', Buffer.from('{"a":1}'), /no kind/],
    ['neither form', Buffer.from('plain text'), /neither a Kubernetes protobuf object/],
  ];
  for (const [name, value, re] of bad) {
    it(`refuses ${name}`, () => expectError(() => decodeStoredObject(value), 'invalid_argument', re));
  }
});

describe('toApplyYaml', () => {
  it('drops uid, resourceVersion and creationTimestamp and keeps the rest', () => {
    const raw = Buffer.concat([ld(1, meta), entry(2, 'password', 'hunter2')]);
    const y = parse(toApplyYaml(decodeStoredObject(unknown('v1', 'Secret', raw)))) as Record<string, unknown>;
    assert.deepEqual(y, {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name: 'settings', namespace: 'prod', labels: { app: 'web' }, annotations: { 'note.example.com/owner': 'team-a' } },
      data: { password: 'aHVudGVyMg==' },
    });
  });
});
