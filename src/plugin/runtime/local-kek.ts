import { randomBytes } from 'node:crypto';
import { KeyhavenError } from '../../errors.js';
import { systemClock, type Clock } from './deadline.js';
import { KekCache, type CachedKek } from './kek-cache.js';

export interface LocalKekPolicy {
  readonly maxUses: number;
  readonly maxAgeMs: number;
  readonly cacheSize: number;
}

export interface LocalKekEvents {
  /** hit: cached; miss: asked the KMS; joined: waited for an unwrap already in flight. */
  readonly onKekLookup?: (result: 'hit' | 'miss' | 'joined') => void;
  readonly onKekCacheSize?: (entries: number) => void;
  readonly onKekRotated?: (event: { keyId: string; reason: string }) => void;
}

/** The KEK Encrypt seals with; X is what a provider keeps beside it (the key version, the key ARN). */
export type CurrentKek<X> = X & {
  readonly kek: Buffer;
  /** The KMS-wrapped form, carried in the annotation or inside the ciphertext. */
  readonly wrapped: Buffer;
  /** The key_id Encrypt reports with it. */
  readonly keyId: string;
  readonly createdAt: number;
  uses: number;
};

/** What a provider's wrap step returns for a new KEK. */
export interface WrappedKek<E extends CachedKek, X> {
  readonly wrapped: Buffer;
  readonly keyId: string;
  /** The cache key Decrypt will look the KEK up by (the wrapped form as text). */
  readonly cacheKey: string;
  /** The cache entry, without the KEK (added here). */
  readonly entry: Omit<E, 'kek'>;
  readonly extra: X;
}

/**
 * The local-KEK lifecycle, shared by the providers that offer one (keyhaven,
 * aws-kms): a random KEK wrapped once by the KMS seals the apiserver's seeds;
 * a new one when the provider says the key changed, after maxUses seals or
 * after maxAge; unwrapped KEKs cached (least recently used out, zeroed);
 * concurrent unwraps of one wrapped KEK share one KMS call (the apiserver's
 * restart storm); and all of it dropped when access to the key is revoked —
 * an unwrap still in flight then answers its callers but keeps nothing.
 */
export class LocalKekLifecycle<E extends CachedKek = CachedKek, X = object> {
  private readonly cache: KekCache<E>;
  private readonly unwrapping = new Map<string, Promise<E>>();
  private readonly clock: Clock;
  private active: CurrentKek<X> | undefined;
  // Bumped when cached KEKs are dropped, so an unwrap still in flight does not put one back.
  private generation = 0;

  constructor(
    private readonly policy: LocalKekPolicy,
    private readonly events: LocalKekEvents = {},
    clock?: Clock,
  ) {
    this.cache = new KekCache<E>(policy.cacheSize);
    this.clock = clock ?? systemClock;
  }

  get current(): CurrentKek<X> | undefined {
    return this.active;
  }

  get cachedCount(): number {
    return this.cache.size;
  }

  /** Why a new KEK is needed now, if it is: none yet, the provider's reason (the key changed), maxUses, maxAge. */
  due(changed?: (current: CurrentKek<X>) => string | undefined): string | undefined {
    const c = this.active;
    if (!c) return 'first';
    const why = changed?.(c);
    if (why) return why;
    if (c.uses >= this.policy.maxUses) return 'maxUses reached';
    if (this.clock() - c.createdAt >= this.policy.maxAgeMs) return 'maxAge reached';
    return undefined;
  }

  /**
   * Makes a new KEK: `wrap` has the KMS wrap it (and checks the answer). On
   * success it becomes the current KEK and is cached for Decrypt; on failure
   * the KEK is zeroed and the current one stays.
   */
  async rotate(reason: string, wrap: (kek: Buffer) => Promise<WrappedKek<E, X>>): Promise<CurrentKek<X>> {
    const gen = this.generation;
    const kek = randomBytes(32);
    let w: WrappedKek<E, X>;
    try {
      w = await wrap(kek);
    } catch (e) {
      kek.fill(0);
      throw e;
    }
    // forget() ran while the KMS wrapped it (access withdrawn): a KEK made under
    // the old access must not become current afterwards.
    if (gen !== this.generation) {
      kek.fill(0);
      throw new KeyhavenError('unavailable', 'access to the key was withdrawn while a new KEK was being made');
    }
    this.cache.set(w.cacheKey, { ...w.entry, kek: Buffer.from(kek) } as E);
    this.reportSize();
    this.events.onKekRotated?.({ keyId: w.keyId, reason });
    const next = { ...w.extra, kek, wrapped: w.wrapped, keyId: w.keyId, createdAt: this.clock(), uses: 0 } as CurrentKek<X>;
    this.active?.kek.fill(0);
    this.active = next;
    return next;
  }

  /** The KEK for one Encrypt, counted against maxUses; `missing` is the error when there is none yet. */
  use(missing: () => KeyhavenError): CurrentKek<X> {
    const c = this.active;
    if (!c) throw missing();
    c.uses += 1;
    return c;
  }

  /**
   * The unwrapped KEK of a wrapped one: from the cache, or from `unwrap` (one
   * call for all concurrent callers with the same joinKey).
   */
  async lookup(cacheKey: string, joinKey: string, unwrap: () => Promise<E>): Promise<E> {
    const hit = this.cache.get(cacheKey);
    if (hit) {
      this.events.onKekLookup?.('hit');
      return hit;
    }
    const pending = this.unwrapping.get(joinKey);
    if (pending) {
      this.events.onKekLookup?.('joined');
      return pending;
    }
    this.events.onKekLookup?.('miss');
    const gen = this.generation;
    const p = (async () => {
      const entry = await unwrap();
      // Revoked (or closed) meanwhile: answer this call, keep nothing.
      if (gen === this.generation) {
        this.cache.set(cacheKey, entry);
        this.reportSize();
      }
      return entry;
    })().finally(() => this.unwrapping.delete(joinKey));
    this.unwrapping.set(joinKey, p);
    return p;
  }

  /** Drops (and zeroes) the cached KEKs the predicate selects, e.g. those of retired key versions. */
  dropWhere(which: (e: E) => boolean): void {
    if (this.cache.drop(which)) this.reportSize();
  }

  /** Access to the key was revoked, or the provider closes: every KEK goes, and unwraps in flight keep nothing. */
  forget(): void {
    this.generation += 1;
    this.cache.drop();
    this.active?.kek.fill(0);
    this.active = undefined;
    this.reportSize();
  }

  private reportSize(): void {
    this.events.onKekCacheSize?.(this.cache.size);
  }
}
