import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { spawnOwned } from './reaper.js';

// What `npm pack` would ship, asked of npm itself (without running the build).

const ROOT = resolve(fileURLToPath(new URL('../../', import.meta.url)));
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
  license: string;
  dependencies: Record<string, string>;
  optionalDependencies?: Record<string, string>;
};

function packedFiles(): Promise<string[]> {
  return new Promise((res, rej) => {
    const child = spawnOwned('npm', ['pack', '--dry-run', '--ignore-scripts', '--json'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
    child.on('error', rej);
    child.on('close', (code) => {
      if (code !== 0) return rej(new Error(`npm pack exited ${code}: ${err}`));
      const [first] = JSON.parse(out) as Array<{ files: Array<{ path: string }> }>;
      res(first!.files.map((f) => f.path));
    });
  });
}

describe('the published package', () => {
  it('ships the Apache-2.0 LICENSE that package.json names, and the systemd units with their drop-in', async () => {
    assert.equal(pkg.license, 'Apache-2.0');
    const license = readFileSync(join(ROOT, 'LICENSE'), 'utf8');
    assert.match(license, /^\s*Apache License\s+Version 2\.0, January 2004/);
    assert.match(license, /END OF TERMS AND CONDITIONS/);
    const files = await packedFiles();
    for (const f of ['LICENSE', 'README.md', 'deploy/keyhaven-plugin.service', 'deploy/keyhaven-plugin.service.d/remote.conf', 'deploy/keyhaven-server.service']) {
      assert.ok(files.includes(f), `${f} is not in the package`);
    }
  });

  it('pkcs11js and @aws-sdk/client-kms are optional dependencies', () => {
    for (const name of ['pkcs11js', '@aws-sdk/client-kms']) {
      assert.ok(pkg.optionalDependencies?.[name], `${name} in optionalDependencies`);
      assert.equal(pkg.dependencies[name], undefined, `${name} not in dependencies`);
    }
  });
});
