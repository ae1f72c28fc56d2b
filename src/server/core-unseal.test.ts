import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { shamirSeal } from '../seal/shamir.js';
import { openStore } from '../storage/open-store.js';
import type { Store } from '../storage/store.js';
import { code } from '../../test/expect-error.js';
import { ownedTempDir, removeOwnedDir } from '../../test/reaper.js';
import { openServerCore, type ServerCore } from './core.js';

// Shamir unseal progress, in-process on a real SQLite file: what an operator
// entering shares one at a time is told, and what the server keeps.

describe('server core: shamir unseal progress', () => {
  let dir = '';
  let store: Store;
  let core: ServerCore;
  let shares: readonly string[] = [];

  before(async () => {
    dir = ownedTempDir('kh-core-unseal-');
    store = await openStore({ sqlite: { path: join(dir, 'keyhaven.db'), create: true } });
    core = await openServerCore({ store, seal: shamirSeal(), auditFsync: false });
    shares = (await core.init({ shares: 5, threshold: 3 })).shares ?? [];
    assert.equal(shares.length, 5);
  });
  after(async () => {
    await core?.close();
    await store?.close();
    removeOwnedDir(dir);
  });

  it('a share entered twice is refused with "this share was already entered", and the progress made is kept', async () => {
    assert.equal((await core.unseal({ share: shares[0]! })).progress, 1);
    await assert.rejects(core.unseal({ share: shares[0]! }), code('invalid_argument', /^this share was already entered \(1 of 3 distinct shares in; progress kept\)/));
    // The same share with pasted whitespace is the same share.
    await assert.rejects(core.unseal({ share: ` ${shares[0]!}\n` }), code('invalid_argument', /already entered/));
    assert.equal((await core.unseal({ share: shares[3]! })).progress, 2);
    const dup = await core.unseal({ share: shares[3]! }).then(() => undefined, (e: unknown) => e as Error);
    assert.match(String(dup?.message), /already entered \(2 of 3/);
    assert.ok(!dup!.message.includes(shares[3]!.slice(9)), 'the error does not echo the share');
    const st = core.status();
    assert.equal(st.sealed, true);
    assert.equal(st.progress, 2);
    const done = await core.unseal({ share: shares[4]! });
    assert.equal(done.sealed, false);
  });

  it('after a seal, the shares of the last unseal may be entered again', async () => {
    await core.seal();
    assert.equal((await core.unseal({ share: shares[0]! })).progress, 1);
    assert.equal((await core.unseal({ share: shares[3]! })).progress, 2);
    assert.equal((await core.unseal({ share: shares[1]! })).sealed, false);
  });
});
