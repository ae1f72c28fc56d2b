import { stringify } from 'yaml';
import { KeyhavenError } from '../../errors.js';
import type protobuf from 'protobufjs';
import { decodeMessage, defineTypes, message, Writer } from './proto.js';
import { PROTOBUF_MAGIC } from './prefixes.js';

// A decrypted value is what the apiserver's storage serializer wrote: either
// `k8s\0` + runtime.Unknown (apimachinery runtime/serializer/protobuf) or JSON
// (custom resources and anything stored as JSON). Field numbers are those of
// apimachinery's runtime and meta/v1 generated.proto and core/v1 generated.proto.

export interface DecodedObject {
  apiVersion: string;
  kind: string;
  namespace?: string;
  name?: string;
  /** a plain JSON-able object for YAML, or undefined when only raw bytes are known */
  object?: Record<string, unknown>;
  raw: Buffer;
  note?: string;
}

const TypeMeta = message('TypeMeta', [
  ['apiVersion', 1, 'string'],
  ['kind', 2, 'string'],
]);
const Unknown = message('Unknown', [
  ['typeMeta', 1, 'TypeMeta'],
  ['raw', 2, 'bytes'],
  ['contentEncoding', 3, 'string'],
  ['contentType', 4, 'string'],
]);
const Time = message('Time', [
  ['seconds', 1, 'int64'],
  ['nanos', 2, 'int32'],
]);
const ObjectMeta = message('ObjectMeta', [
  ['name', 1, 'string'],
  ['generateName', 2, 'string'],
  ['namespace', 3, 'string'],
  ['uid', 5, 'string'],
  ['resourceVersion', 6, 'string'],
  ['generation', 7, 'int64'],
  ['creationTimestamp', 8, 'Time'],
  ['labels', 11, 'string', 'map', 'string'],
  ['annotations', 12, 'string', 'map', 'string'],
  ['finalizers', 14, 'string', 'repeated'],
]);
/** Only metadata: every top-level kind keeps its ObjectMeta in field 1. */
const MetaOnly = message('MetaOnly', [['metadata', 1, 'ObjectMeta']]);
const Secret = message('Secret', [
  ['metadata', 1, 'ObjectMeta'],
  ['data', 2, 'bytes', 'map', 'string'],
  ['type', 3, 'string'],
  ['stringData', 4, 'string', 'map', 'string'],
  ['immutable', 5, 'bool'],
]);
const ConfigMap = message('ConfigMap', [
  ['metadata', 1, 'ObjectMeta'],
  ['data', 2, 'string', 'map', 'string'],
  ['binaryData', 3, 'bytes', 'map', 'string'],
  ['immutable', 4, 'bool'],
]);
defineTypes([TypeMeta, Unknown, Time, ObjectMeta, MetaOnly, Secret, ConfigMap]);

type Obj = Record<string, unknown>;

/** metav1.Time in its JSON form: RFC 3339, UTC, whole seconds. */
function rfc3339(t: Obj | undefined): string | undefined {
  // An empty Time message is metav1's zero time (it marshals to no bytes): no timestamp.
  if (!t || (t.seconds === undefined && t.nanos === undefined)) return undefined;
  const seconds = Number(t.seconds ?? 0);
  if (!Number.isFinite(seconds)) return undefined;
  const d = new Date(seconds * 1000);
  if (Number.isNaN(d.getTime())) return undefined;
  return d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function nonEmptyMap<V>(m: unknown, f: (v: V) => unknown): Obj | undefined {
  if (!m || typeof m !== 'object') return undefined;
  const entries = Object.entries(m as Record<string, V>);
  if (entries.length === 0) return undefined;
  return Object.fromEntries(entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([k, v]) => [k, f(v)]));
}

/** Drops undefined and empty-string fields so the YAML holds only what was set. */
function compact(o: Obj): Obj {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined && v !== ''));
}

function metadataOf(m: Obj | undefined): Obj {
  const meta = m ?? {};
  const generation = Number(meta.generation ?? 0);
  const finalizers = Array.isArray(meta.finalizers) && meta.finalizers.length > 0 ? meta.finalizers : undefined;
  return compact({
    name: meta.name,
    generateName: meta.generateName,
    namespace: meta.namespace,
    uid: meta.uid,
    resourceVersion: meta.resourceVersion,
    generation: generation !== 0 ? generation : undefined,
    creationTimestamp: rfc3339(meta.creationTimestamp as Obj | undefined),
    labels: nonEmptyMap<string>(meta.labels, (v) => v),
    annotations: nonEmptyMap<string>(meta.annotations, (v) => v),
    finalizers,
  });
}

const base64 = (b: Buffer): string => Buffer.from(b).toString('base64');

function decodeSecret(raw: Buffer, apiVersion: string): Obj {
  const s = decodeMessage(Secret, raw, 'Secret');
  return compact({
    apiVersion,
    kind: 'Secret',
    metadata: metadataOf(s.metadata as Obj | undefined),
    immutable: s.immutable as boolean | undefined,
    // kubectl shows data base64-encoded; stringData is write-only and never stored, but show it if present.
    data: nonEmptyMap<Buffer>(s.data, base64),
    stringData: nonEmptyMap<string>(s.stringData, (v) => v),
    type: s.type as string | undefined,
  });
}

function decodeConfigMap(raw: Buffer, apiVersion: string): Obj {
  const c = decodeMessage(ConfigMap, raw, 'ConfigMap');
  return compact({
    apiVersion,
    kind: 'ConfigMap',
    metadata: metadataOf(c.metadata as Obj | undefined),
    immutable: c.immutable as boolean | undefined,
    data: nonEmptyMap<string>(c.data, (v) => v),
    binaryData: nonEmptyMap<Buffer>(c.binaryData, base64),
  });
}

function naming(meta: Obj): { namespace?: string; name?: string } {
  const out: { namespace?: string; name?: string } = {};
  if (typeof meta.namespace === 'string' && meta.namespace !== '') out.namespace = meta.namespace;
  if (typeof meta.name === 'string' && meta.name !== '') out.name = meta.name;
  return out;
}

function decodeProtobuf(plain: Buffer): DecodedObject {
  const u = decodeMessage(Unknown, plain.subarray(PROTOBUF_MAGIC.length), 'stored protobuf object (runtime.Unknown)');
  const tm = (u.typeMeta as Obj | undefined) ?? {};
  const apiVersion = typeof tm.apiVersion === 'string' ? tm.apiVersion : '';
  const kind = typeof tm.kind === 'string' ? tm.kind : '';
  if (kind === '') throw new KeyhavenError('invalid_argument', 'stored protobuf object has no kind in its TypeMeta');
  const raw = (u.raw as Buffer | undefined) ?? Buffer.alloc(0);
  const contentType = typeof u.contentType === 'string' ? u.contentType : '';
  const contentEncoding = typeof u.contentEncoding === 'string' ? u.contentEncoding : '';
  if (contentEncoding !== '' || (contentType !== '' && contentType !== 'application/vnd.kubernetes.protobuf')) {
    return {
      apiVersion,
      kind,
      raw,
      note: `raw is in content type ${JSON.stringify(contentType)} with encoding ${JSON.stringify(contentEncoding)}, which keyhaven does not decode`,
    };
  }
  const core = apiVersion === 'v1';
  if (core && (kind === 'Secret' || kind === 'ConfigMap')) {
    const object = kind === 'Secret' ? decodeSecret(raw, apiVersion) : decodeConfigMap(raw, apiVersion);
    return { apiVersion, kind, ...naming(object.metadata as Obj), object, raw };
  }
  const meta = decodeMessage(MetaOnly, raw, `${kind} metadata`);
  return {
    apiVersion,
    kind,
    ...naming((meta.metadata as Obj | undefined) ?? {}),
    raw,
    note: `only Secret and ConfigMap are decoded in full; raw holds the ${kind} as protobuf`,
  };
}

function decodeJson(plain: Buffer): DecodedObject {
  let parsed: unknown;
  try {
    parsed = JSON.parse(plain.toString('utf8'));
  } catch (e) {
    throw new KeyhavenError('invalid_argument', `stored JSON object does not parse: ${e instanceof Error ? e.message : String(e)}`);
  }
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new KeyhavenError('invalid_argument', 'stored JSON value is not an object');
  }
  const object = parsed as Obj;
  const apiVersion = typeof object.apiVersion === 'string' ? object.apiVersion : '';
  const kind = typeof object.kind === 'string' ? object.kind : '';
  if (kind === '') throw new KeyhavenError('invalid_argument', 'stored JSON object has no kind');
  const meta = object.metadata && typeof object.metadata === 'object' ? (object.metadata as Obj) : {};
  return { apiVersion, kind, ...naming(meta), object, raw: plain };
}

/** A decrypted value into a Kubernetes object: protobuf (`k8s\0`) or JSON. */
export function decodeStoredObject(plain: Buffer): DecodedObject {
  if (plain.length >= PROTOBUF_MAGIC.length && plain.subarray(0, PROTOBUF_MAGIC.length).equals(PROTOBUF_MAGIC)) {
    return decodeProtobuf(plain);
  }
  const first = plain.find((b) => b !== 0x20 && b !== 0x0a && b !== 0x0d && b !== 0x09);
  if (first === 0x7b) return decodeJson(plain);
  throw new KeyhavenError('invalid_argument', 'decrypted value is neither a Kubernetes protobuf object (k8s\\0 magic) nor a JSON object');
}

const LD = 2; // length-delimited wire type

function writeStringMap(w: protobuf.Writer, field: number, m: Record<string, string | Buffer>): void {
  for (const k of Object.keys(m).sort()) {
    const v = m[k]!;
    w.uint32((field << 3) | LD).fork().uint32((1 << 3) | LD).string(k);
    if (typeof v === 'string') w.uint32((2 << 3) | LD).string(v);
    else w.uint32((2 << 3) | LD).bytes(v);
    w.ldelim();
  }
}

/**
 * `k8s\0` + Unknown{v1, Secret} as the apiserver stores a Secret — for tests and
 * the bench. Like Kubernetes' generated marshallers it writes the plain string
 * fields even when empty and map entries sorted by key.
 */
export function encodeSecretProtobuf(s: {
  namespace: string;
  name: string;
  data: Record<string, Buffer>;
  type?: string;
  uid?: string;
  labels?: Record<string, string>;
}): Buffer {
  const meta = Writer.create();
  meta.uint32((1 << 3) | LD).string(s.name);
  meta.uint32((2 << 3) | LD).string('');
  meta.uint32((3 << 3) | LD).string(s.namespace);
  meta.uint32((4 << 3) | LD).string('');
  meta.uint32((5 << 3) | LD).string(s.uid ?? '');
  meta.uint32((6 << 3) | LD).string('');
  meta.uint32((7 << 3) | 0).int64(0);
  meta.uint32((8 << 3) | LD).fork().ldelim(); // creationTimestamp: the zero Time
  writeStringMap(meta, 11, s.labels ?? {});

  const secret = Writer.create();
  secret.uint32((1 << 3) | LD).bytes(meta.finish());
  writeStringMap(secret, 2, s.data);
  secret.uint32((3 << 3) | LD).string(s.type ?? 'Opaque');

  const unknown = Writer.create();
  unknown.uint32((1 << 3) | LD).fork().uint32((1 << 3) | LD).string('v1').uint32((2 << 3) | LD).string('Secret').ldelim();
  unknown.uint32((2 << 3) | LD).bytes(secret.finish());
  unknown.uint32((3 << 3) | LD).string('');
  unknown.uint32((4 << 3) | LD).string('');
  return Buffer.concat([PROTOBUF_MAGIC, Buffer.from(unknown.finish())]);
}

/** `kubectl apply`-ready YAML of a decoded object. */
export function toApplyYaml(o: DecodedObject): string {
  if (!o.object) {
    const where = `${o.namespace ? `${o.namespace}/` : ''}${o.name ?? ''}`;
    throw new KeyhavenError('failed_precondition', `${o.kind} ${where}: only raw bytes are known, no YAML can be written`);
  }
  const object = structuredClone(o.object);
  const meta = object.metadata;
  if (meta && typeof meta === 'object') {
    // Server-assigned: a stale resourceVersion makes apply fail its optimistic-concurrency
    // check, and uid and creationTimestamp belong to the lost object, not the restored one.
    const m = meta as Obj;
    delete m.uid;
    delete m.resourceVersion;
    delete m.creationTimestamp;
  }
  return stringify(object);
}
