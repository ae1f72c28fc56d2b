import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { pathToFileURL } from 'node:url';
import { ownedTempDir } from '../test/reaper.js';
import { KeyhavenError } from './errors.js';
import { importOptional, requireOptional } from './optional-package.js';

// Node's own resolver fails in each case: no package of that name, or a
// package that is there but broken inside. The loaders are the real
// require and import(), from a folder whose node_modules we lay out.

const ABSENT = 'keyhaven-absent-package';

/** A folder with node_modules/<name> whose entry point throws what `body` throws. */
function project(name: string, body: string): string {
  const dir = ownedTempDir('kh-optpkg-');
  const pkg = join(dir, 'node_modules', name);
  mkdirSync(pkg, { recursive: true });
  writeFileSync(join(pkg, 'package.json'), JSON.stringify({ name, version: '1.0.0', main: 'index.js' }));
  writeFileSync(join(pkg, 'index.js'), body);
  return dir;
}

function isConfigError(re: RegExp): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof KeyhavenError, String(e));
    assert.equal(e.code, 'config_invalid');
    assert.match(e.message, re);
    return true;
  };
}

describe('optional packages', () => {
  it('a package that is not installed: require names the package to install', () => {
    const req = createRequire(import.meta.url);
    assert.throws(
      () => requireOptional(ABSENT, 'the pkcs11 seal', () => req(ABSENT)),
      isConfigError(new RegExp(`^the pkcs11 seal needs the npm package ${ABSENT} \\(npm install ${ABSENT}\\)$`)),
    );
  });

  it('a package that is not installed: import() names the package to install', async () => {
    const name: string = ABSENT;
    await assert.rejects(
      importOptional(ABSENT, 'the aws-kms provider', () => import(name)),
      isConfigError(new RegExp(`^the aws-kms provider needs the npm package ${ABSENT} \\(npm install ${ABSENT}\\)$`)),
    );
  });

  it('a scoped package that is not installed', async () => {
    const name: string = '@keyhaven-absent/client';
    await assert.rejects(
      importOptional(name, 'the aws-kms provider', () => import(name)),
      isConfigError(/needs the npm package @keyhaven-absent\/client \(npm install @keyhaven-absent\/client\)$/),
    );
  });

  it('a package that is there but misses its native build is not reported as absent', () => {
    const dir = project('native-pkg', "module.exports = require('./build/Release/native.node');\n");
    const req = createRequire(join(dir, 'app.js'));
    assert.throws(
      () => requireOptional('native-pkg', 'the pkcs11 provider', () => req('native-pkg')),
      isConfigError(/^the pkcs11 provider needs the npm package native-pkg, which is installed but failed to load: Cannot find module '\.\/build\/Release\/native\.node'$/),
    );
  });

  it('a package whose own dependency is missing is not reported as absent', async () => {
    const dir = project('sdk-pkg', "module.exports = require('sdk-pkg-core');\n");
    const url = pathToFileURL(join(dir, 'node_modules', 'sdk-pkg', 'index.js')).href;
    await assert.rejects(
      importOptional('sdk-pkg', 'the aws-kms provider', () => import(url)),
      isConfigError(/installed but failed to load: Cannot find module 'sdk-pkg-core'$/),
    );
  });

  it('any other failure inside the package keeps its first line', () => {
    const dir = project('throws-pkg', "throw new Error('wrong ELF class: ELFCLASS32\\nsecond line');\n");
    const req = createRequire(join(dir, 'app.js'));
    assert.throws(
      () => requireOptional('throws-pkg', 'the pkcs11 seal', () => req('throws-pkg')),
      isConfigError(/installed but failed to load: wrong ELF class: ELFCLASS32$/),
    );
  });

  it('a package that loads is returned as is', async () => {
    const dir = project('fine-pkg', 'module.exports = { answer: 42 };\n');
    const req = createRequire(join(dir, 'app.js'));
    assert.deepEqual(requireOptional('fine-pkg', 'x', () => req('fine-pkg')), { answer: 42 });
    const url = pathToFileURL(join(dir, 'node_modules', 'fine-pkg', 'index.js')).href;
    const m = await importOptional('fine-pkg', 'x', () => import(url) as Promise<{ default: { answer: number } }>);
    assert.equal(m.default.answer, 42);
  });
});
