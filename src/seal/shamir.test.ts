import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { KeyhavenError, type ErrorCode } from '../errors.js';
import { MAX_SHARES, SHARE_PREFIX, checkShare, parseShare, shamirSeal } from './shamir.js';
import type { SealRecord } from './seal.js';

/** The error has the code and matches the problem, and its message holds none of the given secrets. */
function failsWith(code: ErrorCode, problem: RegExp, secrets: readonly (string | Buffer)[] = []): (e: unknown) => true {
  return (e: unknown) => {
    assert.ok(e instanceof KeyhavenError, `expected a KeyhavenError, got ${String(e)}`);
    assert.equal(e.code, code, `code: ${e.message}`);
    assert.match(e.message, problem);
    for (const s of secrets) assertNoLeak(e.message, s);
    return true;
  };
}

function assertNoLeak(text: string, secret: string | Buffer): void {
  const forms =
    typeof secret === 'string'
      ? [secret, secret.slice(SHARE_PREFIX.length), secret.slice(SHARE_PREFIX.length, SHARE_PREFIX.length + 10)].filter((f) => f.length >= 8)
      : [secret.toString('hex'), secret.toString('base64'), secret.toString('base64url'), secret.subarray(0, 6).toString('hex'), secret.subarray(0, 6).toString('base64url')];
  for (const f of forms) assert.ok(!text.includes(f), `leaks secret bytes (${f}): ${text}`);
}

/** Every k-element subset of xs. */
function subsets<T>(xs: readonly T[], k: number): T[][] {
  if (k === 0) return [[]];
  if (xs.length < k) return [];
  const [head, ...rest] = xs;
  return [...subsets(rest, k - 1).map((s) => [head as T, ...s]), ...subsets(rest, k)];
}

/** Re-encodes share bytes in the documented text format (to build well-formed but wrong shares). */
function encode(bytes: Buffer): string {
  const sum = createHash('sha256').update('keyhaven share checksum v1\0').update(bytes).digest().subarray(0, 4);
  return SHARE_PREFIX + Buffer.concat([bytes, sum]).toString('base64url');
}

async function init(n: number, m: number) {
  const res = await shamirSeal().initialize({ shares: n, threshold: m });
  assert.ok(res.shares);
  // The server stores the record as JSON: work from what it would read back.
  return { rootKey: res.rootKey, record: JSON.parse(JSON.stringify(res.record)) as SealRecord, shares: [...res.shares] };
}

describe('seal/shamir: initialize', () => {
  it('is a seal of kind shamir that needs shares', () => {
    const seal = shamirSeal();
    assert.equal(seal.kind, 'shamir');
    assert.equal(seal.needsShares, true);
  });

  it('N=5, M=3: five distinct readable shares and a record with their digests and no secrets', async () => {
    const res = await shamirSeal().initialize({ shares: 5, threshold: 3 });
    assert.equal(res.rootKey.length, 32);
    assert.ok(res.shares);
    assert.equal(res.shares.length, 5);
    assert.equal(new Set(res.shares).size, 5);
    for (const s of res.shares) assert.match(s, /^khshare1-[A-Za-z0-9_-]{50}$/);
    const r = res.record as SealRecord & { shares: number; threshold: number; digests: string[] };
    assert.deepEqual(Object.keys(r).sort(), ['digests', 'kind', 'shares', 'threshold']);
    assert.equal(r.kind, 'shamir');
    assert.equal(r.shares, 5);
    assert.equal(r.threshold, 3);
    assert.equal(r.digests.length, 5);
    for (const [i, s] of res.shares.entries()) assert.equal(r.digests[i], createHash('sha256').update(parseShare(s)).digest('hex'));
    const json = JSON.stringify(res.record);
    assertNoLeak(json, res.rootKey);
    for (const s of res.shares) assertNoLeak(json, s);
  });

  it('makes a new random key and new shares each time', async () => {
    const a = await init(3, 2);
    const b = await init(3, 2);
    assert.notDeepEqual(a.rootKey, b.rootKey);
    assert.notDeepEqual(a.record, b.record);
  });

  const bad: [string, unknown, unknown][] = [
    ['no parameters', undefined, undefined],
    ['no threshold', 5, undefined],
    ['no shares', undefined, 3],
    ['zero shares', 0, 0],
    ['threshold 0', 3, 0],
    ['threshold 1 with several shares', 2, 1],
    ['threshold above shares', 3, 4],
    ['more than 16 shares', 17, 3],
    ['negative threshold', 5, -1],
    ['fractional shares', 3.5, 2],
    ['NaN threshold', 5, NaN],
    ['shares as a string', '5', 3],
  ];
  for (const [name, n, m] of bad) {
    it(`refuses ${name} (shares ${String(n)}, threshold ${String(m)}) with invalid_argument`, async () => {
      await assert.rejects(
        shamirSeal().initialize({ shares: n, threshold: m } as never),
        failsWith('invalid_argument', n === undefined || m === undefined ? /needs the number of shares \(N\) and the threshold \(M\)/ : /1 <= threshold <= shares <= 16.*threshold >= 2 unless there is a single share/),
      );
    });
  }
});

describe('seal/shamir: unseal', () => {
  it('N=5, M=3: any 3 shares in any order rebuild the key', async () => {
    const { rootKey, record, shares } = await init(5, 3);
    const seal = shamirSeal(); // a fresh instance: as after a restart
    const trios = subsets(shares, 3);
    assert.equal(trios.length, 10);
    for (const trio of trios) {
      assert.deepEqual(await seal.unseal(record, trio), rootKey);
      assert.deepEqual(await seal.unseal(record, [...trio].reverse()), rootKey);
      assert.deepEqual(await seal.unseal(record, [trio[1]!, trio[2]!, trio[0]!]), rootKey);
    }
    assert.deepEqual(await seal.unseal(record, shares.slice(0, 4)), rootKey);
    assert.deepEqual(await seal.unseal(record, shares), rootKey);
  });

  it('accepts shares with surrounding whitespace (a pasted newline)', async () => {
    const { rootKey, record, shares } = await init(3, 2);
    assert.deepEqual(await shamirSeal().unseal(record, [`  ${shares[0]}\n`, `${shares[2]}\r\n`]), rootKey);
  });

  it('refuses 2 of 3 needed shares with failed_precondition saying how many are needed', async () => {
    const { rootKey, record, shares } = await init(5, 3);
    for (const pair of subsets(shares, 2)) {
      await assert.rejects(shamirSeal().unseal(record, pair), failsWith('failed_precondition', /needs 3 distinct valid shares of 5; 2 given/, [rootKey, ...shares]));
    }
  });

  it('refuses no shares at all with failed_precondition', async () => {
    const { record } = await init(3, 2);
    await assert.rejects(shamirSeal().unseal(record), failsWith('failed_precondition', /needs 2 distinct valid shares of 3; 0 given/));
    await assert.rejects(shamirSeal().unseal(record, []), failsWith('failed_precondition', /needs 2 distinct valid shares/));
  });

  it('counts a duplicate share once', async () => {
    const { rootKey, record, shares } = await init(5, 3);
    const [a, b, c] = shares as [string, string, string];
    await assert.rejects(shamirSeal().unseal(record, [a, a, b]), failsWith('failed_precondition', /needs 3 distinct valid shares of 5; 2 given \(duplicates count once\)/));
    await assert.rejects(shamirSeal().unseal(record, [a, `${a}\n`, ` ${a}`]), failsWith('failed_precondition', /1 given/));
    assert.deepEqual(await shamirSeal().unseal(record, [a, b, a, c, b]), rootKey);
  });

  it('refuses a share from another initialization with invalid_argument, even among enough valid ones', async () => {
    const mine = await init(5, 3);
    const other = await init(5, 3);
    const foreign = other.shares[0]!;
    await assert.rejects(
      shamirSeal().unseal(mine.record, [mine.shares[0]!, foreign, mine.shares[1]!, mine.shares[2]!]),
      failsWith('invalid_argument', /share 2 of 4: this share does not belong to this server/, [foreign, mine.rootKey, other.rootKey]),
    );
  });

  it('refuses a corrupted share with invalid_argument, naming its position and not its content', async () => {
    const { rootKey, record, shares } = await init(5, 3);
    const s = shares[1]!;
    // Change one character in the middle of the encoded bytes.
    const at = SHARE_PREFIX.length + 20;
    const typo = s.slice(0, at) + (s[at] === 'A' ? 'B' : 'A') + s.slice(at + 1);
    await assert.rejects(shamirSeal().unseal(record, [shares[0]!, typo, shares[2]!]), failsWith('invalid_argument', /share 2 of 3: the share is damaged \(checksum mismatch\)/, [typo, s, rootKey]));
  });

  it('refuses a well-formed share whose bytes were altered: its digest is not in the record', async () => {
    const { rootKey, record, shares } = await init(3, 2);
    const bytes = parseShare(shares[0]!);
    bytes[3] = bytes[3]! ^ 0x01;
    const forged = encode(bytes);
    assert.doesNotThrow(() => parseShare(forged));
    await assert.rejects(shamirSeal().unseal(record, [forged, shares[1]!]), failsWith('invalid_argument', /share 1 of 2: this share does not belong to this server/, [forged, rootKey]));
  });

  it('N=1, M=1: the single share alone rebuilds the key', async () => {
    const { rootKey, record, shares } = await init(1, 1);
    assert.equal(shares.length, 1);
    assert.deepEqual(await shamirSeal().unseal(record, shares), rootKey);
    await assert.rejects(shamirSeal().unseal(record, []), failsWith('failed_precondition', /needs 1 distinct valid shares of 1; 0 given/));
  });

  it(`N=${MAX_SHARES}: the threshold edges work (M=2 and M=${MAX_SHARES})`, async () => {
    const low = await init(MAX_SHARES, 2);
    assert.deepEqual(await shamirSeal().unseal(low.record, [low.shares[15]!, low.shares[7]!]), low.rootKey);
    const high = await init(MAX_SHARES, MAX_SHARES);
    assert.deepEqual(await shamirSeal().unseal(high.record, [...high.shares].reverse()), high.rootKey);
    await assert.rejects(shamirSeal().unseal(high.record, high.shares.slice(1)), failsWith('failed_precondition', /needs 16 distinct valid shares of 16; 15 given/));
  });

  it('refuses a record of another kind, or a malformed one, with config_invalid', async () => {
    const { record, shares } = await init(3, 2);
    const two = shares.slice(0, 2);
    await assert.rejects(shamirSeal().unseal({ kind: 'keyfile' }, two), failsWith('config_invalid', /kind "keyfile".*configured seal is shamir/));
    const r = record as SealRecord & { digests: string[] };
    const broken: [string, SealRecord, RegExp][] = [
      ['threshold above shares', { ...r, threshold: 4 }, /not a valid pair/],
      ['a digest missing', { ...r, digests: r.digests.slice(1) }, /2 share digests for 3 shares/],
      ['a digest not hex', { ...r, digests: [...r.digests.slice(1), 'zz'] }, /SHA-256 hex/],
      ['a digest twice', { ...r, digests: [r.digests[0]!, r.digests[0]!, r.digests[1]!] }, /digest twice/],
      ['no digests', { kind: 'shamir', shares: 3, threshold: 2 }, /SHA-256 hex/],
    ];
    for (const [name, rec, problem] of broken) {
      await assert.rejects(shamirSeal().unseal(rec, two), failsWith('config_invalid', problem), name);
    }
  });
});

describe('seal/shamir: parseShare and checkShare', () => {
  it('checkShare returns each share\'s position in the record', async () => {
    const { record, shares } = await init(5, 3);
    for (const [i, s] of shares.entries()) {
      assert.equal(checkShare(record, s), i);
      assert.equal(checkShare(record, parseShare(s)), i);
    }
  });

  it('checkShare refuses a share of another server with invalid_argument', async () => {
    const mine = await init(3, 2);
    const other = await init(3, 2);
    assert.throws(() => checkShare(mine.record, other.shares[2]!), failsWith('invalid_argument', /^this share does not belong to this server$/, [other.shares[2]!]));
  });

  it('parseShare returns the 33 share bytes', async () => {
    const { shares } = await init(3, 2);
    const b = parseShare(shares[0]!);
    assert.ok(Buffer.isBuffer(b));
    assert.equal(b.length, 33);
    assert.notEqual(b[32], 0, 'x-coordinate is never 0');
  });

  it('parseShare refuses malformed text with precise messages that never echo the share', async () => {
    const { shares } = await init(3, 2);
    const s = shares[0]!;
    const body = s.slice(SHARE_PREFIX.length);
    const cases: [string, string, RegExp][] = [
      ['empty', '', /must start with "khshare1-"/],
      ['no prefix', body, /must start with "khshare1-"/],
      ['another prefix', `share-${body}`, /must start with "khshare1-"/],
      ['an unknown version', `khshare2-${body}`, /format version 2 is not supported/],
      ['standard base64 characters', `${SHARE_PREFIX}${body.slice(0, 20)}+/${body.slice(22)}`, /base64url text.*other characters/],
      ['padding', `${s}==`, /other characters/],
      ['an inner space', `${SHARE_PREFIX}${body.slice(0, 25)} ${body.slice(25)}`, /other characters/],
      ['a truncated share', s.slice(0, -6), /decode to 37 bytes, this one decodes to 33 \(44 characters after the prefix, expected 50\).*copied completely/],
      ['an overlong share', `${s}AAAAAA`, /decode to 37 bytes, this one decodes to 42 \(56 characters/],
      ['an empty body', SHARE_PREFIX, /other characters/],
      ['a swapped pair of characters', `${SHARE_PREFIX}${body.slice(0, 10)}${body[11]}${body[10]}${body.slice(12)}`, /damaged \(checksum mismatch\)/],
    ];
    for (const [name, text, problem] of cases) {
      if (name === 'a swapped pair of characters' && body[10] === body[11]) continue;
      assert.throws(() => parseShare(text), failsWith('invalid_argument', problem, [s, text.length > 20 ? text : '']), name);
    }
  });
});
