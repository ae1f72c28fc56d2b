/** Unwrapped local KEKs by their wrapped form, least recently used first out; evicted keys are zeroed. */
export interface CachedKek {
  readonly kek: Buffer;
  /** The server key version that wrapped it. */
  readonly version: number;
}

/** E: what a provider keeps beside each KEK (the aws-kms provider adds the key ARN). */
export class KekCache<E extends CachedKek = CachedKek> {
  private readonly map = new Map<string, E>();

  constructor(private readonly capacity: number) {}

  get size(): number {
    return this.map.size;
  }

  get(wrapped: string): E | undefined {
    const hit = this.map.get(wrapped);
    if (hit) {
      // Map keeps insertion order: re-inserting marks it most recently used.
      this.map.delete(wrapped);
      this.map.set(wrapped, hit);
    }
    return hit;
  }

  set(wrapped: string, entry: E): void {
    const old = this.map.get(wrapped);
    if (old && old.kek !== entry.kek) old.kek.fill(0);
    this.map.delete(wrapped);
    this.map.set(wrapped, entry);
    while (this.map.size > this.capacity) {
      const [k, v] = this.map.entries().next().value as [string, E];
      this.map.delete(k);
      v.kek.fill(0);
    }
  }

  /** Drops (and zeroes) every entry the predicate selects, or all. */
  drop(which: (e: E) => boolean = () => true, keep?: Buffer): number {
    let n = 0;
    for (const [k, v] of this.map) {
      if (!which(v)) continue;
      this.map.delete(k);
      if (v.kek !== keep) v.kek.fill(0);
      n += 1;
    }
    return n;
  }
}
