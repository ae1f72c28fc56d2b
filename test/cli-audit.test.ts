import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import BetterSqlite3 from 'better-sqlite3';
import { BIN, ROOT, cleanCliEnv, cliExpect, initStore, removeDir, runCli, tempDir, waitFor, type CliResult } from './helpers.js';
import { spawnOwned } from './reaper.js';
import { api, setupCast, startServerProcess, type Cast, type ServerProcess } from './server-helpers.js';

// keyhaven audit against a real key server (export, verify on the server,
// offline on the database and on an export file, tail), the embedded-store
// mode of the key and audit commands, and unsealing a shamir server with
// shares on stdin. Users authenticate with $KEYHAVEN_TOKEN here; the saved
// login is covered by cli-server.test.ts.

let srv: ServerProcess;
let shamir: ServerProcess;
let cast: Cast;
let base: string;
let dataDir: string;
const tokens: Record<string, string> = {};

/** Runs bin/keyhaven asynchronously as a cast member (their token in $KEYHAVEN_TOKEN). */
function kh(args: string[], opts: { as?: string; env?: NodeJS.ProcessEnv; input?: string } = {}): Promise<CliResult> {
  const env = { ...cleanCliEnv(), KEYHAVEN_ADDR: srv.url, XDG_CONFIG_HOME: base, ...(opts.as ? { KEYHAVEN_TOKEN: tokens[opts.as] } : {}), ...opts.env };
  return runCli(args, { env, input: opts.input });
}

const { ok, json } = cliExpect(kh);

/** A test run cut short (timeout, ^C) must not leave server processes or their files behind. */
function guardServers(ps: ServerProcess[]): void {
  const cleanup = () => {
    for (const p of ps) {
      p.child.kill('SIGKILL');
      removeDir(p.dir);
    }
    removeDir(base);
  };
  process.once('exit', () => ps.forEach((p) => p.child.kill('SIGKILL')));
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    process.once(sig, () => {
      cleanup();
      process.exit(130);
    });
  }
}

describe('keyhaven audit, embedded-store mode and shamir unseal', () => {
  before(async () => {
    base = tempDir('kh-cli-audit-');
    [srv, shamir] = await Promise.all([startServerProcess(), startServerProcess({ config: { seal: { shamir: {} } } })]);
    guardServers([srv, shamir]);
    cast = await setupCast(srv.url);
    tokens.auditor = cast.auditor;
    tokens.keyadmin = cast.keyAdmin;
    const r = await api(srv.url, 'POST', '/v1/keys/k1/rotate', { token: cast.keyAdmin, body: {} });
    assert.equal(r.status, 200, r.text);
    dataDir = join(base, 'store');
    initStore(dataDir, 'local-key');
  });
  after(async () => {
    await Promise.all([srv?.stop(), shamir?.stop()]);
    for (const p of [srv, shamir]) if (p) removeDir(p.dir);
    removeDir(base);
  });

  it('audit export, verify on the server, offline --db (with and without the root key) and --file', async () => {
    const exp = await ok(['audit', 'export'], { as: 'auditor' });
    const lines = exp.stdout.trim().split('\n');
    const rows = lines.map((l) => JSON.parse(l));
    assert.ok(rows.length > 20, `${rows.length} records`);
    assert.deepEqual(rows.map((r) => r.seq), rows.map((_, i) => i + 1));
    for (const k of ['seq', 'time', 'actor', 'operation', 'key_name', 'key_version', 'result', 'request_id', 'details', 'prev_hash', 'hash']) assert.ok(k in rows[0], k);
    assert.ok(rows.some((r) => r.operation === 'key.rotate' && r.key_name === 'k1'));

    const file = join(base, 'export.jsonl');
    writeFileSync(file, exp.stdout);
    // A partial export (starting after record 10) verifies from its first line.
    writeFileSync(join(base, 'part.jsonl'), lines.slice(10).join('\n') + '\n');
    const victim = rows[12];
    writeFileSync(join(base, 'tampered.jsonl'), lines.map((l, i) => (i === 12 ? JSON.stringify({ ...victim, actor: 'user:someone-else' }) : l)).join('\n') + '\n');
    writeFileSync(join(base, 'dropped.jsonl'), lines.filter((_, i) => i !== 20).join('\n') + '\n');
    const db = join(srv.dir, 'keyhaven.db');

    const [filtered, v, chainOnly, withHead, fileOk, part, bad, gap] = await Promise.all([
      ok(['audit', 'export', '--operation', 'key.rotate', '--key', 'k1', '--after', '3'], { as: 'auditor' }),
      json(['audit', 'verify'], { as: 'auditor' }),
      ok(['audit', 'verify', '--db', db]),
      json(['audit', 'verify', '--db', db, '--root-key-file', join(srv.dir, 'root.key')]),
      ok(['audit', 'verify', '--file', file]),
      json(['audit', 'verify', '--file', join(base, 'part.jsonl')]),
      kh(['audit', 'verify', '--file', join(base, 'tampered.jsonl')]),
      kh(['audit', 'verify', '--file', join(base, 'dropped.jsonl'), '-o', 'json']),
    ]);
    const fr = filtered.stdout.trim().split('\n').map((l) => JSON.parse(l));
    assert.ok(fr.length >= 1 && fr.every((r) => r.operation === 'key.rotate' && r.key_name === 'k1' && r.seq > 3));
    assert.equal(v.ok, true);
    assert.ok(v.records >= rows.length);
    assert.match(chainOnly.stdout, /audit chain intact: \d+ records \(hash chain only: without --root-key-file/);
    assert.equal(withHead.ok, true);
    assert.equal(withHead.checked, 'chain+head');
    assert.match(fileOk.stdout, new RegExp(`audit chain intact: ${rows.length} records \\(records 1 to ${rows.length}`));
    assert.equal(part.records, rows.length - 10);
    assert.equal(bad.code, 1, bad.stderr);
    assert.match(bad.stdout, new RegExp(`audit chain BROKEN at record ${victim.seq}: record content does not match its hash`));
    assert.equal(gap.code, 1, gap.stderr);
    assert.equal(JSON.parse(gap.stdout).firstBroken.seq, rows[21].seq);
  });

  it('audit verify --db finds a record edited in a copy of the database', async () => {
    const copy = join(base, 'copy.db');
    const src = new BetterSqlite3(join(srv.dir, 'keyhaven.db'), { readonly: true });
    await src.backup(copy);
    src.close();
    const w = new BetterSqlite3(copy);
    w.prepare("update audit set result = 'denied' where seq = 7").run();
    w.close();
    const r = await kh(['audit', 'verify', '--db', copy]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stdout, /audit chain BROKEN at record 7: record content does not match its hash \(edited\)/);
  });

  it('audit verify --db refuses a root key file that does not open the database, naming the key', async () => {
    const other = join(base, 'other-root.key');
    writeFileSync(other, randomBytes(32), { mode: 0o600 });
    const r = await kh(['audit', 'verify', '--db', join(srv.dir, 'keyhaven.db'), '--root-key-file', other]);
    assert.equal(r.code, 78, r.stderr);
    assert.match(r.stderr, /the root key does not match this database/);
    assert.doesNotMatch(r.stdout, /BROKEN/);
  });

  it('audit tail shows the last records; tail -f prints new ones, not its own polls, until SIGINT', async () => {
    // Each read is audited: tail finds the end of the log in a few reads, not a scan or a long search.
    const reads = async () => (await api(srv.url, 'GET', '/v1/audit?principal=user:auditor&operation=audit.read&limit=10000', { token: cast.auditor })).text.split('\n').filter(Boolean).length;
    const before = await reads();
    const last = await ok(['audit', 'tail', '-n', '3', '-o', 'json'], { as: 'auditor' });
    assert.ok((await reads()) - before <= 4, 'tail made at most 3 reads of the log');
    const text = await ok(['audit', 'tail', '-n', '2', '--operation', 'key.rotate'], { as: 'auditor' });
    const rows = last.stdout.trim().split('\n').map((l) => JSON.parse(l));
    assert.equal(rows.length, 3);
    assert.ok(rows[0].seq < rows[1].seq && rows[1].seq < rows[2].seq);
    assert.match(text.stdout, /^SEQ\s+TIME\s+PRINCIPAL\s+OPERATION\s+KEY\s+RESULT\s+DETAILS\n\d+\s+\S+Z\s+user:keyadmin\s+key\.rotate\s+k1@v2\s+ok/);

    const env = { ...cleanCliEnv(), KEYHAVEN_ADDR: srv.url, XDG_CONFIG_HOME: base, KEYHAVEN_TOKEN: tokens.auditor };
    const child = spawnOwned(process.execPath, [BIN, 'audit', 'tail', '-f', '-n', '1', '-o', 'json'], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    try {
      await waitFor(() => out.split('\n').filter(Boolean).length >= 1 || undefined, `tail's first record (${err})`);
      const initial = out.split('\n').filter(Boolean).length;
      await ok(['key', 'create', 'k2'], { as: 'keyadmin' });
      await waitFor(() => out.includes('"operation":"key.create","key_name":"k2"') || undefined, `the new record in tail -f (${err})`);
      // Two more polls: none of them may show up.
      await new Promise((r) => setTimeout(r, 2200));
      const later = out.split('\n').filter(Boolean).slice(initial).map((l) => JSON.parse(l));
      assert.ok(later.length >= 1);
      assert.deepEqual(later.filter((r) => r.operation === 'audit.read'), [], 'tail -f shows none of its own reads');
    } finally {
      child.kill('SIGINT');
    }
    assert.equal(await exited, 0, err);
  });

  it('audit tail --since 1h on the server; details as an object; a server refusal names the flag', async () => {
    const [recent, old, details] = await Promise.all([
      ok(['audit', 'tail', '-n', '5', '--since', '1h', '--operation', 'key.rotate', '-o', 'json'], { as: 'auditor' }),
      ok(['audit', 'tail', '--until', '2h', '-o', 'json'], { as: 'auditor' }),
      ok(['audit', 'tail', '-n', '200', '-o', 'json'], { as: 'auditor' }),
    ]);
    assert.ok(recent.stdout.trim().split('\n').map((l) => JSON.parse(l)).some((r) => r.operation === 'key.rotate' && r.key_name === 'k1'), recent.stdout);
    assert.equal(old.stdout, '', 'the server started minutes ago');
    const rows = details.stdout.trim().split('\n').map((l) => JSON.parse(l) as { details: unknown });
    assert.ok(rows.some((r) => r.details !== null && typeof r.details === 'object'), 'some record carries details');
    assert.ok(rows.every((r) => typeof r.details !== 'string'), 'details are never a string inside JSON');
    // A compound duration reaches the server in its one-unit form.
    const [made, tooLong] = await Promise.all([
      json(['key', 'create', 'k-hm', '--rotation-period', '1h30m'], { as: 'keyadmin' }),
      kh(['key', 'policy', 'k1', '--rotation-period', '999999999w'], { as: 'keyadmin' }),
    ]);
    assert.equal(made.rotationPeriod, '90m');
    assert.equal(tooLong.code, 2, tooLong.stderr);
    assert.match(tooLong.stderr, /--rotation-period: must be a duration/);
    assert.doesNotMatch(tooLong.stderr, /body\./);
  });

  it('a shamir server: operator init prints the shares; unseal --share-stdin takes them one per line', async () => {
    const url = { KEYHAVEN_ADDR: shamir.url };
    const init = await json<{ shares: string[]; admin: { name: string; password: string } }>(['operator', 'init', '--shares', '3', '--threshold', '2'], { env: url });
    assert.equal(init.shares.length, 3);
    const one = await ok(['operator', 'unseal', '--share-stdin'], { env: url, input: `${init.shares[2]}\n` });
    assert.match(one.stdout, /share accepted: 1 of 2 entered; the server is still sealed/);
    const st = await json(['operator', 'status'], { env: url });
    assert.deepEqual([st.sealed, st.kind, st.threshold, st.shares, st.progress], [true, 'shamir', 2, 3, 1]);
    // Two more lines: the first completes the unseal, the second is not needed.
    const rest = await json(['operator', 'unseal', '--share-stdin'], { env: url, input: `${init.shares[0]}\n${init.shares[1]}\n` });
    assert.equal(rest.sealed, false);
  });

  it('--data-dir or $KEYHAVEN_DATA_DIR selects the embedded store; server-only and conflicting options exit 2', async () => {
    const [viaEnv, policy, both] = await Promise.all([
      json<{ keys: Array<{ id: string; name: string }> }>(['key', 'list'], { env: { KEYHAVEN_DATA_DIR: dataDir } }).then((r) => r.keys),
      kh(['key', 'policy', 'local-key', '--rotation-period', '1d', '--data-dir', dataDir]),
      kh(['key', 'list', '--data-dir', dataDir, '--server', srv.url]),
    ]);
    // The embedded store's JSON carries the internal key id; the server's view does not.
    assert.deepEqual(viaEnv.map((k) => k.name), ['local-key']);
    assert.ok(viaEnv[0]!.id);
    assert.equal(policy.code, 2, policy.stderr);
    assert.match(policy.stderr, /needs the key server/);
    assert.equal(both.code, 2, both.stderr);
    assert.match(both.stderr, /give one/);
    // --server wins over $KEYHAVEN_DATA_DIR.
    const { keys: remote } = await json<{ keys: Array<{ name: string; id?: string }> }>(['key', 'list', '--server', srv.url], { as: 'keyadmin', env: { KEYHAVEN_DATA_DIR: dataDir } });
    assert.ok(remote.some((k) => k.name === 'k1'));
    assert.ok(remote.every((k) => k.id === undefined));
  });

  it('audit export and tail on the embedded store, with filters', async () => {
    await ok(['key', 'rotate', 'local-key', '--data-dir', dataDir]);
    const [exp, tail] = await Promise.all([
      ok(['audit', 'export', '--data-dir', dataDir, '--operation', 'key.rotate']),
      ok(['audit', 'tail', '-n', '1', '--data-dir', dataDir, '-o', 'json']),
    ]);
    const rows = exp.stdout.trim().split('\n').map((l) => JSON.parse(l));
    assert.deepEqual(rows.map((r) => [r.operation, r.key_name]), [['key.rotate', 'local-key']]);
    const last = tail.stdout.trim().split('\n').map((l) => JSON.parse(l));
    assert.equal(last.length, 1);
    assert.equal(last[0].operation, 'key.rotate');
  });
});
