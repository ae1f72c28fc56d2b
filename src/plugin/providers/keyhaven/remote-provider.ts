import { KeyhavenError } from '../../../errors.js';
import { parseKeyId, type ParsedKeyId } from '../../../keys/key-id.js';
import type { KeyServerClient } from '../../key-server-client.js';
import { MAX_CIPHERTEXT_BYTES } from '../../limits.js';
import type { KmsProvider } from '../../provider.js';
import type { Clock } from '../../runtime/deadline.js';
import { ACCESS_REVOKED } from '../../runtime/error-class.js';
import { createProviderRuntime, type KeyBackend } from '../../runtime/key-backend.js';
import { LocalKekLifecycle, type LocalKekEvents } from '../../runtime/local-kek.js';
import { FORM_DIRECT, KEK_ANNOTATION, KEK_CONTEXT, openWithKek, parseEnvelope, parseServerCiphertext, sealWithKek } from './remote-envelope.js';

export interface RemoteProviderOptions extends LocalKekEvents {
  readonly client: KeyServerClient;
  readonly keyName: string;
  readonly cluster: string;
  readonly node: string;
  readonly pluginVersion: string;
  readonly localKek: { readonly enabled: boolean; readonly maxUses: number; readonly maxAgeMs: number; readonly cacheSize: number };
  readonly reportIntervalMs: number;
  /** Encrypt is refused when the server has not confirmed the key for this long (the Status grace period). */
  readonly staleAfterMs: number;
  /** One health check (probe, KEK wrap, re-probe) ends within this, so Status answers inside the apiserver's deadline. */
  readonly timeoutMs: number;
  /** The clock of the grace period and of deadlines; the client's must be the same. */
  readonly now?: Clock;
}

interface Probe {
  readonly keyId: string;
  readonly parsed: ParsedKeyId;
  readonly version: number;
  readonly minDecryptionVersion: number;
  /** Every key_id that can still decrypt. */
  readonly live: ReadonlySet<string>;
}

// The largest seed that still fits the apiserver's 1024 bytes in every form.
const MAX_PLAINTEXT = 512;

/**
 * The key provider backed by keyhaven key servers. With the local KEK on, the
 * server wraps a random KEK once and the plugin seals the apiserver's seeds
 * with it; Decrypt asks the server only for KEKs it has not seen.
 */
export function createRemoteProvider(opts: RemoteProviderOptions): KmsProvider {
  // Version: the server key version that wrapped the KEK.
  const keks = new LocalKekLifecycle<{ kek: Buffer; version: number }, { version: number }>(opts.localKek, opts, opts.now);
  return createProviderRuntime(createKeyhavenBackend(opts, keks), {
    graceMs: opts.staleAfterMs,
    timeoutMs: opts.timeoutMs,
    ...(opts.now ? { clock: opts.now } : {}),
    // Refusals that mean this app may no longer use the key: cached KEKs go too.
    onRefused: (e) => ACCESS_REVOKED.has(e.code) && keks.forget(),
  });
}

/**
 * Keyhaven key servers as a KeyBackend, with the local KEK (when on) from the
 * runtime's lifecycle. No state goes to Encrypt through the runtime: what
 * Status reported (never backwards) is kept here, across servers that may lag.
 */
function createKeyhavenBackend(opts: RemoteProviderOptions, keks: LocalKekLifecycle<{ kek: Buffer; version: number }, { version: number }>): KeyBackend<void> {
  const { client, keyName } = opts;
  const now = opts.now ?? Date.now;
  const base = `/v1/keys/${encodeURIComponent(keyName)}`;
  // When the last good probe started: the report tells the central team.
  let lastConfirmedAt: number | undefined;

  let probe: Probe | undefined;
  let lastReportAt = -Infinity;
  let reportedKeyId: string | undefined;
  // What Status last reported, and so what Encrypt must use (the apiserver drops a reply with another key_id).
  let statusKeyId: string | undefined;
  let statusVersion = 0;
  // The newest key version this plugin has seen from any server or reported. Servers sharing a
  // database may lag one another after a rotation: an answer under an older version is "behind",
  // and is never reported (the apiserver would see the key go backwards and make new seeds).
  let highest = 0;
  // key_ids of the versions seen, so a version already known needs no new probe (which may reach a server that is behind).
  const keyIds = new Map<number, string>();
  const learn = (p: Probe) => {
    keyIds.set(p.version, p.keyId);
    for (const v of keyIds.keys()) if (v < p.minDecryptionVersion || keyIds.size > 64) keyIds.delete(v);
    if (p.version > highest) highest = p.version;
  };
  /** Reason a server's answer under `version` cannot be used: it is older than one already seen. */
  const behind = (version: number | undefined, floor = highest): string | undefined =>
    version !== undefined && version < floor ? `answered under version ${version} of key "${keyName}", older than version ${floor} already in use (this server is behind the others)` : undefined;
  const ciphertextVersion = (res: unknown): number | undefined => {
    const text = (res as { ciphertext?: unknown })?.ciphertext;
    if (typeof text !== 'string') return undefined;
    try {
      return parseServerCiphertext(text, 'ciphertext').version;
    } catch {
      return undefined;
    }
  };

  const readProbe = (res: unknown): Probe => {
    const r = res as { keyId?: unknown; version?: unknown; minDecryptionVersion?: unknown; liveKeyIds?: unknown };
    if (typeof r?.keyId !== 'string' || !Number.isInteger(r.version) || !Number.isInteger(r.minDecryptionVersion) || !Array.isArray(r.liveKeyIds) || !r.liveKeyIds.every((k) => typeof k === 'string')) {
      throw new KeyhavenError('unavailable', 'the key server answered the status probe with an unexpected shape');
    }
    const parsed = parseKeyId(r.keyId);
    return { keyId: r.keyId, parsed, version: r.version as number, minDecryptionVersion: r.minDecryptionVersion as number, live: new Set(r.liveKeyIds as string[]) };
  };

  const report = () => ({
    cluster: opts.cluster,
    node: opts.node,
    pluginVersion: opts.pluginVersion,
    ...(statusKeyId ? { keyId: statusKeyId } : {}),
    ...(lastConfirmedAt !== undefined ? { lastSuccess: new Date(lastConfirmedAt).toISOString() } : {}),
  });

  /** The key's status from a server; with `atLeast`, an answer under an older version is taken from another server. */
  async function callProbe(withReport: boolean, deadlineAt?: number, atLeast?: number): Promise<Probe> {
    const unusable = atLeast === undefined ? undefined : (r: unknown) => behind((r as { version?: unknown })?.version as number | undefined, atLeast);
    const p = readProbe(await client.post('status', `${base}/status`, withReport ? report() : {}, { ...(deadlineAt ? { deadlineAt } : {}), ...(unusable ? { unusable } : {}) }));
    if (withReport) {
      lastReportAt = now();
      reportedKeyId = statusKeyId;
    }
    return p;
  }

  /** The key_id of `version`: one already seen, or a fresh probe's if the server rotated in between. */
  async function keyIdOf(version: number, p: Probe | undefined, deadlineAt?: number): Promise<string> {
    if (p && version === p.version) return p.keyId;
    const known = keyIds.get(version);
    if (known) return known;
    const again = await callProbe(false, deadlineAt, version);
    if (again.version !== version) throw new KeyhavenError('unavailable', `the key server rotated key "${keyName}" twice during one call; retrying at the next Status`);
    learn(again);
    return again.keyId;
  }

  /** Has the server wrap a new local KEK under the key's newest version. */
  const wrapKek = (p: Probe, deadlineAt: number) => async (kek: Buffer) => {
    // A KEK wrapped under an older version than this plugin uses would take its key_id backwards: another server wraps it.
    const floor = Math.max(highest, p.version);
    const res = await client.post<{ ciphertext?: unknown; version?: unknown }>('wrap', `${base}/encrypt`, { plaintext: kek.toString('base64'), context: KEK_CONTEXT.toString('base64') }, { deadlineAt, unusable: (r) => behind(ciphertextVersion(r), floor) });
    if (typeof res?.ciphertext !== 'string') throw new KeyhavenError('unavailable', 'the key server answered encrypt with an unexpected shape');
    const wrapped = parseServerCiphertext(res.ciphertext, 'the wrapped KEK');
    if (wrapped.keyRef !== p.parsed.keyRef) throw new KeyhavenError('integrity', 'the key server wrapped the KEK under another key');
    const stale = behind(wrapped.version, floor);
    if (stale) throw new KeyhavenError('unavailable', `the key server ${stale}`);
    const keyId = await keyIdOf(wrapped.version, p, deadlineAt);
    return { wrapped: Buffer.from(wrapped.text, 'latin1'), keyId, cacheKey: wrapped.text, entry: { version: wrapped.version }, extra: { version: wrapped.version } };
  };

  /** The server unwraps a KEK this plugin has not seen (or no longer holds). */
  const unwrapKek = (text: string, uid: string | undefined) => async (): Promise<{ kek: Buffer; version: number }> => {
    const res = await client.post<{ plaintext?: unknown; version?: unknown }>('unwrap', `${base}/decrypt`, { ciphertext: text, context: KEK_CONTEXT.toString('base64') }, uid ? { uid } : {});
    const kek = typeof res?.plaintext === 'string' ? Buffer.from(res.plaintext, 'base64') : Buffer.alloc(0);
    if (kek.length !== 32 || !Number.isInteger(res.version)) throw new KeyhavenError('integrity', 'the key server returned something that is not a local KEK');
    return { kek, version: res.version as number };
  };

  // One re-probe at a time, for a key_id newer than this plugin's last check (another node saw the rotation first).
  let reprobing: Promise<void> | undefined;
  const reprobe = (): Promise<void> =>
    (reprobing ??= callProbe(false)
      .then((p) => {
        learn(p);
        // A server that is behind does not replace a newer answer.
        if (!probe || p.version >= probe.version) probe = p;
      })
      .finally(() => {
        reprobing = undefined;
      }));

  const checkKeyId = async (keyId: string | undefined, version: number, keyRef: string): Promise<void> => {
    if (keyId === undefined) return;
    const k = parseKeyId(keyId);
    if (k.version !== version || k.keyRef !== keyRef) throw new KeyhavenError('invalid_argument', `ciphertext does not belong to key_id ${keyId}`);
    if (!probe || (!probe.live.has(keyId) && k.version > probe.version)) await reprobe().catch(() => {});
    // Without any answer from a server there is nothing to check against; the server refuses what it must.
    if (!probe || probe.live.has(keyId)) return;
    if (k.storeId !== probe.parsed.storeId) throw new KeyhavenError('unknown_key_id', `key_id ${keyId} was issued by another key server`);
    throw new KeyhavenError('unknown_key_id', `key_id ${keyId} is not a version of key "${keyName}" that can still decrypt (unknown, retired or destroyed)`);
  };

  const keyIdForLog = (version: number) => (probe && probe.version === version ? probe.keyId : `${keyName}@v${version}`);

  return {
    kind: 'keyhaven',
    service: 'the key server',
    maxPlaintextBytes: MAX_PLAINTEXT,
    async probe(deadlineAt) {
      const started = now();
      const reportDue = started - lastReportAt >= opts.reportIntervalMs || statusKeyId !== reportedKeyId;
      const answer = await callProbe(reportDue, deadlineAt);
      if (probe && answer.parsed.keyRef !== probe.parsed.keyRef) {
        // Another key under the same name (deleted and made again): its versions start over.
        highest = 0;
        statusVersion = 0;
        keyIds.clear();
      }
      // A server behind the others confirms the key is usable, but its version is not taken: Status keeps the newest.
      const p = probe && probe.parsed.keyRef === answer.parsed.keyRef && answer.version < Math.max(probe.version, highest) ? probe : answer;
      if (opts.localKek.enabled) {
        // Only forwards: a server that is behind does not take the KEK back to an older version.
        const why = keks.due((c) => (p.version > c.version ? 'key rotated on the server' : undefined));
        if (why) await keks.rotate(why, wrapKek(p, deadlineAt));
      }
      probe = p;
      learn(p);
      // Retired versions can no longer decrypt on the server; their KEKs go as well.
      keks.dropWhere((e) => e.version < p.minDecryptionVersion);
      const previous = statusKeyId;
      const next = opts.localKek.enabled ? { keyId: keks.current!.keyId, version: keks.current!.version } : { keyId: p.keyId, version: p.version };
      // Never backwards, whatever answered: a newer key_id already reported stays until a newer one comes.
      if (next.version >= statusVersion || statusKeyId === undefined) {
        statusKeyId = next.keyId;
        statusVersion = next.version;
      }
      if (statusVersion > highest) highest = statusVersion;
      lastConfirmedAt = started;
      // Tell the central team at once when this cluster moves to a new key version.
      if (previous !== undefined && previous !== statusKeyId) void callProbe(true).catch(() => {});
      return { keyId: statusKeyId!, state: undefined };
    },
    async wrap(plaintext, _state, ctx) {
      if (opts.localKek.enabled) {
        const k = keks.use(() => new KeyhavenError('unavailable', 'no local KEK yet: the key server has not answered a Status check'));
        const ciphertext = sealWithKek(k.kek, k.wrapped, plaintext, !ctx.annotations);
        if (ciphertext.length > MAX_CIPHERTEXT_BYTES) throw new KeyhavenError('internal', 'sealed seed exceeds 1024 bytes');
        return { ciphertext, keyId: k.keyId, keyName, keyVersion: k.version, ...(ctx.annotations ? { annotations: { [KEK_ANNOTATION]: k.wrapped } } : {}) };
      }
      // A server that is behind answers under an older version than this plugin reported: another server is asked.
      const floor = Math.max(highest, statusVersion);
      const res = await client.post<{ ciphertext?: unknown }>('encrypt', `${base}/encrypt`, { plaintext: plaintext.toString('base64') }, { uid: ctx.uid, unusable: (r) => behind(ciphertextVersion(r), floor) });
      if (typeof res?.ciphertext !== 'string') throw new KeyhavenError('unavailable', 'the key server answered encrypt with an unexpected shape');
      const c = parseServerCiphertext(res.ciphertext, 'the key server\'s ciphertext');
      const stale = behind(c.version, floor);
      if (stale) throw new KeyhavenError('unavailable', `the key server ${stale}`);
      if (ctx.annotations && c.version !== statusVersion) {
        // KMS v2 drops a reply whose key_id is not Status's; the next Status reports the new version.
        throw new KeyhavenError('unavailable', `key "${keyName}" was rotated on the server since the last Status; the apiserver retries after its next Status`);
      }
      // A key deleted and made again under the same name: its ciphertext must not carry the old key's key_id.
      if (probe && c.keyRef !== probe.parsed.keyRef) throw new KeyhavenError('unavailable', `key "${keyName}" on the key server is not the key this plugin last checked (deleted and made again?); the next Status checks it`);
      const keyId = await keyIdOf(c.version, probe);
      if (c.version > highest) highest = c.version;
      return { ciphertext: Buffer.from(c.text, 'latin1'), keyId, keyName, keyVersion: c.version };
    },
    async unwrap(ciphertext, keyId, annotations, ctx) {
      const env = parseEnvelope(ciphertext, annotations);
      if (env.form === FORM_DIRECT) {
        await checkKeyId(keyId, env.server.version, env.server.keyRef);
        const res = await client.post<{ plaintext?: unknown }>('decrypt', `${base}/decrypt`, { ciphertext: env.server.text }, { uid: ctx.uid });
        if (typeof res?.plaintext !== 'string') throw new KeyhavenError('unavailable', 'the key server answered decrypt with an unexpected shape');
        return { plaintext: Buffer.from(res.plaintext, 'base64'), keyId: keyId ?? keyIdForLog(env.server.version), keyName, keyVersion: env.server.version };
      }
      await checkKeyId(keyId, env.wrapped.version, env.wrapped.keyRef);
      const entry = await keks.lookup(env.wrapped.text, env.wrapped.text, unwrapKek(env.wrapped.text, ctx.uid));
      if (entry.version !== env.wrapped.version) throw new KeyhavenError('integrity', 'the wrapped KEK\'s version does not match the server\'s answer');
      return { plaintext: openWithKek(entry.kek, env), keyId: keyId ?? keyIdForLog(entry.version), keyName, keyVersion: entry.version };
    },
    async close() {
      keks.forget();
      await client.close();
    },
  };
}
