// Key-range arithmetic on raw bytes. etcd keys are bytes; paging must work for
// any of them, so nothing here goes through a string.

/** etcd's "from this key on" range end (clientv3's noPrefixEnd). */
const FROM_KEY = Buffer.from([0]);

/**
 * The range end that selects every key starting with `prefix`: the prefix with
 * its last byte below 0xff incremented and what follows dropped, as
 * clientv3.GetPrefixRangeEnd does. A prefix of only 0xff bytes (or an empty
 * one) has no such key, so the range runs to the end of the keyspace.
 */
export function prefixRangeEnd(prefix: Buffer): Buffer {
  for (let i = prefix.length - 1; i >= 0; i--) {
    const b = prefix[i]!;
    if (b < 0xff) {
      const end = Buffer.from(prefix.subarray(0, i + 1));
      end[i] = b + 1;
      return end;
    }
  }
  return FROM_KEY;
}

/** The range start for a prefix: an empty key means "every key", which etcd spells "\0" with range end "\0". */
export function prefixRangeStart(prefix: Buffer): Buffer {
  return prefix.length === 0 ? FROM_KEY : prefix;
}

/** The smallest key after `key`: where the next page starts. */
export function keyAfter(key: Buffer): Buffer {
  return Buffer.concat([key, FROM_KEY]);
}
