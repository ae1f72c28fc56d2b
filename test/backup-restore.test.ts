import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readdirSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import BetterSqlite3 from 'better-sqlite3';
import { stringify as toYaml } from 'yaml';
import { cleanCliEnv, initStore, runCli, tempDir, type CliResult } from './helpers.js';
import { requireSoftHsm, SOFTHSM_MODULE } from './softhsm.js';
import { api, initServer, login, setupCast, startServerProcess, type Cast, type ServerProcess } from './server-helpers.js';

// keyhaven operator backup / restore-check against real servers: a backup
// taken while the server serves writes, checked read-only with the right and
// wrong seal material, and copies damaged in the ways backups get damaged.

let base: string;
let srv: ServerProcess;
let cast: Cast;
let copy: string;
const b64 = (s: string) => Buffer.from(s).toString('base64');

function kh(args: string[], input?: string): Promise<CliResult> {
  return runCli(args, { env: cleanCliEnv(), input });
}

const sha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');
const mode = (p: string) => statSync(p).mode & 0o777;

/** A copy of the good backup, mode 0600, to damage. */
function variant(name: string): string {
  const p = join(base, name);
  copyFileSync(copy, p);
  return p;
}

function failed(r: CliResult, pattern: RegExp): void {
  assert.notEqual(r.code, 0, `expected a failure\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  assert.match(r.stderr, pattern);
  assert.doesNotMatch(r.stdout, /restore check passed/);
}

describe('operator backup and restore-check', () => {
  let ciphertext = '';

  before(async () => {
    base = tempDir('kh-backup-');
    srv = await startServerProcess();
    cast = await setupCast(srv.url);
    const r = await api(srv.url, 'POST', '/v1/keys/k1/encrypt', { token: cast.appKey, body: { plaintext: b64('before the backup') } });
    assert.equal(r.status, 200, r.text);
    ciphertext = r.body.ciphertext;
  });
  after(() => srv.stop());

  it('backs up a server while it serves writes: one 0600 file, never overwritten', async () => {
    copy = join(base, 'backup.db');
    let stop = false;
    let writes = 0;
    const load = (async () => {
      while (!stop) {
        const r = await api(srv.url, 'POST', '/v1/keys/k1/encrypt', { token: cast.appKey, body: { plaintext: b64(`w${writes}`) } });
        assert.equal(r.status, 200, r.text);
        writes += 1;
      }
    })();
    // The backup must start while writes are in flight.
    while (writes < 5) await new Promise((r) => setTimeout(r, 10));
    const r = await kh(['operator', 'backup', '--config', srv.configPath, copy, '-o', 'json']);
    const during = writes;
    stop = true;
    await load;
    assert.equal(r.code, 0, r.stderr);
    assert.ok(writes > 5 && during >= 5);
    const out = JSON.parse(r.stdout);
    assert.equal(out.path, copy);
    assert.equal(mode(copy), 0o600);
    // A single file: no -wal or -journal beside it.
    assert.deepEqual(readdirSync(base).filter((f) => f.startsWith('backup.db')), ['backup.db']);

    const again = await kh(['operator', 'backup', '--db', join(srv.dir, 'keyhaven.db'), copy]);
    assert.equal(again.code, 4);
    assert.match(again.stderr, /already exists; refusing to overwrite/);
    assert.equal(mode(copy), 0o600);
  });

  it('restore-check passes on the copy with the right key file, and never writes it', async () => {
    const before = sha(copy);
    const files = readdirSync(base).sort();
    const r = await kh(['operator', 'restore-check', copy, '--root-key-file', join(srv.dir, 'root.key')]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    for (const step of ['file', 'store', 'root key', 'canary', 'audit', 'keys']) assert.match(r.stdout, new RegExp(`ok\\s+${step}`));
    assert.match(r.stdout, /key "k1" version 1: material decrypts/);
    assert.match(r.stdout, /restore check passed/);
    const j = await kh(['operator', 'restore-check', copy, '--config', srv.configPath, '-o', 'json']);
    assert.equal(j.code, 0, j.stderr);
    const res = JSON.parse(j.stdout);
    assert.equal(res.ok, true);
    assert.equal(res.steps.length, 6);
    assert.equal(sha(copy), before);
    assert.deepEqual(readdirSync(base).sort(), files);
    assert.equal(mode(copy), 0o600);
  });

  it('a server started on the restored copy decrypts what was written before the backup', async () => {
    const dir = tempDir('kh-restored-');
    copyFileSync(copy, join(dir, 'keyhaven.db'));
    copyFileSync(join(srv.dir, 'root.key'), join(dir, 'root.key'));
    const restored = await startServerProcess({ dir });
    try {
      const r = await api(restored.url, 'POST', '/v1/keys/k1/decrypt', { token: cast.appKey, body: { ciphertext } });
      assert.equal(r.status, 200, r.text);
      assert.equal(Buffer.from(r.body.plaintext, 'base64').toString(), 'before the backup');
    } finally {
      await restored.stop();
    }
  });

  it('fails, naming why, with a wrong key, a tampered audit row, a truncated copy, a missing file', async () => {
    const wrongKey = join(base, 'wrong.key');
    writeFileSync(wrongKey, randomBytes(32), { mode: 0o600 });
    failed(await kh(['operator', 'restore-check', copy, '--root-key-file', wrongKey]), /the root key does not open this store \(canary\)/);

    const tampered = variant('tampered.db');
    const db = new BetterSqlite3(tampered);
    db.prepare("update audit set actor = 'user:mallory' where seq = 7").run();
    db.close();
    const t = await kh(['operator', 'restore-check', tampered, '--root-key-file', join(srv.dir, 'root.key')]);
    failed(t, /the audit chain is broken at record 7: record content does not match its hash \(edited\)/);
    assert.match(t.stdout, /ok\s+canary/);
    assert.match(t.stdout, /FAIL\s+audit/);

    const truncated = variant('truncated.db');
    truncateSync(truncated, Math.floor(statSync(truncated).size / 2));
    failed(await kh(['operator', 'restore-check', truncated, '--root-key-file', join(srv.dir, 'root.key')]), /truncated\.db is truncated: it holds \d+ bytes, its header says \d+ pages/);

    // Records cut from the end: the chain alone still links, the signed head does not.
    const cut = variant('cut.db');
    const cdb = new BetterSqlite3(cut);
    cdb.prepare('delete from audit where seq > (select max(seq) - 3 from audit)').run();
    cdb.close();
    const c = await kh(['operator', 'restore-check', cut, '--root-key-file', join(srv.dir, 'root.key')]);
    failed(c, /the audit chain is broken at record \d+/);
    assert.match(c.stdout, /FAIL\s+audit/);

    failed(await kh(['operator', 'restore-check', join(base, 'nope.db'), '--root-key-file', join(srv.dir, 'root.key')]), /nope\.db does not exist/);

    const notDb = join(base, 'not-a-db');
    writeFileSync(notDb, 'hello, this is not a database at all '.repeat(5), { mode: 0o600 });
    failed(await kh(['operator', 'restore-check', notDb, '--root-key-file', join(srv.dir, 'root.key')]), /not a SQLite database/);
  });

  it('checks a plain copy of a live WAL-mode file without writing it or leaving files beside it', async () => {
    const dir = tempDir('kh-walcopy-');
    const db = new BetterSqlite3(join(srv.dir, 'keyhaven.db'), { readonly: true });
    // The backup API keeps the source's WAL mode here: the same file as a plain cp of a stopped store.
    await db.backup(join(dir, 'keyhaven.db'));
    db.close();
    const wal = new BetterSqlite3(join(dir, 'keyhaven.db'));
    assert.equal(wal.pragma('journal_mode', { simple: true }), 'wal');
    wal.close();
    copyFileSync(join(srv.dir, 'root.key'), join(dir, 'root.key'));
    const before = sha(join(dir, 'keyhaven.db'));
    const r = await kh(['operator', 'restore-check', dir]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /WAL mode \(a copy needs its -wal file/);
    assert.equal(sha(join(dir, 'keyhaven.db')), before);
    assert.deepEqual(readdirSync(dir).sort(), ['keyhaven.db', 'root.key']);
  });

  it('refuses unclear usage and a PostgreSQL store, precisely', async () => {
    let r = await kh(['operator', 'restore-check', copy]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /say how to recover the root key/);
    r = await kh(['operator', 'restore-check', copy, '--root-key-file', 'a', '--shares']);
    assert.equal(r.code, 2);
    r = await kh(['operator', 'backup', join(base, 'x.db')]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /give exactly one of --config/);
    r = await kh(['operator', 'backup', '--db', join(base, 'missing.db'), join(base, 'x.db')]);
    assert.equal(r.code, 78);
    assert.match(r.stderr, /cannot read the database .*missing\.db: ENOENT/);
    r = await kh(['operator', 'backup', '--db', copy, join(base, 'no-such-dir', 'x.db')]);
    assert.equal(r.code, 78);
    assert.match(r.stderr, /cannot create the backup file .*: ENOENT/);
    const pg = join(base, 'pg.yaml');
    writeFileSync(pg, toYaml({ listen: '127.0.0.1:0', storage: { postgres: { url: 'postgres://kh@127.0.0.1/kh' } }, seal: { keyfile: { path: join(base, 'root.key') } } }), { mode: 0o600 });
    r = await kh(['operator', 'backup', '--config', pg, join(base, 'pg-backup.db')]);
    assert.equal(r.code, 4, r.stderr);
    assert.match(r.stderr, /PostgreSQL: back it up with pg_dump or point-in-time recovery/);
    assert.throws(() => statSync(join(base, 'pg-backup.db')));
  });

  it('backs up and checks the embedded (plugin) store folder', async () => {
    const dataDir = join(base, 'embedded');
    initStore(dataDir);
    const dest = tempDir('kh-embedded-copy-');
    const r = await kh(['operator', 'backup', '--data-dir', dataDir, join(dest, 'keyhaven.db')]);
    assert.equal(r.code, 0, r.stderr);
    // A folder: keyhaven.db in it, the key file given apart.
    const c = await kh(['operator', 'restore-check', dest, '--root-key-file', join(dataDir, 'root.key')]);
    assert.equal(c.code, 0, c.stdout + c.stderr);
    assert.match(c.stdout, /embedded store/);
    assert.match(c.stdout, /key "kubernetes-secrets" version 1: material decrypts/);
  });
});

describe('restore-check of a shamir-sealed server', () => {
  let s: ServerProcess;
  let shares: string[];
  let backup: string;
  let dir: string;

  before(async () => {
    dir = tempDir('kh-backup-shamir-');
    s = await startServerProcess({ config: { seal: { shamir: {} } } });
    const init = await initServer(s.url, { shares: 3, threshold: 2 });
    shares = init.shares!;
    for (const share of shares.slice(0, 2)) await api(s.url, 'POST', '/v1/sys/unseal', { body: { share } });
    const keyAdmin = await login(s.url, init.keyAdmin.name, init.keyAdmin.password);
    const r = await api(s.url, 'POST', '/v1/keys', { token: keyAdmin, body: { name: 'k1' } });
    assert.equal(r.status, 200, r.text);
    backup = join(dir, 'shamir.db');
    const b = await kh(['operator', 'backup', '--config', s.configPath, backup]);
    assert.equal(b.code, 0, b.stderr);
  });
  after(() => s.stop());

  it('passes with threshold shares (from files or stdin), fails with fewer or with a key file', async () => {
    const f1 = join(dir, 'share-a');
    const f2 = join(dir, 'share-b');
    writeFileSync(f1, shares[0]! + '\n', { mode: 0o600 });
    writeFileSync(f2, shares[2]! + '\n', { mode: 0o600 });
    let seen = '';
    const khSeen = async (args: string[], input?: string) => {
      const res = await kh(args, input);
      seen += res.stdout + res.stderr;
      return res;
    };
    let r = await khSeen(['operator', 'restore-check', backup, '--share-file', f1, '--share-file', f2]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /shamir seal/);
    r = await khSeen(['operator', 'restore-check', backup, '--shares'], `${shares[1]}\n${shares[2]}\n`);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    r = await khSeen(['operator', 'restore-check', backup, '--config', s.configPath], `${shares[0]}\n${shares[1]}\n`);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    failed(await khSeen(['operator', 'restore-check', backup, '--share-file', f1]), /needs 2 distinct valid shares of 3; 1 given/);
    const key = join(dir, 'some.key');
    writeFileSync(key, randomBytes(32), { mode: 0o600 });
    failed(await khSeen(['operator', 'restore-check', backup, '--root-key-file', key]), /sealed with shamir, not a key file/);
    // No share leaks into the output.
    for (const sh of shares) assert.ok(!seen.includes(sh));
  });
});

describe('restore-check of a pkcs11-sealed server (SoftHSM2)', () => {
  const PIN = 'Pin#8642-backup';

  it('recovers the root key through the HSM named in the server config; a wrong PIN fails without showing it', async (t) => {
    if (!requireSoftHsm(t)) return;
    const hsm = tempDir('kh-backup-hsm-', t);
    const conf = join(hsm, 'softhsm2.conf');
    mkdirSync(join(hsm, 'tokens'));
    writeFileSync(conf, `directories.tokendir = ${join(hsm, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`);
    execFileSync('softhsm2-util', ['--init-token', '--free', '--label', 'kh-backup', '--pin', PIN, '--so-pin', 'So#7531-officer'], { stdio: 'pipe', env: { ...process.env, SOFTHSM2_CONF: conf } });
    const config = { seal: { pkcs11: { module: SOFTHSM_MODULE, tokenLabel: 'kh-backup', pinEnv: 'KH_PIN', keyLabel: 'kh-root-wrap' } } };
    const env = (pin: string) => ({ ...cleanCliEnv(), SOFTHSM2_CONF: conf, KH_PIN: pin });
    const s = await startServerProcess({ config, env: env(PIN), t });
    const init = await initServer(s.url);
    const keyAdmin = await login(s.url, init.keyAdmin.name, init.keyAdmin.password);
    assert.equal((await api(s.url, 'POST', '/v1/keys', { token: keyAdmin, body: { name: 'k1' } })).status, 200);
    const backup = join(hsm, 'hsm.db');
    let r = await runCli(['operator', 'backup', '--config', s.configPath, backup], { env: env(PIN) });
    assert.equal(r.code, 0, r.stderr);
    r = await runCli(['operator', 'restore-check', backup, '--config', s.configPath, '--pkcs11'], { env: env(PIN) });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /recovered with the pkcs11 seal/);
    assert.match(r.stdout, /key "k1" version 1: material decrypts/);
    r = await runCli(['operator', 'restore-check', backup, '--config', s.configPath], { env: env('Wrong#0000-pin') });
    failed(r, /PIN/);
    assert.ok(!(r.stdout + r.stderr).includes('Wrong#0000-pin') && !(r.stdout + r.stderr).includes(PIN));
    await s.stop();
  });
});
