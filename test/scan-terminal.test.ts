import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { ETCD_AVAILABLE, startEtcd } from './etcd.js';
import { cleanCliEnv, runCli } from './helpers.js';
import { requireDependency } from './require.js';

// Someone who can write to etcd chooses every byte of the keys and values the
// scan and recover print: provider names, key names, etcd keys. Printed as
// they are, control characters reach the operator's terminal (escape
// sequences that rewrite the screen, set the title, hide lines of the report).

const ESC = '\u001b';

describe('keyhaven k8s scan output', () => {
  it('never passes control characters from etcd to the terminal', async (t: TestContext) => {
    if (!requireDependency(t, ETCD_AVAILABLE, 'etcd-server and etcd-client (apt-get install etcd-server etcd-client)')) return;
    const etcd = await startEtcd(t);
    // A KMS v1 value with a provider name holding an escape sequence (it does not parse further).
    await etcd.put('/registry/secrets/default/a', Buffer.from(`k8s:enc:kms:v1:${ESC}[2J${ESC}]0;all clear\u0007:xx`));
    // A plaintext Secret under a key that clears the line it is printed on.
    await etcd.put(`/registry/secrets/default/b\r${ESC}[2K`, Buffer.from('{"kind":"Secret","apiVersion":"v1"}'));
    const r = await runCli(['k8s', 'scan', '--etcd', etcd.endpoint], { env: cleanCliEnv() });
    assert.ok(r.stdout.length > 0, r.stderr);
    assert.ok(!r.stdout.includes(ESC) && !r.stdout.includes('\r') && !r.stdout.includes('\u0007'), `control characters from etcd were printed: ${JSON.stringify(r.stdout)}`);
  });
});
