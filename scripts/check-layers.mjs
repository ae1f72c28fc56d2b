#!/usr/bin/env node
// Checks every import between the layers of src/ against the "may use" table
// of docs/architecture.md, so the page and the code cannot drift apart: an
// import the table does not allow fails `npm test`, and so does a folder the
// table does not name, or a row naming a folder that no longer exists.
// Tests (*.test.ts) are not checked: they assemble real parts across layers.
//
// Usage: node scripts/check-layers.mjs [ROOT]   (ROOT defaults to the repository)
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(process.argv[2] ?? join(dirname(fileURLToPath(import.meta.url)), '..'));
const src = join(root, 'src');
const PAGE = 'docs/architecture.md';

/** The module a path under src/ belongs to: its top folder ("keys/") or, at the top, its file ("errors.ts"). */
function moduleOf(path) {
  const parts = relative(src, path).split(sep);
  // An import names the compiled file (errors.js); the table names the source (errors.ts).
  return parts.length === 1 ? parts[0].replace(/\.js$/, '.ts') : `${parts[0]}/`;
}

/** Backticked names in a table cell: `keys/`, `errors.ts`. */
const namesIn = (cell) => [...cell.matchAll(/`([^`]+)`/g)].map((m) => m[1]);

/** The table whose header has a "may use" column: module → allowed modules (or '*' for everything). */
function readTable(text) {
  const lines = text.split('\n');
  const head = lines.findIndex((l) => /^\|.*\bmay use\b.*\|\s*$/i.test(l));
  if (head < 0) throw new Error(`${PAGE} has no table with a "may use" column`);
  const cols = lines[head].split('|').map((c) => c.trim().toLowerCase());
  const useCol = cols.findIndex((c) => c === 'may use');
  const allowed = new Map();
  for (const line of lines.slice(head + 2)) {
    if (!line.startsWith('|')) break;
    const cells = line.split('|');
    const mods = namesIn(cells[1] ?? '');
    const use = (cells[useCol] ?? '').trim();
    const set = /\beverything\b/i.test(use) ? '*' : new Set(namesIn(use));
    for (const m of mods) {
      if (allowed.has(m)) throw new Error(`${PAGE}: ${m} has two rows`);
      allowed.set(m, set);
    }
  }
  if (allowed.size === 0) throw new Error(`${PAGE}: the "may use" table has no rows`);
  return allowed;
}

function sourceFiles(dir) {
  const out = [];
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...sourceFiles(p));
    else if (name.endsWith('.ts') && !name.endsWith('.test.ts') && !name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

// Static imports and re-exports (type-only ones too: they are dependencies all the same) and dynamic imports.
const IMPORT = /^\s*(?:import|export)\s(?:[^'";]*?\sfrom\s*)?['"]([^'"]+)['"]|\bimport\(\s*['"]([^'"]+)['"]\s*\)/gm;
const stripComments = (text) => text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"`])\/\/.*$/gm, '$1');

function checkLayers() {
  const pagePath = join(root, PAGE);
  if (!existsSync(pagePath)) return { problems: [`${PAGE} is missing`], files: 0 };
  const table = readTable(readFileSync(pagePath, 'utf8'));
  const problems = [];
  const files = sourceFiles(src);
  const present = new Set(files.map(moduleOf));
  for (const m of present) if (!table.has(m)) problems.push(`src/${m} is not in the table of ${PAGE}: add a row saying what it owns and may use`);
  for (const m of table.keys()) if (!present.has(m)) problems.push(`${PAGE} names ${m}, which is not in src/`);
  for (const file of files) {
    const from = moduleOf(file);
    const may = table.get(from);
    if (!may) continue;
    const text = stripComments(readFileSync(file, 'utf8'));
    for (const m of text.matchAll(IMPORT)) {
      const spec = m[1] ?? m[2];
      if (!spec.startsWith('.')) continue; // packages: not a layer
      const target = resolve(dirname(file), spec);
      const where = relative(root, file);
      if (!target.startsWith(src + sep)) {
        problems.push(`${where} imports ${spec}, outside src/`);
        continue;
      }
      const to = moduleOf(target);
      if (to === from || may === '*' || may.has(to)) continue;
      problems.push(`${where} imports ${spec}: ${from} may not use ${to} (${PAGE})`);
    }
  }
  return { problems, files: files.length };
}

let result;
try {
  result = checkLayers();
} catch (e) {
  process.stderr.write(`layer check: ${e.message}\n`);
  process.exit(1);
}
const { problems, files } = result;
if (problems.length > 0) {
  process.stderr.write(`layer check: ${problems.length} problem(s)\n${problems.map((p) => `  ${p}\n`).join('')}`);
  process.exit(1);
}
process.stdout.write(`layer check: ${files} files under src/ import only what ${PAGE} allows\n`);
