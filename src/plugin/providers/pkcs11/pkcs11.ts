import { randomBytes, timingSafeEqual } from 'node:crypto';
import type { Pkcs11ProviderConfig } from '../../../config/providers/pkcs11.js';
import { readSecret } from '../../../config/secret-file.js';
import { KeyhavenError, type ErrorCode } from '../../../errors.js';
import { acquireModule, releaseModule } from '../../../hsm/pkcs11-token.js';
import type { KmsProvider, ProviderDecryptResult } from '../../provider.js';
import { systemClock, type Clock } from '../../runtime/deadline.js';
import { createProviderRuntime, type KeyBackend } from '../../runtime/key-backend.js';
import type { ProviderBuildContext } from '../context.js';
import { createTokenConnection, decryptInToken, encryptInToken, type Conn, type TokenConnectionOptions, type TokenKey } from './pkcs11-connection.js';
import { MAX_PLAINTEXT_BYTES, parseEnvelope } from './pkcs11-envelope.js';
import { classify, fail, isAmbiguous } from './pkcs11-errors.js';

/**
 * The pkcs11 provider: seeds are encrypted with CKM_AES_GCM inside an HSM
 * token, under an existing AES-256 key that never leaves it. The plugin never
 * creates, exports or deletes keys. The token connection (sessions, login,
 * keys by label) is pkcs11-connection.ts; Status, the Encrypt gate and
 * deadlines are the provider runtime's.
 */

export interface Pkcs11ProviderOptions extends Omit<TokenConnectionOptions, 'now'> {
  /** Encrypt is refused when the token has not passed a probe for this long while probes fail (the Status grace period). */
  readonly graceMs: number;
  /** The deadline of one probe, Encrypt or Decrypt: a second try (a new connection, a new session) starts only before it. */
  readonly timeoutMs?: number;
  /** The clock of the grace period and of deadlines. */
  readonly now?: Clock;
}

// PKCS#11 keys have no versions: the key_id names the key itself.
const KEY_VERSION = 1;
// pkcs11js calls are synchronous, so the deadline cannot cut one short; it
// bounds the second tries. Within the apiserver's 3 s, as the other providers' `timeout`.
const TIMEOUT_MS = 2000;

// Codes that say the configuration, the key or the PIN is wrong: a health probe
// failing with one of them is reported as it is. Any other probe failure is
// the token's fault, most likely a passing one: unavailable, which rides the
// Status grace period.
const SETUP_PROBLEMS: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['config_invalid', 'permission_denied', 'unauthenticated', 'not_found']);

function bounded(s: string): string {
  return s.length <= 200 ? s : `${s.slice(0, 200)}...(${s.length} chars)`;
}

export function createPkcs11Provider(opts: Pkcs11ProviderOptions): KmsProvider {
  const now = opts.now ?? systemClock;
  return createProviderRuntime(createPkcs11Backend({ ...opts, now }), { graceMs: opts.graceMs, timeoutMs: opts.timeoutMs ?? TIMEOUT_MS, clock: now });
}

/**
 * The token as a KeyBackend. Its state is nothing: the key has no versions,
 * and Encrypt uses the key under keyLabel as last read (each probe re-reads
 * it), as before the runtime.
 */
function createPkcs11Backend(opts: TokenConnectionOptions): KeyBackend<void> {
  const token = createTokenConnection(opts);

  function unknownKey(c: Conn, what: string): KeyhavenError {
    const note = c.keys.unusable.length > 0 ? ` (previousKeyLabels not usable now: ${c.keys.unusable.map((u) => `"${u.label}"`).join(', ')})` : '';
    return fail('unknown_key_id', `${what} is not the key_id of keyLabel "${opts.keyLabel}" or of previousKeyLabels on token ${c.token}${note}`, 'operation');
  }

  return {
    kind: 'pkcs11',
    service: 'the HSM token',
    maxPlaintextBytes: MAX_PLAINTEXT_BYTES,

    async probe(deadlineAt) {
      const keyId = token.run((c, s, fresh) => {
        if (!fresh) token.recheck(c, s);
        const k = c.keys.current;
        const probe = randomBytes(32);
        try {
          const back = decryptInToken(c, s, k, parseEnvelope(encryptInToken(c, s, k, probe)));
          const same = back.length === probe.length && timingSafeEqual(back, probe);
          back.fill(0);
          if (!same) throw fail('integrity', `token ${c.token} did not give back the value it encrypted with key "${k.label}"`, 'session');
        } catch (e) {
          const err = classify(e, `token ${c.token} failed the health probe`);
          if (SETUP_PROBLEMS.has(err.code)) throw err;
          // The probe is the token's own fresh ciphertext: failing to open it is a
          // token fault (a network HSM's blip), not corrupted data. Reported as an
          // outage, which rides the grace period, and the connection is made anew.
          throw fail('unavailable', `token ${c.token} failed the health probe (an encrypt and decrypt of its own fresh ciphertext with key "${k.label}"): ${err.message}; connecting again on the next call`, 'connection', e);
        }
        return k.keyId;
      }, deadlineAt);
      return { keyId, state: undefined };
    },

    async wrap(plaintext, _state, { deadlineAt }) {
      if (plaintext.length === 0) throw new KeyhavenError('invalid_argument', 'plaintext is empty');
      if (plaintext.length > MAX_PLAINTEXT_BYTES) throw new KeyhavenError('invalid_argument', `plaintext is ${plaintext.length} bytes; the pkcs11 provider takes at most ${MAX_PLAINTEXT_BYTES}`);
      return token.run((c, s) => {
        const k = c.keys.current;
        return { ciphertext: encryptInToken(c, s, k, plaintext), keyId: k.keyId, keyName: k.label, keyVersion: KEY_VERSION };
      }, deadlineAt);
    },

    async unwrap(ciphertext, keyId, _annotations, { deadlineAt }) {
      const env = parseEnvelope(ciphertext);
      const attempt = (c: Conn, s: Buffer): ProviderDecryptResult => {
        let k: TokenKey | undefined;
        if (keyId !== undefined) {
          k = c.keys.byKeyId.get(keyId);
          if (!k) throw unknownKey(c, `key_id ${bounded(keyId)}`);
          // The header is authenticated by the token too; checking it first refuses a
          // ciphertext paired with another key's key_id without a call to the token.
          if (!k.ref.equals(env.ref)) throw fail('invalid_argument', `ciphertext does not belong to key_id ${keyId}: its header names another key`, 'operation');
        } else {
          k = c.keys.byRef.get(env.ref.toString('hex'));
          if (!k) throw unknownKey(c, 'the key named in the ciphertext header');
        }
        return { plaintext: decryptInToken(c, s, k, env), keyId: k.keyId, keyName: k.label, keyVersion: KEY_VERSION };
      };
      try {
        return token.run(attempt, deadlineAt);
      } catch (e) {
        // CKR_GENERAL_ERROR is both SoftHSM2's failed tag check and a token's passing
        // fault: a second try on a new session tells them apart (altered data fails again).
        if (!isAmbiguous(e)) throw e;
        if (opts.now() >= deadlineAt) {
          throw new KeyhavenError('unavailable', `${(e as KeyhavenError).message}; or a passing token fault: the deadline passed before a second try on a new session could tell`, { cause: e });
        }
        return token.run(attempt, deadlineAt, true);
      }
    },

    async close() {
      token.close();
    },
  };
}

export async function buildPkcs11Provider(p: Pkcs11ProviderConfig, ctx: ProviderBuildContext): Promise<KmsProvider> {
  const pin = readSecret({ file: p.pinFile, env: p.pinEnv }, { what: 'the HSM PIN file', envField: 'provider.pinEnv' });
  // A module that cannot load is a configuration to fix: refuse to start. The
  // token itself is only reached by the first Status, so that a token that is
  // away (or a wrong PIN) fails Status with a precise reason instead.
  releaseModule(acquireModule(p.module, 'the pkcs11 provider'));
  return createPkcs11Provider({ module: p.module, tokenLabel: p.tokenLabel, slot: p.slot, pin, keyLabel: p.keyLabel, previousKeyLabels: p.previousKeyLabels, logger: ctx.logger, graceMs: ctx.cfg.status.gracePeriod });
}
