import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ownedTempDir, spawnOwned } from './reaper.js';
import { requireDependency } from './require.js';

// Every unit in deploy/ (and its drop-ins) through `systemd-analyze verify`,
// which loads them as systemd would and reports unknown or misspelled
// directives, bad values and a missing ExecStart binary. The binary is
// /usr/local/bin/keyhaven on a node; here each unit is checked in a temp
// copy that starts this checkout's bin/keyhaven instead.

const ROOT = resolve(fileURLToPath(new URL('../../', import.meta.url)));
const DEPLOY = join(ROOT, 'deploy');
const BIN = join(ROOT, 'bin', 'keyhaven');
const INSTALLED_BIN = '/usr/local/bin/keyhaven';

const ANALYZE_AVAILABLE = spawnSync('systemd-analyze', ['--version'], { stdio: 'ignore' }).status === 0;
const WHY = 'systemd-analyze (Debian package systemd)';

const UNITS = readdirSync(DEPLOY).filter((f) => f.endsWith('.service')).sort();

interface Run {
  code: number;
  output: string;
}

function analyze(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((res, rej) => {
    const child = spawnOwned('systemd-analyze', args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (output += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (output += d));
    child.on('error', rej);
    child.on('close', (code) => res({ code: code ?? -1, output }));
  });
}

/**
 * A copy of `unit` (with its `<unit>.d/` drop-ins when `dropIns`) in a temp
 * folder, ExecStart pointing at this checkout's binary. `verify` reads
 * drop-ins from the unit file's own folder. Returns the copied unit's path.
 */
function stage(t: TestContext, unit: string, dropIns: boolean, edit: (text: string) => string = (s) => s): string {
  const dir = ownedTempDir('kh-units-', t);
  const text = readFileSync(join(DEPLOY, unit), 'utf8');
  assert.ok(text.includes(`ExecStart=${INSTALLED_BIN} `), `${unit} starts ${INSTALLED_BIN}`);
  writeFileSync(join(dir, unit), edit(text.replaceAll(`ExecStart=${INSTALLED_BIN} `, `ExecStart=${BIN} `)));
  const dropInDir = join(DEPLOY, `${unit}.d`);
  if (dropIns && existsSync(dropInDir)) cpSync(dropInDir, join(dir, `${unit}.d`), { recursive: true });
  return join(dir, unit);
}

/** What verify says about a unit: it must exit 0 and say nothing at all (a warning is a finding too). */
async function assertClean(path: string): Promise<void> {
  const r = await analyze(['verify', path]);
  assert.equal(r.code, 0, `systemd-analyze verify ${path} exited ${r.code}:\n${r.output}`);
  assert.equal(r.output.trim(), '', `systemd-analyze verify ${path}:\n${r.output}`);
}

/**
 * The unit's effective IP access lists. verify dumps the loaded unit at
 * debug level, after the drop-ins are merged: "IPAddressDeny: 0.0.0.0/0".
 */
async function ipLists(path: string): Promise<{ allow: string[]; deny: string[] }> {
  const r = await analyze(['verify', path], { SYSTEMD_LOG_LEVEL: 'debug' });
  assert.equal(r.code, 0, r.output);
  const unitName = path.slice(path.lastIndexOf('/') + 1);
  assert.match(r.output, new RegExp(`-> Unit ${unitName.replace('.', '\\.')}:`), 'verify at debug level dumps the unit');
  const values = (key: string) => [...r.output.matchAll(new RegExp(`^\\s*${key}: (\\S+)$`, 'gm'))].map((m) => m[1]!).sort();
  return { allow: values('IPAddressAllow'), deny: values('IPAddressDeny') };
}

describe('systemd units in deploy/', () => {
  it('finds the plugin and server units and the remote drop-in', () => {
    assert.deepEqual(UNITS, ['keyhaven-plugin.service', 'keyhaven-server.service']);
    assert.ok(existsSync(join(DEPLOY, 'keyhaven-plugin.service.d', 'remote.conf')));
  });

  for (const unit of UNITS) {
    it(`${unit} passes systemd-analyze verify`, async (t) => {
      if (!requireDependency(t, ANALYZE_AVAILABLE, WHY)) return;
      await assertClean(stage(t, unit, false));
    });
    if (existsSync(join(DEPLOY, `${unit}.d`))) {
      it(`${unit} with its drop-ins passes systemd-analyze verify`, async (t) => {
        if (!requireDependency(t, ANALYZE_AVAILABLE, WHY)) return;
        const path = stage(t, unit, true);
        const r = await analyze(['verify', path], { SYSTEMD_LOG_LEVEL: 'debug' });
        // The drop-ins were read, not just present.
        for (const f of readdirSync(join(DEPLOY, `${unit}.d`))) {
          assert.ok(r.output.includes(`DropIn Path: ${join(path + '.d', f)}`), `${f} not loaded:\n${r.output}`);
        }
        await assertClean(path);
      });
    }
  }

  it('the check catches a misspelled directive and a missing binary', async (t) => {
    if (!requireDependency(t, ANALYZE_AVAILABLE, WHY)) return;
    const typo = await analyze(['verify', stage(t, 'keyhaven-plugin.service', false, (s) => s.replace('NoNewPrivileges=', 'NoNewPrivilege='))]);
    assert.match(typo.output, /Unknown key '?NoNewPrivilege'?/);
    const missing = await analyze(['verify', stage(t, 'keyhaven-plugin.service', false, (s) => s.replace(`ExecStart=${BIN} `, 'ExecStart=/nonexistent/keyhaven '))]);
    assert.notEqual(missing.code, 0);
    assert.match(missing.output, /nonexistent\/keyhaven/);
  });

  it('the plugin unit allows loopback only; with remote.conf it may connect anywhere', async (t) => {
    if (!requireDependency(t, ANALYZE_AVAILABLE, WHY)) return;
    const local = await ipLists(stage(t, 'keyhaven-plugin.service', false));
    assert.deepEqual(local.deny, ['0.0.0.0/0', '::/0']);
    assert.deepEqual(local.allow, ['127.0.0.0/8', '::1/128']);
    const remote = await ipLists(stage(t, 'keyhaven-plugin.service', true));
    assert.deepEqual(remote.deny, [], 'remote.conf clears IPAddressDeny');
  });

  it('the server unit does not restrict addresses (it listens for clients and may use a remote PostgreSQL)', async (t) => {
    if (!requireDependency(t, ANALYZE_AVAILABLE, WHY)) return;
    const server = await ipLists(stage(t, 'keyhaven-server.service', true));
    assert.deepEqual(server.deny, []);
  });
});
