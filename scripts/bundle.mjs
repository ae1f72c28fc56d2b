#!/usr/bin/env node
// Bundles the compiled CLI (dist/src, from tsc) into dist/bundle/, which
// bin/keyhaven runs. Why: loading ~900 small module files costs a keyhaven
// process about 0.6 s of CPU at every start (a plugin beside each
// kube-apiserver, a key server, every test that starts one); one bundle with
// lazily loaded chunks per command halves it. tsc stays the type checker and
// the unit tests keep importing dist/src.
//
// Native addons and packages loaded on demand stay outside the bundle and are
// resolved from node_modules as before. `import.meta.url` keeps meaning a file
// two levels below the package root (src/paths.ts), and each worker thread
// (password hashing, the SQLite audit writer) is its own entry beside the
// chunk that starts it.
import { build } from 'esbuild';
import { rmSync } from 'node:fs';
import { join, resolve } from 'node:path';

const ROOT = resolve(import.meta.dirname, '..');
const OUT = join(ROOT, 'dist', 'bundle');

rmSync(OUT, { recursive: true, force: true });
await build({
  absWorkingDir: ROOT,
  entryPoints: ['dist/src/cli/main.js', 'dist/src/access/hash-worker.js', 'dist/src/audit/sqlite-writer-worker.js'],
  outdir: OUT,
  entryNames: '[name]',
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  // Whitespace only: names stay readable in stack traces and logs.
  minifyWhitespace: true,
  external: ['better-sqlite3', 'pkcs11js', '@aws-sdk/*', 'pg-native'],
  // CommonJS packages inside an ES module bundle call require() for Node's own modules.
  banner: { js: "import { createRequire as __keyhavenRequire } from 'node:module'; const require = __keyhavenRequire(import.meta.url);" },
  logLevel: 'warning',
  // Licence notices of bundled packages are kept, at the end of each file.
  legalComments: 'eof',
});
