import assert from 'node:assert/strict';
import { utimesSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { openSnapshot } from '../src/k8s/etcd/index.js';
import { scanEtcd } from '../src/k8s/scan.js';
import { ETCD_AVAILABLE, startEtcd } from './etcd.js';
import { ownedTempDir } from './reaper.js';
import { requireDependency } from './require.js';

// The retire check trusts a cluster's latest scan only when it was made
// after the cluster moved off a version. A scan of a snapshot shows etcd as
// it was when the snapshot was saved, not when the scan ran: dated "now", a
// day-old snapshot passes for a scan made after the move and hides the
// objects written under the old version in between.

describe('a scan of a snapshot', () => {
  it('is dated no later than the snapshot, not when the scan ran', async (t: TestContext) => {
    if (!requireDependency(t, ETCD_AVAILABLE, 'etcd-server and etcd-client (apt-get install etcd-server etcd-client)')) return;
    const dir = ownedTempDir('kh-snapdate-', t);
    const etcd = await startEtcd(t);
    await etcd.put('/registry/secrets/default/db', Buffer.from('x'));
    const file = join(dir, 'yesterday.db');
    await etcd.snapshot(file);
    await etcd.stop();
    const saved = new Date(Date.now() - 86_400_000);
    utimesSync(file, saved, saved);

    const src = await openSnapshot({ file, workDir: dir });
    try {
      const r = await scanEtcd(src, { prefix: '/registry' });
      assert.equal(r.objects, 1);
      assert.ok(Date.parse(r.scannedAt) <= saved.getTime(), `a day-old snapshot's scan is dated ${r.scannedAt}, after the snapshot was saved (${saved.toISOString()})`);
    } finally {
      await src.close();
    }
  });
});
