import { chmodSync, existsSync, lstatSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { KeyhavenError } from '../errors.js';
import { keyPrefix, objectPath } from './etcd-key.js';
import { decodeStoredObject, toApplyYaml } from './storage/k8s-object.js';
import { openKmsV1, splitKmsV1 } from './storage/kms-v1.js';
import { openKmsV2, splitKmsV2 } from './storage/kms-v2.js';
import { classifyValue } from './storage/storage-form.js';
import type { ScanSource } from './scan.js';

/** How recovery reaches the keys: a plugin provider (the key server, an embedded store, another KMS). */
export interface RecoveryKeys {
  /** KMS v2: the plaintext of an EncryptedObject's encryptedDEKSource (the seed or DEK). */
  unwrapV2(keyId: string, encryptedDEKSource: Buffer, annotations: Readonly<Record<string, Buffer>>): Promise<Buffer>;
  /** KMS v1: the DEK of a value. */
  unwrapV1(encryptedDEK: Buffer): Promise<Buffer>;
}

export interface RecoverOptions {
  readonly prefix: string;
  /** Resources to write (default secrets and configmaps). */
  readonly resources: readonly string[];
  /** Only these namespaces (default all). */
  readonly namespaces?: readonly string[];
  /** Only values written by these KMS provider names (default all). */
  readonly providers?: readonly string[];
  /** Created 0700; must not exist or be empty. */
  readonly outDir: string;
  /** Unwraps in flight at once (distinct seeds; values sharing a seed wait for one). */
  readonly concurrency?: number;
  readonly pageSize?: number;
  readonly onProgress?: (read: number) => void;
}

export interface RecoverResult {
  readonly source: string;
  /** Values read under the prefix. */
  readonly read: number;
  /** Objects written as YAML. */
  readonly written: number;
  /** Objects of other kinds stored as protobuf, written as their decrypted stored bytes (`.bin`), which kubectl cannot apply. */
  readonly raw: readonly string[];
  /** Values that could not be recovered: the etcd key and why (never a value). */
  readonly failed: ReadonlyArray<{ key: string; reason: string }>;
  /** Calls to the keys: one per distinct seed or DEK (and again after a failed one). */
  readonly unwraps: number;
}

const SAFE_SEGMENT = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,252}$/;

/** Checks --out (new, or an empty folder of ours) and makes it: 0700. */
export function prepareOutDir(dir: string): void {
  if (existsSync(dir)) {
    const st = lstatSync(dir);
    if (!st.isDirectory() || st.isSymbolicLink()) throw new KeyhavenError('invalid_argument', `--out ${dir} exists and is not a folder`);
    if (readdirSync(dir).length > 0) throw new KeyhavenError('invalid_argument', `--out ${dir} is not empty; recovered objects go into a new or empty folder`);
    // An empty folder someone else owns could be read (or swapped) by them: only our own, made private.
    if (process.getuid && st.uid !== process.getuid()) throw new KeyhavenError('invalid_argument', `--out ${dir} belongs to another user; use a folder of your own`);
    chmodSync(dir, 0o700);
    return;
  }
  mkdirSync(dir, { recursive: true, mode: 0o700 });
}

/**
 * Decrypts the values under the prefix as kube-apiserver would and writes one
 * file per object (folders 0700, files 0600). Each distinct seed is unwrapped
 * once; a value that cannot be read is reported and the rest still come out.
 */
export async function recoverObjects(source: ScanSource, keys: RecoveryKeys, o: RecoverOptions): Promise<RecoverResult> {
  prepareOutDir(o.outDir);
  const resources = new Set(o.resources);
  const namespaces = o.namespaces ? new Set(o.namespaces) : undefined;
  const providers = o.providers ? new Set(o.providers) : undefined;
  // Values sharing a seed share one unwrap, keyed as kube-apiserver keys its cache (source type, seed, key_id,
  // annotations): a value someone wrote into etcd with a genuine seed and a forged key_id gets its own call, and
  // a failure is not kept, so it cannot fail the genuine values after it.
  const unwrapped = new Map<string, Promise<Buffer>>();
  let unwraps = 0;
  const once = (id: string, fn: () => Promise<Buffer>): Promise<Buffer> => {
    let p = unwrapped.get(id);
    if (!p) {
      unwraps += 1;
      p = fn();
      unwrapped.set(id, p);
      p.catch(() => {
        if (unwrapped.get(id) === p) unwrapped.delete(id);
      });
    }
    return p;
  };
  const failed: { key: string; reason: string }[] = [];
  const raw: string[] = [];
  const made = new Set<string>();
  let read = 0;
  let written = 0;

  const plainOf = async (key: string, value: Buffer): Promise<Buffer> => {
    const f = classifyValue(value);
    // --provider: only values of those KMS providers (a migration recovers what one plugin wrote).
    if (providers && !((f.kind === 'kms-v1' || f.kind === 'kms-v2' || f.kind === 'malformed') && f.provider !== undefined && providers.has(f.provider))) throw new SkipValue();
    switch (f.kind) {
      case 'unencrypted':
        return value;
      case 'kms-v2': {
        const { object } = splitKmsV2(value);
        const id = JSON.stringify([object.encryptedDEKSourceType, object.encryptedDEKSource.toString('base64'), object.keyID, Object.entries(object.annotations).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([k, v]) => [k, v.toString('base64')])]);
        const src = await once(`2:${id}`, () => keys.unwrapV2(object.keyID, object.encryptedDEKSource, object.annotations));
        return openKmsV2(object, src, key);
      }
      case 'kms-v1': {
        const v1 = splitKmsV1(value);
        const dek = await once(`1:${v1.encryptedDEK.toString('base64')}`, () => keys.unwrapV1(v1.encryptedDEK));
        return openKmsV1(v1.encryptedData, dek, key);
      }
      case 'malformed':
        throw new KeyhavenError('invalid_argument', `stored as ${f.form} but does not parse: ${f.reason}`);
      default:
        throw new KeyhavenError('failed_precondition', `stored with ${f.kind} key "${f.keyName}" from the apiserver's EncryptionConfiguration; keyhaven holds only KMS keys`);
    }
  };

  const writeOne = async (key: string, value: Buffer): Promise<void> => {
    const path = objectPath(o.prefix, key);
    if (!resources.has(path.resource)) return;
    if (namespaces && !(path.rest.length === 2 && namespaces.has(path.rest[0]!))) return;
    let plain: Buffer;
    try {
      plain = await plainOf(key, value);
    } catch (e) {
      if (e instanceof SkipValue) return;
      failed.push({ key, reason: reasonOf(e) });
      return;
    }
    try {
      if (!path.rest.every((s) => SAFE_SEGMENT.test(s)) || path.rest.length === 0 || path.rest.length > 2) throw new KeyhavenError('invalid_argument', 'the etcd key does not name an object as kube-apiserver lays them out');
      const decoded = decodeStoredObject(plain);
      const dir = join(o.outDir, path.resource.replace('/', '_'), ...path.rest.slice(0, -1));
      if (!made.has(dir)) {
        mkdirSync(dir, { recursive: true, mode: 0o700 });
        made.add(dir);
      }
      const base = join(dir, path.rest[path.rest.length - 1]!);
      if (decoded.object) {
        writeFileSync(`${base}.yaml`, toApplyYaml(decoded), { mode: 0o600, flag: 'wx' });
        written += 1;
      } else {
        // The whole decrypted value (k8s\0 + its type), as the apiserver's storage codec reads it.
        writeFileSync(`${base}.bin`, plain, { mode: 0o600, flag: 'wx' });
        raw.push(key);
      }
    } catch (e) {
      failed.push({ key, reason: reasonOf(e) });
    } finally {
      // A decrypted copy is ours to wipe; an unencrypted value is the caller's buffer.
      if (plain !== value) plain.fill(0);
    }
  };

  const limit = Math.max(1, o.concurrency ?? 16);
  for await (const page of source.pages(keyPrefix(o.prefix), o.pageSize)) {
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < page.length) {
        const { key, value } = page[next++]!;
        await writeOne(key, value);
      }
    };
    await Promise.all(Array.from({ length: Math.min(limit, page.length) }, worker));
    read += page.length;
    o.onProgress?.(read);
  }
  for (const p of unwrapped.values()) void p.then((b) => b.fill(0), () => undefined);
  return { source: source.label, read, written, raw, failed, unwraps };
}

class SkipValue extends Error {}

function reasonOf(e: unknown): string {
  if (e instanceof KeyhavenError) return e.message;
  // A foreign error (a file system refusal) by its code: its message may quote a path, never a value.
  const code = (e as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' ? `could not be written (${code})` : 'could not be recovered';
}
