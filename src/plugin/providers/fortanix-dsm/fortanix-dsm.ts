import { randomBytes, timingSafeEqual } from 'node:crypto';
import { KeyhavenError } from '../../../errors.js';
import { DSM_UUID, type FortanixDsmProviderConfig } from '../../../config/providers/fortanix-dsm.js';
import { apiKeySource } from '../../key-server-client.js';
import type { KmsProvider } from '../../provider.js';
import type { Clock } from '../../runtime/deadline.js';
import { isTransient } from '../../runtime/error-class.js';
import { createProviderRuntime, type KeyBackend } from '../../runtime/key-backend.js';
import type { ProviderBuildContext } from '../context.js';
import { deadlineOptions, observedClientOptions, readConfigFile, readTlsFiles } from '../http-client-wiring.js';
import { createDsmClient, type DsmClient } from './fortanix-dsm-client.js';
import { dsmAd, dsmKeyId, kidToBytes, packDsmCiphertext, parseDsmCiphertext, type DsmCiphertext } from './fortanix-dsm-format.js';

export interface DsmProviderOptions {
  readonly client: DsmClient;
  /** This cluster's name: bound into every ciphertext's GCM additional data. */
  readonly cluster: string;
  /** Objects Decrypt accepts besides the current one and its links.replaced history (config previousKids). */
  readonly previousKids?: readonly string[];
  /** The security object: by name (the current object of that name: follows rekeys) or by kid (pinned). */
  readonly key: { readonly name: string } | { readonly kid: string };
  /** One health check (key read, encrypt, decrypt) ends within this, so Status answers inside the apiserver's deadline. */
  readonly timeoutMs: number;
  /** Encrypt is refused when DSM has not confirmed the key for this long while checks fail (the Status grace period). */
  readonly staleAfterMs: number;
  /** The clock of the grace period and of deadlines; the client's must be the same. */
  readonly now?: Clock;
  /** The object in use changed (a rekey when following a name), or the pinned one was rekeyed. */
  readonly onKeyEvent?: (event: { kind: 'current' | 'pinned-replaced' | 'history-incomplete'; kid: string; previousKid?: string; replacement?: string; reason?: string }) => void;
}

interface Sobject {
  readonly kid: string;
  readonly name?: string;
  readonly obj_type?: string;
  readonly key_size?: number;
  readonly enabled?: boolean;
  readonly state?: string;
  readonly key_ops?: readonly string[];
  readonly links?: { readonly replacement?: string; readonly replaced?: string };
}

// How far back links.replaced is followed: older objects need previousKids.
const MAX_HISTORY = 100;

// A seed is 32 bytes; 512 keeps every ciphertext far inside the apiserver's 1024 (GCM adds 34 + the IV).
const MAX_PLAINTEXT = 512;

const b64 = (v: unknown, what: string): Buffer => {
  if (typeof v !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(v)) throw new KeyhavenError('unavailable', `DSM answered without a base64 ${what}`);
  return Buffer.from(v, 'base64');
};

function readSobject(v: unknown): Sobject {
  const o = v as Record<string, unknown> | null;
  if (!o || typeof o !== 'object' || typeof o.kid !== 'string') throw new KeyhavenError('unavailable', 'DSM answered a key read with an unexpected shape (no kid)');
  kidToBytes(o.kid);
  return { ...(o as unknown as Sobject), kid: o.kid.toLowerCase() };
}

/** Refuses a security object the plugin must not write with; the reason says what to fix in DSM. */
function checkSobject(o: Sobject, label: string): void {
  if (o.obj_type !== undefined && o.obj_type !== 'AES') throw new KeyhavenError('failed_precondition', `${label} is a ${String(o.obj_type).slice(0, 20)} object; the plugin needs an AES-256 key`);
  if (o.key_size !== undefined && o.key_size !== 256) throw new KeyhavenError('failed_precondition', `${label} is AES-${Number(o.key_size)}; the plugin needs an AES-256 key`);
  if (o.enabled === false) throw new KeyhavenError('key_disabled', `${label} is disabled in DSM`);
  if (typeof o.state === 'string' && o.state !== 'Active') throw new KeyhavenError('key_disabled', `${label} is in state ${o.state.slice(0, 20)}, not Active`);
  if (Array.isArray(o.key_ops)) {
    const missing = ['ENCRYPT', 'DECRYPT'].filter((op) => !o.key_ops!.includes(op));
    if (missing.length) throw new KeyhavenError('failed_precondition', `${label} does not allow ${missing.join(' and ')} (its key_ops)`);
  }
}

/**
 * The key provider backed by Fortanix DSM: each seed is encrypted by DSM with
 * AES-256-GCM under the configured security object; the key_id is `dsm:<kid>`.
 */
export function createFortanixDsmProvider(opts: DsmProviderOptions): KmsProvider {
  return createProviderRuntime(createFortanixDsmBackend(opts), { graceMs: opts.staleAfterMs, timeoutMs: opts.timeoutMs, ...(opts.now ? { clock: opts.now } : {}) });
}

/** DSM as a KeyBackend; its state is the kid of the object a probe confirmed. */
function createFortanixDsmBackend(opts: DsmProviderOptions): KeyBackend<string> {
  const { client } = opts;
  const byName = 'name' in opts.key ? opts.key.name : undefined;
  const pinned = 'kid' in opts.key ? opts.key.kid.toLowerCase() : undefined;
  const label = byName !== undefined ? `DSM key "${byName}"` : `DSM key ${pinned}`;
  const keyName = byName ?? pinned!;
  const ad = (kid: string) => dsmAd(opts.cluster, kid).toString('base64');

  // The objects Decrypt accepts: a key_id DSM would open for this app is not
  // enough (its groups may hold other clusters' or other uses' objects). The
  // configured ones, every object seen as current in this process, and the
  // links.replaced history of the current one, read from DSM.
  const known = new Set<string>((opts.previousKids ?? []).map((k) => k.toLowerCase()));
  if (pinned !== undefined) known.add(pinned);
  // Objects whose whole links.replaced history is in `known`.
  const historyRead = new Set<string>();
  let refreshing: Promise<void> | undefined;

  // The kid last confirmed, for the "current" event.
  let statusKid: string | undefined;
  let warnedReplacement: string | undefined;

  async function currentObject(deadlineAt: number): Promise<Sobject> {
    if (pinned !== undefined) {
      const o = readSobject(await client.request('GET', 'key-read', `/crypto/v1/keys/${pinned}`, undefined, { deadlineAt }));
      if (o.kid !== pinned) throw new KeyhavenError('unavailable', 'DSM answered a key read with another kid');
      return o;
    }
    // DSM keeps names unique in an account; a rekey renames the old object and gives the name to the new one.
    const res = await client.request<unknown>('GET', 'key-read', `/crypto/v1/keys?name=${encodeURIComponent(byName!)}`, undefined, { deadlineAt });
    const list = Array.isArray(res) ? res : Array.isArray((res as { items?: unknown })?.items) ? (res as { items: unknown[] }).items : undefined;
    if (!list) throw new KeyhavenError('unavailable', 'DSM answered the key listing with an unexpected shape');
    const matches = list.map(readSobject).filter((o) => o.name === byName);
    if (matches.length === 0) throw new KeyhavenError('not_found', `${label} does not exist, or this app's groups do not hold it`);
    if (matches.length > 1) throw new KeyhavenError('failed_precondition', `${matches.length} DSM objects are named "${byName}"; configure provider.kid instead`);
    return matches[0]!;
  }

  /** Adds the objects `from` replaced, following links.replaced down to the first one (or one DSM no longer shows this app). */
  async function readHistory(from: Sobject, deadlineAt: number): Promise<void> {
    const chain = [from.kid];
    let o = from;
    for (let hop = 0; hop < MAX_HISTORY && !historyRead.has(o.kid); hop++) {
      const prev = typeof o.links?.replaced === 'string' ? o.links.replaced.toLowerCase() : undefined;
      if (prev === undefined || !DSM_UUID.test(prev) || chain.includes(prev)) break;
      known.add(prev);
      chain.push(prev);
      if (historyRead.has(prev)) break;
      try {
        o = readSobject(await client.request('GET', 'key-read', `/crypto/v1/keys/${prev}`, undefined, { deadlineAt }));
      } catch (e) {
        // Deleted, or out of this app's groups: nothing older can be opened through it either.
        if (e instanceof KeyhavenError && (e.code === 'not_found' || e.code === 'key_destroyed')) break;
        throw e;
      }
      if (o.kid !== prev) throw new KeyhavenError('unavailable', 'DSM answered a key read with another kid');
    }
    for (const k of chain) historyRead.add(k);
  }

  /** Reads the current object and its history again (shared by concurrent callers): another plugin instance may have seen a rekey first. */
  function refreshKnown(deadlineAt: number): Promise<void> {
    refreshing ??= (async () => {
      const o = await currentObject(deadlineAt);
      known.add(o.kid);
      await readHistory(o, deadlineAt);
    })().finally(() => {
      refreshing = undefined;
    });
    return refreshing;
  }

  /** Refuses an object that is not this provider's key (current, earlier, or configured) with unknown_key_id. */
  async function requireKnown(kid: string, what: string, deadlineAt: number): Promise<void> {
    if (known.has(kid)) return;
    let why = '';
    try {
      await refreshKnown(deadlineAt);
    } catch (e) {
      // DSM busy or away: the caller may try again. Anything else: say why the history is unknown.
      if (!(e instanceof KeyhavenError) || isTransient(e.code)) throw e;
      why = ` (the key's history could not be read from DSM: ${e.message})`;
    }
    if (known.has(kid)) return;
    throw new KeyhavenError('unknown_key_id', `${what} names DSM object ${kid}, which is not ${label}, an object it replaced (links.replaced) or one of provider.previousKids${why}`);
  }

  async function encryptWith(kid: string, plaintext: Buffer, callOpts: { uid?: string; deadlineAt?: number }): Promise<Buffer> {
    const res = await client.request<Record<string, unknown>>(
      'POST',
      'encrypt',
      `/crypto/v1/keys/${kid}/encrypt`,
      { alg: 'AES', mode: 'GCM', plain: plaintext.toString('base64'), ad: ad(kid), tag_len: 128 },
      callOpts,
    );
    if (typeof res?.kid === 'string' && res.kid.toLowerCase() !== kid) throw new KeyhavenError('integrity', `DSM encrypted with ${res.kid.slice(0, 40)} when ${kid} was asked for`);
    const cipher = b64(res?.cipher, 'cipher');
    if (cipher.length !== plaintext.length) throw new KeyhavenError('unavailable', 'DSM answered encrypt with a cipher that is not GCM of the plaintext');
    return packDsmCiphertext({ kid, iv: b64(res?.iv, 'iv'), tag: b64(res?.tag, 'tag'), cipher });
  }

  async function decryptWith(c: DsmCiphertext, callOpts: { uid?: string; deadlineAt?: number }): Promise<Buffer> {
    let res: Record<string, unknown>;
    try {
      res = await client.request<Record<string, unknown>>(
        'POST',
        'decrypt',
        `/crypto/v1/keys/${c.kid}/decrypt`,
        { alg: 'AES', mode: 'GCM', cipher: c.cipher.toString('base64'), iv: c.iv.toString('base64'), tag: c.tag.toString('base64'), ad: ad(c.kid) },
        callOpts,
      );
    } catch (e) {
      // The request is built from the ciphertext: a DSM "bad request" means the ciphertext (its tag) does not verify.
      if (e instanceof KeyhavenError && e.code === 'invalid_argument') {
        throw new KeyhavenError('integrity', `ciphertext does not verify under DSM key ${c.kid} for cluster "${opts.cluster}" (altered, or written by another cluster or another DSM client): ${e.message}`);
      }
      throw e;
    }
    const plain = b64(res?.plain, 'plain');
    if (plain.length !== c.cipher.length) throw new KeyhavenError('integrity', 'DSM answered decrypt with a plaintext of the wrong length');
    return plain;
  }

  return {
    kind: 'fortanix-dsm',
    service: 'DSM',
    maxPlaintextBytes: MAX_PLAINTEXT,
    async probe(deadlineAt) {
      const current = await currentObject(deadlineAt);
      checkSobject(current, label);
      const kid = current.kid;
      if (pinned !== undefined && current.links?.replacement && warnedReplacement !== current.links.replacement) {
        warnedReplacement = current.links.replacement;
        opts.onKeyEvent?.({ kind: 'pinned-replaced', kid, replacement: String(current.links.replacement).slice(0, 64) });
      }
      // A real round trip through the same code Encrypt and Decrypt use.
      const probe = randomBytes(32);
      const opened = await decryptWith(parseDsmCiphertext(await encryptWith(kid, probe, { deadlineAt })), { deadlineAt });
      if (!timingSafeEqual(opened, probe)) throw new KeyhavenError('integrity', `${label}: the round trip returned other bytes`);
      if (kid !== statusKid) opts.onKeyEvent?.({ kind: 'current', kid, ...(statusKid ? { previousKid: statusKid } : {}) });
      statusKid = kid;
      known.add(kid);
      if (!historyRead.has(kid)) {
        // After the round trip, so that a long history never costs Status its answer; what is
        // not read now is read at the next check, or when Decrypt meets an unknown kid.
        await readHistory(current, deadlineAt).catch((e: unknown) => {
          opts.onKeyEvent?.({ kind: 'history-incomplete', kid, reason: e instanceof KeyhavenError ? e.message : 'error' });
        });
      }
      return { keyId: dsmKeyId(kid), state: kid };
    },
    // The kid the last good probe confirmed: the apiserver drops a reply with another key_id than Status's.
    async wrap(plaintext, kid, ctx) {
      const ciphertext = await encryptWith(kid, plaintext, { uid: ctx.uid, deadlineAt: ctx.deadlineAt });
      return { ciphertext, keyId: dsmKeyId(kid), keyName, keyVersion: 0 };
    },
    async unwrap(ciphertext, keyId, _annotations, ctx) {
      const c = parseDsmCiphertext(ciphertext);
      if (keyId !== undefined) {
        const kid = keyId.startsWith('dsm:') ? keyId.slice(4) : '';
        if (!DSM_UUID.test(kid)) throw new KeyhavenError('unknown_key_id', `key_id ${keyId.slice(0, 80)} was not issued by the fortanix-dsm provider`);
        await requireKnown(kid, `key_id ${keyId}`, ctx.deadlineAt);
        if (kid !== c.kid) throw new KeyhavenError('invalid_argument', `ciphertext does not belong to key_id ${keyId}`);
      } else {
        await requireKnown(c.kid, 'the ciphertext', ctx.deadlineAt);
      }
      const plaintext = await decryptWith(c, { uid: ctx.uid, deadlineAt: ctx.deadlineAt });
      return { plaintext, keyId: keyId ?? dsmKeyId(c.kid), keyName, keyVersion: 0 };
    },
    async close() {
      await client.close();
    },
  };
}

/** A DSM API key is base64 of "app-id:secret"; anything else is refused at start with the reason, never the value. */
export function checkDsmApiKey(key: string, where: string): void {
  const text = /^[A-Za-z0-9+/]+={0,2}$/.test(key) ? Buffer.from(key, 'base64').toString('utf8') : '';
  if (!/^[^:\s]+:\S+$/.test(text)) throw new KeyhavenError('config_invalid', `${where} does not hold a DSM API key (base64 of "app-id:secret", as the DSM console shows it)`);
}

export async function buildFortanixDsmProvider(p: FortanixDsmProviderConfig, ctx: ProviderBuildContext): Promise<KmsProvider> {
  const { cfg, logger } = ctx;
  const where = p.apiKeyFile ? `API key file ${p.apiKeyFile}` : `environment variable ${p.apiKeyEnv}`;
  const source = apiKeySource(p.apiKeyFile ? { file: p.apiKeyFile } : { env: p.apiKeyEnv! }, (f) => readConfigFile(f, 'API key file', true));
  const apiKey = (reload: boolean) => {
    const k = source(reload);
    checkDsmApiKey(k, where);
    return k;
  };
  apiKey(false);
  const tls = readTlsFiles(p.tls);
  const client = createDsmClient({
    endpoints: p.endpoints,
    tls,
    apiKey,
    ...deadlineOptions(p),
    ...observedClientOptions(ctx, p.endpoints, { up: 'DSM endpoint answers again', down: 'DSM endpoint failing; trying the others first' }),
    onSession: ({ expiresInS, renewed }) => logger.debug({ expiresInS }, renewed ? 'DSM session renewed' : 'DSM session opened'),
  });
  return createFortanixDsmProvider({
    client,
    cluster: p.cluster,
    previousKids: p.previousKids,
    key: p.keyName !== undefined ? { name: p.keyName } : { kid: p.kid! },
    timeoutMs: p.timeout,
    staleAfterMs: cfg.status.gracePeriod,
    onKeyEvent: (e) => {
      if (e.kind === 'history-incomplete') logger.warn({ kid: e.kid, reason: e.reason }, 'cannot read the DSM objects this one replaced (links.replaced) now; trying again later');
      else if (e.kind === 'pinned-replaced') logger.warn({ kid: e.kid, replacement: e.replacement }, 'the configured DSM kid has been rekeyed; the plugin keeps using it (configure provider.keyName to follow rekeys)');
      else if (e.previousKid) logger.info({ kid: e.kid, previousKid: e.previousKid, keyName: p.keyName }, 'DSM security object changed (rekey); new writes use the new kid, old ones still decrypt');
      else logger.info({ kid: e.kid, keyName: p.keyName }, 'DSM security object in use');
    },
  });
}
