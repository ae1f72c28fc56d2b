import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ROOT } from './helpers.js';

// scripts/check-layers.mjs (run by npm test) against small trees made here:
// it must pass a tree that follows its page's "may use" table and name each
// import, folder or row that does not.

const SCRIPT = join(ROOT, 'scripts', 'check-layers.mjs');

const PAGE = `# Architecture

| folder | owns | may use |
|---|---|---|
| \`errors.ts\` | errors | — |
| \`storage/\` | storage | \`errors.ts\` |
| \`keys/\` | keys | \`storage/\`, \`errors.ts\` |
| \`cli/\` | the command | everything |
`;

const GOOD: Record<string, string> = {
  'src/errors.ts': 'export class E extends Error {}\n',
  'src/storage/store.ts': "import { E } from '../errors.js';\nexport type Store = { e: E };\n",
  'src/keys/key-store.ts': "import type { Store } from '../storage/store.js';\nimport { E } from '../errors.js';\nexport const k = (s: Store) => new E(String(s));\n",
  // Tests may use anything.
  'src/storage/store.test.ts': "import '../cli/main.js';\n",
  'src/cli/main.ts': "import { k } from '../keys/key-store.js';\nexport const main = async () => (await import('../storage/store.js'), k);\n",
};

describe('layer check (scripts/check-layers.mjs)', () => {
  let base: string;
  let n = 0;

  const run = (files: Record<string, string | undefined>, page = PAGE) => {
    const dir = join(base, `t${++n}`);
    for (const [path, text] of Object.entries({ ...GOOD, ...files })) {
      if (text === undefined) continue;
      mkdirSync(dirname(join(dir, path)), { recursive: true });
      writeFileSync(join(dir, path), text);
    }
    mkdirSync(join(dir, 'docs'), { recursive: true });
    writeFileSync(join(dir, 'docs', 'architecture.md'), page);
    const r = spawnSync(process.execPath, [SCRIPT, dir], { encoding: 'utf8' });
    return { code: r.status, out: r.stdout + r.stderr };
  };

  before(() => {
    base = mkdtempSync(join(tmpdir(), 'kh-layers-'));
  });
  after(() => {
    rmSync(base, { recursive: true, force: true });
  });

  it('passes a tree whose imports follow the table', () => {
    const r = run({});
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /layer check: 4 files under src\/ import only what docs\/architecture.md allows/);
  });

  it('names an import going up a layer, type-only and dynamic ones included', () => {
    const r = run({
      'src/storage/up.ts': "import type { k } from '../keys/key-store.js';\nexport type K = typeof k;\n",
      'src/storage/later.ts': "export const later = () => import('../keys/key-store.js');\n",
    });
    assert.equal(r.code, 1, r.out);
    assert.match(r.out, /src\/storage\/up.ts imports \.\.\/keys\/key-store\.js: storage\/ may not use keys\//);
    assert.match(r.out, /src\/storage\/later.ts imports \.\.\/keys\/key-store\.js: storage\/ may not use keys\//);
    assert.match(r.out, /2 problem/);
  });

  it('ignores imports in comments and package imports', () => {
    const r = run({ 'src/storage/notes.ts': "// import { k } from '../keys/key-store.js';\n/* import '../cli/main.js'; */\nimport { join } from 'node:path';\nexport const j = join;\n" });
    assert.equal(r.code, 0, r.out);
  });

  it('a folder without a row, and a row without a folder, are both problems', () => {
    const r = run({ 'src/audit/log.ts': "export const log = 1;\n" }, PAGE.replace('| `cli/` |', '| `server/` | server | `keys/` |\n| `cli/` |'));
    assert.equal(r.code, 1, r.out);
    assert.match(r.out, /src\/audit\/ is not in the table of docs\/architecture.md/);
    assert.match(r.out, /docs\/architecture.md names server\/, which is not in src\//);
  });

  it('src/ code importing from outside src/ is a problem', () => {
    const r = run({ 'src/keys/helper.ts': "import '../../test/helpers.js';\n" });
    assert.equal(r.code, 1, r.out);
    assert.match(r.out, /src\/keys\/helper.ts imports \.\.\/\.\.\/test\/helpers\.js, outside src\//);
  });

  it('a page without the table fails instead of passing everything', () => {
    const r = run({}, '# Architecture\n\nNo table here.\n');
    assert.notEqual(r.code, 0, r.out);
    assert.match(r.out, /no table with a "may use" column/);
  });
});
