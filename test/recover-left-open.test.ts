import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { stringify as toYaml } from 'yaml';
import { cleanCliEnv, runCli } from './helpers.js';
import { ownedTempDir } from './reaper.js';
import { api, setupCast, startServerProcess, type Cast, type ServerProcess } from './server-helpers.js';

// keyhaven k8s recover opens its recovery on the key server before it looks
// at the backup or the output folder. A run that then fails (a mistyped
// snapshot path, a non-empty --out) must not leave the break-glass
// credential able to decrypt for the rest of the hour.

let srv: ServerProcess;
let cast: Cast;

describe('a recover run that fails before decrypting anything', () => {
  before(async () => {
    srv = await startServerProcess();
    cast = await setupCast(srv.url);
  });

  after(async () => {
    await srv?.stop();
  });

  it('leaves no recovery open', async (t) => {
    const dir = ownedTempDir('kh-recover-open-', t);
    const made = await api(srv.url, 'POST', '/v1/apps', { token: cast.admin, body: { name: 'breakglass', breakGlass: true } });
    assert.equal(made.status, 200, made.text);
    const grant = await api(srv.url, 'PUT', `/v1/apps/breakglass/grants/${cast.key}`, { token: cast.keyAdmin, body: { operations: ['decrypt'] } });
    assert.equal(grant.status, 200, grant.text);
    writeFileSync(join(dir, 'bg.key'), made.body.apiKey, { mode: 0o600 });
    const yaml = join(dir, 'bg.yaml');
    writeFileSync(yaml, toYaml({ provider: { type: 'keyhaven', servers: [srv.url], key: cast.key, cluster: 'prod', apiKeyFile: join(dir, 'bg.key'), allowInsecureHttp: true } }), { mode: 0o600 });

    const used = join(dir, 'out');
    mkdirSync(used);
    writeFileSync(join(used, 'already-here'), 'x');
    for (const [what, args] of [
      ['a snapshot that does not exist', ['--snapshot', join(dir, 'no-such.db'), '--out', join(dir, 'out2')]],
      ['a non-empty --out', ['--snapshot', join(dir, 'no-such.db'), '--out', used]],
    ] as const) {
      const r = await runCli(['k8s', 'recover', ...args, '--plugin-config', yaml, '--reason', 'INC-1: restore'], { env: cleanCliEnv() });
      assert.notEqual(r.code, 0, `${what}: ${r.stdout}`);
    }
    const list = await api(srv.url, 'GET', '/v1/recoveries', { token: cast.auditor });
    assert.equal(list.status, 200, list.text);
    const open = list.body.recoveries.filter((x: { app: string; state: string }) => x.app === 'breakglass' && x.state === 'open');
    assert.deepEqual(open.map((x: { id: string }) => x.id), [], 'failed runs left recoveries open: the break-glass key decrypts with them for an hour');
  });
});
