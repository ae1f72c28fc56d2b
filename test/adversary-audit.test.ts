import assert from 'node:assert/strict';
import { appendFileSync, cpSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import BetterSqlite3 from 'better-sqlite3';
import pg from 'pg';
import { linkRecord } from '../src/audit/chain.js';
import { cleanCliEnv, removeDir, runCli, tempDir, waitFor, type CliResult } from './helpers.js';
import { freshPostgresDatabase, postgresAvailable, POSTGRES_REASON } from './pg.js';
import { requireDependency } from './require.js';
import { api, login, setupCast, startServerProcess, type Cast, type ServerProcess } from './server-helpers.js';

// Attacks on the audit log by someone who can write the database but not the
// witness (the checkpoint file and the audit sink kept outside it): roll the
// log back to a saved head, wipe it, cut its tail, delete the head, forge a
// tail, and tamper with the witness itself. Each test fails if the tampering
// goes unnoticed by "keyhaven audit verify --witness", offline (--db with the
// root key) and online (the server checks the checkpoints).

const b64 = (s: string) => Buffer.from(s).toString('base64');

interface Checkpointed {
  seq: number;
  hash: string;
}

let base: string;
let srv: ServerProcess;
let cast: Cast;
/** The head row and last seq saved before the sneaky app was made. */
let savedHead: string;
let savedSeq: number;
/** The last seq once the server stopped. */
let finalSeq: number;
const started: ServerProcess[] = [];

const witnessDir = (dir: string) => join(dir, 'witness');
const checkpointPath = (dir: string) => join(witnessDir(dir), 'checkpoints.jsonl');
const sinkPath = (dir: string) => join(witnessDir(dir), 'sink.jsonl');
const dbPath = (dir: string) => join(dir, 'keyhaven.db');

function serverConfig(dir: string): Record<string, unknown> {
  return {
    audit: { fsync: true, sink: { file: { path: sinkPath(dir) } }, checkpoint: { path: checkpointPath(dir), every: 50, interval: '1s' } },
  };
}

function checkpoints(dir: string): Checkpointed[] {
  return readFileSync(checkpointPath(dir), 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => (JSON.parse(l) as { checkpoint: Checkpointed }).checkpoint);
}

function lastSeq(dir: string): number {
  const db = new BetterSqlite3(dbPath(dir), { readonly: true });
  try {
    return (db.prepare('select max(seq) as m from audit').get() as { m: number | null }).m ?? 0;
  } finally {
    db.close();
  }
}

/** A copy of the stopped server's folder, changed by `tamper` (a direct write to its database). */
function copyWith(name: string, tamper: (db: BetterSqlite3.Database) => void): string {
  const dir = join(base, name);
  cpSync(srv.dir, dir, { recursive: true });
  const db = new BetterSqlite3(dbPath(dir));
  try {
    tamper(db);
  } finally {
    db.close();
  }
  return dir;
}

function kh(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return runCli(args, { env: { ...cleanCliEnv(), XDG_CONFIG_HOME: base, ...env } });
}

interface WitnessResult {
  ok: boolean;
  records: number;
  firstBroken?: { seq: number; reason: string };
  witness: { checkpoints: number; failures: { at: string; seq: number; problem: string; reason: string }[] };
}

async function offline(dir: string, witness = checkpointPath(dir)): Promise<{ r: CliResult; res: WitnessResult }> {
  const r = await kh(['audit', 'verify', '--db', dbPath(dir), '--root-key-file', join(dir, 'root.key'), '--witness', witness, '-o', 'json']);
  return { r, res: JSON.parse(r.stdout || '{}') as WitnessResult };
}

/** Starts a server on the folder and verifies through it with the auditor's token. */
async function online(dir: string, witness = checkpointPath(dir)): Promise<{ r: CliResult; res: WitnessResult; s: ServerProcess }> {
  const s = await startServerProcess({ dir, config: serverConfig(dir) });
  started.push(s);
  const auditor = await login(s.url, 'auditor', cast.passwords.auditor!);
  const r = await kh(['audit', 'verify', '--witness', witness, '-o', 'json'], { KEYHAVEN_ADDR: s.url, KEYHAVEN_TOKEN: auditor });
  return { r, res: JSON.parse(r.stdout || '{}') as WitnessResult, s };
}

function assertCaught(what: string, got: { r: CliResult; res: WitnessResult }, problem: RegExp): void {
  assert.equal(got.r.code, 1, `${what} must fail verification\nstdout: ${got.r.stdout}\nstderr: ${got.r.stderr}`);
  assert.equal(got.res.ok, false, what);
  const hit = got.res.witness.failures.find((f) => problem.test(f.problem));
  assert.ok(hit, `${what}: expected a ${problem} failure, got ${JSON.stringify(got.res.witness.failures.slice(0, 5))} / ${JSON.stringify(got.res.firstBroken)}`);
  // Names the witness line and the record.
  assert.match(hit.at, /checkpoints\.jsonl:\d+$/);
  assert.ok(hit.seq > 0 || hit.problem === 'signature');
}

/** Grants through whichever admin role the server gives grants to. */
async function grant(url: string, app: string, key: string, ops: string[]): Promise<void> {
  for (const token of [cast.admin, cast.keyAdmin]) {
    const r = await api(url, 'PUT', `/v1/apps/${app}/grants/${key}`, { token, body: { operations: ops } });
    if (r.status === 200) return;
  }
  throw new Error('no admin could grant');
}

process.once('exit', () => {
  for (const p of [srv, ...started]) p?.child.kill('SIGKILL');
});

describe('adversary: the audit log cannot be rolled back, cut or wiped unnoticed with a witness', () => {
  before(async () => {
    base = tempDir('kh-adv-audit-');
    const dir = join(base, 'origin');
    mkdirSync(witnessDir(dir), { recursive: true });
    srv = await startServerProcess({ dir, config: serverConfig(dir) });
    cast = await setupCast(srv.url);
    for (let i = 0; i < 5; i++) {
      const r = await api(srv.url, 'POST', '/v1/keys/k1/encrypt', { token: cast.appKey, body: { plaintext: b64(`x${i}`) } });
      assert.equal(r.status, 200, r.text);
    }
    // The observed attack begins: the head row is saved...
    await waitFor(() => checkpoints(dir).length > 0 || undefined, 'a first checkpoint');
    const db = new BetterSqlite3(dbPath(dir), { readonly: true });
    try {
      db.exec('begin');
      savedHead = (db.prepare("select value from meta where name = 'audit_head'").get() as { value: string }).value;
      savedSeq = (db.prepare('select max(seq) as m from audit').get() as { m: number }).m;
      db.exec('commit');
    } finally {
      db.close();
    }
    assert.equal(JSON.parse(savedHead).seq, savedSeq);
    // ...then an app is made and granted decrypt, and a checkpoint covers it.
    const made = await api(srv.url, 'POST', '/v1/apps', { token: cast.admin, body: { name: 'sneaky' } });
    assert.equal(made.status, 200, made.text);
    await grant(srv.url, 'sneaky', 'k1', ['decrypt']);
    const changed = lastSeq(dir);
    await waitFor(() => checkpoints(dir).some((c) => c.seq >= changed) || undefined, `a checkpoint at or after record ${changed}`);
    // One more record, so the clean shutdown's last checkpoint is a third one
    // whatever the interval ticks did (the witness tests cut a middle line).
    const more = await api(srv.url, 'POST', '/v1/keys/k1/encrypt', { token: cast.appKey, body: { plaintext: b64('after the change') } });
    assert.equal(more.status, 200, more.text);
    assert.equal(await srv.stop(), 0, srv.output());
    assert.ok(checkpoints(dir).length >= 3, `${checkpoints(dir).length} checkpoints: the first, the change's and the shutdown's`);
    finalSeq = lastSeq(dir);
  });
  after(async () => {
    await Promise.all([srv, ...started].map((s) => s?.stop('SIGKILL')));
    if (base) removeDir(base);
  });

  it('the checkpoint file is 0600, chained, and carries no secret', () => {
    const dir = srv.dir;
    assert.equal(statSync(checkpointPath(dir)).mode & 0o777, 0o600);
    const text = readFileSync(checkpointPath(dir), 'utf8');
    const lines = text.split('\n').filter(Boolean).map((l) => JSON.parse(l));
    assert.ok(lines.length >= 2);
    for (const l of lines) assert.deepEqual(Object.keys(l.checkpoint).sort(), ['hash', 'mac', 'prev', 'seq', 'store', 'time', 'v']);
    // The clean shutdown wrote a last checkpoint covering the whole log.
    assert.equal(lines[lines.length - 1].checkpoint.seq, finalSeq);
    assert.equal(lines[0].checkpoint.prev, '0'.repeat(64));
    assert.notEqual(lines[1].checkpoint.prev, '0'.repeat(64));
    const sink = readFileSync(sinkPath(dir), 'utf8');
    assert.match(sink, /^\{"checkpoint":\{"v":1,/m, 'the sink carries the checkpoints too');
    const root = readFileSync(join(dir, 'root.key'));
    const secrets = [...Object.values(cast.passwords), cast.appKey, cast.strangerKey, cast.admin, cast.auditor, root.toString('hex'), root.toString('base64'), root.toString('utf8').trim()];
    for (const s of secrets) {
      assert.ok(s.length >= 8);
      assert.ok(!text.includes(s), 'no secret in the checkpoint file');
    }
  });

  it('an untouched log verifies against its witness, offline and online while the server keeps appending', async () => {
    const dir = copyWith('intact', () => {});
    const off = await offline(dir, witnessDir(dir));
    assert.equal(off.r.code, 0, off.r.stdout + off.r.stderr);
    assert.equal(off.res.ok, true);
    assert.ok(off.res.witness.checkpoints >= 2);
    const s = await startServerProcess({ dir, config: serverConfig(dir) });
    started.push(s);
    const auditor = await login(s.url, 'auditor', cast.passwords.auditor!);
    let stop = false;
    const load = (async () => {
      let n = 0;
      while (!stop) {
        const r = await api(s.url, 'POST', '/v1/keys/k1/encrypt', { token: cast.appKey, body: { plaintext: b64('live') } });
        assert.equal(r.status, 200, r.text);
        n += 1;
      }
      return n;
    })();
    try {
      const r = await kh(['audit', 'verify', '--witness', witnessDir(dir)], { KEYHAVEN_ADDR: s.url, KEYHAVEN_TOKEN: auditor });
      assert.equal(r.code, 0, r.stdout + r.stderr);
      assert.match(r.stdout, /audit chain intact: \d+ records \(hash chain, signed head and \d+ checkpoints from .*the log reaches the newest checkpoint/);
    } finally {
      stop = true;
    }
    assert.ok((await load) > 0);
    assert.doesNotMatch(s.output(), /does not match the checkpoint file/);
  });

  it('(1) the observed rollback: records after a saved head deleted and the old head put back', async () => {
    const dir = copyWith('rollback', (db) => {
      db.prepare('delete from audit where seq > ?').run(savedSeq);
      db.prepare("update meta set value = ? where name = 'audit_head'").run(savedHead);
    });
    // The database alone cannot tell (this is the attack that went unnoticed).
    const alone = await kh(['audit', 'verify', '--db', dbPath(dir), '--root-key-file', join(dir, 'root.key')]);
    assert.equal(alone.code, 0, alone.stdout);
    assertCaught('rollback, offline', await offline(dir), /truncated|diverged/);
    const on = await online(dir);
    assertCaught('rollback, online', on, /truncated|diverged/);
    // The restarted server says so in its log at once.
    await waitFor(() => /the audit log does not match the checkpoint file/.test(on.s.output()) || undefined, 'the mismatch in the restarted server\'s log');
    // The sneaky app is still there: only the witness shows the change.
    const apps = await api(on.s.url, 'GET', '/v1/apps', { token: await login(on.s.url, 'admin', cast.passwords.admin!) });
    assert.ok(JSON.stringify(apps.body).includes('sneaky'));
  });

  it('(2) a wipe: every record and the head deleted', async () => {
    const dir = copyWith('wipe', (db) => {
      db.exec("delete from audit; delete from meta where name = 'audit_head'");
    });
    const off = await offline(dir);
    assertCaught('wipe, offline', off, /wiped/);
    // Without a witness too: an initialised store with no records always fails.
    const alone = await kh(['audit', 'verify', '--db', dbPath(dir)]);
    assert.equal(alone.code, 1, alone.stdout);
    assert.match(alone.stdout, /initialised but its audit log holds no records/);
    // Online the restarted server has written new records since: they diverge from the checkpoints.
    assertCaught('wipe, online', await online(dir), /diverged|truncated/);
  });

  it('(3) truncation: the newest records cut', async () => {
    const dir = copyWith('truncate', (db) => {
      db.prepare('delete from audit where seq > ?').run(finalSeq - 3);
    });
    assertCaught('truncation, offline', await offline(dir), /truncated/);
    assertCaught('truncation, online', await online(dir), /truncated|diverged/);
  });

  it('(4) a deleted head (with the records after the saved point)', async () => {
    const dir = copyWith('nohead', (db) => {
      db.prepare('delete from audit where seq > ?').run(savedSeq);
      db.exec("delete from meta where name = 'audit_head'");
    });
    assertCaught('deleted head, offline', await offline(dir), /truncated/);
    // Without a witness: an initialised store with no signed head always fails, with or without the key.
    for (const extra of [[], ['--root-key-file', join(dir, 'root.key')]]) {
      const alone = await kh(['audit', 'verify', '--db', dbPath(dir), ...extra]);
      assert.equal(alone.code, 1, alone.stdout);
      assert.match(alone.stdout, /signed chain head is missing/);
    }
    const on = await online(dir);
    assertCaught('deleted head, online', on, /truncated|diverged/);
    // The restarted server did not sign a fresh head over the damage.
    const plain = await kh(['audit', 'verify', '--db', dbPath(dir)]);
    assert.equal(plain.code, 1, plain.stdout);
  });

  it('(5) a forged tail: the log rolled back and re-grown with a valid hash chain by someone without the root key', async () => {
    const newest = Math.max(...checkpoints(srv.dir).map((c) => c.seq));
    const dir = copyWith('forged', (db) => {
      db.prepare('delete from audit where seq > ?').run(savedSeq);
      let prev = (db.prepare('select hash from audit where seq = ?').get(savedSeq) as { hash: string }).hash;
      const insert = db.prepare('insert into audit (seq, time, actor, operation, key_name, key_version, result, request_id, details, prev_hash, hash) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)');
      for (let seq = savedSeq + 1; seq <= newest + 5; seq++) {
        const draft = { time: new Date().toISOString(), actor: 'app:app1', operation: 'crypto.encrypt', key_name: 'k1', key_version: 1, result: 'ok', request_id: null, details: null };
        const hash = linkRecord(prev, seq, draft);
        insert.run(seq, draft.time, draft.actor, draft.operation, draft.key_name, draft.key_version, draft.result, draft.request_id, draft.details, prev, hash);
        prev = hash;
      }
      // A head "signed" without the key.
      db.prepare("update meta set value = ? where name = 'audit_head'").run(JSON.stringify({ seq: newest + 5, hash: prev, mac: 'ab'.repeat(32) }));
    });
    assertCaught('forged tail, offline', await offline(dir), /diverged/);
    assertCaught('forged tail, online', await online(dir), /diverged/);
  });

  it('(5b) records appended after the head by someone without the root key: caught by the head; a restart names them on its unseal record', async () => {
    const dir = copyWith('appended', (db) => {
      let prev = (db.prepare('select hash from audit where seq = ?').get(finalSeq) as { hash: string }).hash;
      const insert = db.prepare('insert into audit (seq, time, actor, operation, key_name, key_version, result, request_id, details, prev_hash, hash) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)');
      for (let seq = finalSeq + 1; seq <= finalSeq + 4; seq++) {
        const draft = { time: new Date().toISOString(), actor: 'user:keyadmin', operation: 'key.rotate', key_name: 'k1', key_version: 2, result: 'ok', request_id: null, details: null };
        const hash = linkRecord(prev, seq, draft);
        insert.run(seq, draft.time, draft.actor, draft.operation, draft.key_name, draft.key_version, draft.result, draft.request_id, draft.details, prev, hash);
        prev = hash;
      }
    });
    const off = await offline(dir);
    assert.equal(off.r.code, 1, off.r.stdout);
    assert.equal(off.res.firstBroken?.seq, finalSeq + 1);
    assert.match(off.res.firstBroken!.reason, /not covered by the signed chain head/);
    // A restart adopts them like records written while sealed, and says how many on its unseal record.
    const s = await startServerProcess({ dir, config: serverConfig(dir) });
    started.push(s);
    const auditor = await login(s.url, 'auditor', cast.passwords.auditor!);
    const r = await api(s.url, 'GET', '/v1/audit?operation=sys.unseal&limit=10000', { token: auditor });
    const last = r.text.split('\n').filter(Boolean).map((l) => JSON.parse(l)).at(-1);
    assert.equal(JSON.parse(last.details).unsignedRecordsAdopted, 4);
  });

  it('(6) a tampered witness line is reported, not trusted', async () => {
    const dir = copyWith('badwitness', () => {});
    const lines = readFileSync(checkpointPath(dir), 'utf8').split('\n').filter(Boolean);
    const first = JSON.parse(lines[0]!);
    // One line edited (its hash), and a forged checkpoint claiming a record far beyond the log.
    lines[0] = JSON.stringify({ checkpoint: { ...first.checkpoint, hash: 'f'.repeat(64) } });
    lines.push(JSON.stringify({ checkpoint: { ...first.checkpoint, seq: finalSeq + 1000, mac: '0'.repeat(64) } }));
    writeFileSync(checkpointPath(dir), lines.join('\n') + '\n');
    const off = await offline(dir);
    assertCaught('tampered witness, offline', off, /signature/);
    // The forged far checkpoint is not trusted: no "truncated" from it.
    assert.ok(!off.res.witness.failures.some((f) => f.problem === 'truncated'), JSON.stringify(off.res.witness.failures));
    assertCaught('tampered witness, online', await online(dir), /signature/);
    // A removed line breaks the prev links.
    const gap = copyWith('gapwitness', () => {});
    const all = readFileSync(checkpointPath(gap), 'utf8').split('\n').filter(Boolean);
    assert.ok(all.length >= 3, `${all.length} checkpoints`);
    writeFileSync(checkpointPath(gap), all.filter((_, i) => i !== 1).join('\n') + '\n');
    assertCaught('removed witness line, offline', await offline(gap), /link/);
    // A malformed checkpoint line in a witness is reported too.
    appendFileSync(checkpointPath(gap), '{"checkpoint":{"v":1,"seq":"x"}}\n');
    const mal = await offline(gap);
    assert.equal(mal.r.code, 1);
    assert.ok(mal.res.witness.failures.some((f) => /malformed/.test(f.reason)));
  });

  it('bad input to POST /v1/audit/verify and to the --witness flags is refused clearly', async () => {
    const dir = copyWith('badinput', () => {});
    const s = await startServerProcess({ dir, config: serverConfig(dir) });
    started.push(s);
    const auditor = await login(s.url, 'auditor', cast.passwords.auditor!);
    const cp = checkpoints(dir)[0]!;
    const post = (body: unknown, token = auditor) => api(s.url, 'POST', '/v1/audit/verify', { token, body });
    const cases: [unknown, RegExp][] = [
      [{}, /checkpoints/],
      [{ checkpoints: [] }, /checkpoints/],
      [{ checkpoints: [{ ...cp, extra: 1 }] }, /extra|unrecognized/i],
      [{ checkpoints: [{ ...cp, seq: -1 }] }, /seq/],
      [{ checkpoints: [{ ...cp, hash: 'xyz' }] }, /hash/],
      [{ checkpoints: Array(1001).fill(cp) }, /checkpoints/],
      [{ checkpoints: [cp], at: ['a', 'b'] }, /one entry per checkpoint/],
      ['not json', /./],
    ];
    for (const [body, msg] of cases) {
      const r = await post(body);
      assert.equal(r.status, 400, `${JSON.stringify(body).slice(0, 80)} → ${r.status} ${r.text}`);
      assert.equal(r.body.error.code, 'invalid_argument');
      assert.match(r.body.error.message, msg);
    }
    const denied = await post({ checkpoints: [cp] }, await login(s.url, 'keyadmin', cast.passwords.keyadmin!));
    assert.equal(denied.status, 403);
    const anon = await api(s.url, 'POST', '/v1/audit/verify', { body: { checkpoints: [cp] } });
    assert.equal(anon.status, 401);
    // The server still answers.
    const good = await post({ checkpoints: [cp] });
    assert.equal(good.status, 200, good.text);
    assert.equal(good.body.ok, true);

    const env = { KEYHAVEN_ADDR: s.url, KEYHAVEN_TOKEN: auditor };
    const empty = join(base, 'empty.jsonl');
    writeFileSync(empty, '{"level":30,"msg":"just a log line"}\n');
    const flags: [string[], number, RegExp][] = [
      [['audit', 'verify', '--file', sinkPath(dir), '--witness', checkpointPath(dir)], 2, /--witness applies to the key server/],
      [['audit', 'verify', '--db', dbPath(dir), '--witness', checkpointPath(dir)], 2, /--witness needs --root-key-file/],
      [['audit', 'verify', '--witness', join(base, 'no-such-file')], 78, /cannot read the witness/],
      [['audit', 'verify', '--witness', empty], 2, /holds no checkpoints/],
    ];
    for (const [args, code, msg] of flags) {
      const r = await kh(args, env);
      assert.equal(r.code, code, `${args.join(' ')}: ${r.stdout} ${r.stderr}`);
      assert.match(r.stderr, msg);
    }
  });
});

const pgAvailable = await postgresAvailable();

describe('adversary: a rollback on PostgreSQL shared by two servers, each with its own checkpoint file', () => {
  it('both servers\' checkpoints verify the shared chain; after the rollback either server reports it', async (t) => {
    if (!requireDependency(t, pgAvailable, POSTGRES_REASON)) return;
    const db = (await freshPostgresDatabase())!;
    const [d1, d2, wdir] = [tempDir('kh-adv-pg-a-'), tempDir('kh-adv-pg-b-'), tempDir('kh-adv-pg-w-')];
    const config = (name: string) => ({
      storage: { postgres: { url: db.url, poolSize: 2 } },
      seal: { keyfile: { path: join(d1, 'root.key') } },
      audit: { fsync: true, checkpoint: { path: join(wdir, `${name}.jsonl`), interval: '1s' } },
    });
    const servers: ServerProcess[] = [];
    const client = new pg.Client({ connectionString: db.url });
    const lastPg = async () => Number((await client.query('select max(seq) as m from audit')).rows[0].m);
    const cps = (name: string) => readFileSync(join(wdir, `${name}.jsonl`), 'utf8').split('\n').filter(Boolean).map((l) => (JSON.parse(l) as { checkpoint: Checkpointed }).checkpoint);
    try {
      const a = await startServerProcess({ dir: d1, config: config('a') });
      servers.push(a);
      const pcast = await setupCast(a.url);
      const b = await startServerProcess({ dir: d2, config: config('b') });
      servers.push(b);
      await client.connect();
      for (let i = 0; i < 3; i++) assert.equal((await api(b.url, 'POST', '/v1/keys/k1/encrypt', { token: pcast.appKey, body: { plaintext: b64('pg') } })).status, 200);
      const upTo = await lastPg();
      await waitFor(() => (cps('a').some((c) => c.seq >= upTo) && cps('b').some((c) => c.seq >= upTo)) || undefined, `checkpoints of both servers at or after record ${upTo}`);
      const head = (await client.query("select value from meta where name = 'audit_head'")).rows[0].value as string;
      const saved = JSON.parse(head).seq as number;
      const auditorB = await login(b.url, 'auditor', pcast.passwords.auditor!);
      const intact = await kh(['audit', 'verify', '--witness', wdir, '-o', 'json'], { KEYHAVEN_ADDR: b.url, KEYHAVEN_TOKEN: auditorB });
      assert.equal(intact.code, 0, intact.stdout + intact.stderr);

      assert.equal((await api(a.url, 'POST', '/v1/apps', { token: pcast.admin, body: { name: 'sneaky' } })).status, 200);
      const changed = await lastPg();
      await waitFor(() => cps('a').some((c) => c.seq >= changed) || undefined, `a checkpoint at or after record ${changed}`);
      await Promise.all(servers.splice(0).map((s) => s.stop()));
      await client.query('delete from audit where seq > $1', [saved]);
      await client.query("update meta set value = $1 where name = 'audit_head'", [head]);
      const again = await startServerProcess({ dir: d2, config: config('b') });
      servers.push(again);
      const auditor = await login(again.url, 'auditor', pcast.passwords.auditor!);
      const r = await kh(['audit', 'verify', '--witness', wdir, '-o', 'json'], { KEYHAVEN_ADDR: again.url, KEYHAVEN_TOKEN: auditor });
      assert.equal(r.code, 1, `the rollback must be caught: ${r.stdout} ${r.stderr}`);
      const res = JSON.parse(r.stdout) as WitnessResult;
      assert.ok(res.witness.failures.some((f) => /truncated|diverged/.test(f.problem) && /a\.jsonl:\d+$/.test(f.at)), JSON.stringify(res.witness.failures.slice(0, 5)));
    } finally {
      await Promise.all(servers.map((s) => s.stop()));
      await client.end().catch(() => {});
      await db.drop();
      for (const d of [d1, d2, wdir]) removeDir(d);
    }
  });
});
