import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes, scryptSync } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { code } from '../../test/expect-error.js';
import { DEFAULT_PASSWORD_POOL, PasswordPool } from './password-pool.js';
import { configurePasswordHashing, hashPassword, passwordHashesInUse, takeHashSlot, verifyPassword } from './secrets.js';

const params = { N: 1 << 14, r: 8, p: 1, len: 32 };

describe('password hashing pool', () => {
  it('hashes on worker threads with the same result as scrypt', async () => {
    const pool = new PasswordPool({ workers: 2, queue: 4 });
    try {
      const jobs = Array.from({ length: 6 }, (_, i) => ({ pw: `password ${i}`, salt: randomBytes(16) }));
      const slots = jobs.map(() => pool.tryAcquire()!);
      assert.ok(slots.every(Boolean));
      const keys = await Promise.all(jobs.map((j, i) => slots[i]!.scrypt(j.pw, j.salt, params).finally(() => slots[i]!.release())));
      jobs.forEach((j, i) => assert.deepEqual(keys[i], scryptSync(j.pw, j.salt, 32, { N: params.N, r: 8, p: 1 })));
      assert.equal(pool.inUse, 0);
    } finally {
      await pool.close();
    }
  });

  it('admits at most workers + queue at a time; a release admits the next', async () => {
    const pool = new PasswordPool({ workers: 1, queue: 2 });
    try {
      const held = [pool.tryAcquire(), pool.tryAcquire(), pool.tryAcquire()];
      assert.ok(held.every(Boolean));
      assert.equal(pool.tryAcquire(), undefined, 'full');
      assert.equal(pool.inUse, 3);
      held[0]!.release();
      held[0]!.release(); // twice counts once
      assert.equal(pool.inUse, 2);
      const again = pool.tryAcquire();
      assert.ok(again);
      assert.equal(pool.tryAcquire(), undefined);
      for (const s of [again, held[1], held[2]]) s!.release();
      assert.equal(pool.inUse, 0);
    } finally {
      await pool.close();
    }
  });

  it('a slot hashes once; close fails waiting hashes and a later hash starts a worker again', async () => {
    const pool = new PasswordPool({ workers: 1, queue: 4 });
    const a = pool.tryAcquire()!;
    const first = a.scrypt('x', randomBytes(16), params);
    await assert.rejects(a.scrypt('y', randomBytes(16), params), code('internal', /used twice/));
    await first;
    a.release();
    const slots = [pool.tryAcquire()!, pool.tryAcquire()!, pool.tryAcquire()!];
    const running = slots.map((s) => s.scrypt('z', randomBytes(16), params).then(() => 'done', (e: unknown) => e));
    await pool.close();
    const outcomes = await Promise.all(running);
    assert.ok(outcomes.some((o) => o !== 'done'), 'waiting hashes are refused at close');
    for (const o of outcomes) if (o !== 'done') code('unavailable', /shutting down/)(o);
    for (const s of slots) s.release();
    const b = pool.tryAcquire()!;
    assert.equal((await b.scrypt('x', Buffer.alloc(16), params)).length, 32);
    b.release();
    await pool.close();
  });

  it('on Linux the hashing threads run at the lowest priority, the event loop thread as before', async (t) => {
    if (!existsSync('/proc/thread-self')) return t.skip('no per-thread priorities here');
    const niceOf = (tid: string) => {
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]);
    };
    const before = niceOf(String(process.pid));
    const pool = new PasswordPool({ workers: 1, queue: 0 });
    try {
      const slot = pool.tryAcquire()!;
      await slot.scrypt('x', randomBytes(16), params);
      slot.release();
      const nices = readdirSync('/proc/self/task').map(niceOf);
      assert.ok(nices.includes(19), `a thread at nice 19 (${nices.join(',')})`);
      assert.equal(niceOf(String(process.pid)), before, 'the main thread keeps its priority');
    } finally {
      await pool.close();
    }
  });

  it('rejects sizes it cannot run', () => {
    assert.throws(() => new PasswordPool({ workers: 0, queue: 1 }), code('config_invalid'));
    assert.throws(() => new PasswordPool({ workers: 1, queue: -1 }), code('config_invalid'));
  });

  it('every hashPassword / verifyPassword goes through the pool: a full pool refuses at once with too_many_attempts', async () => {
    configurePasswordHashing({ workers: 1, queue: 0 });
    try {
      const h = await hashPassword('correct horse battery');
      const slot = takeHashSlot();
      assert.equal(passwordHashesInUse(), 1);
      assert.throws(() => takeHashSlot(), code('too_many_attempts', /^sign-in is busy; retry shortly$/));
      await assert.rejects(hashPassword('another password'), code('too_many_attempts', /busy/));
      await assert.rejects(verifyPassword('correct horse battery', h), code('too_many_attempts', /busy/));
      slot.release();
      assert.equal(await verifyPassword('correct horse battery', h), true);
      assert.equal(passwordHashesInUse(), 0, 'every slot given back');
    } finally {
      configurePasswordHashing(DEFAULT_PASSWORD_POOL);
    }
  });

  it('hashing never uses the libuv thread pool: node:crypto\'s async scrypt and pbkdf2 are not called', async () => {
    // In a fresh process, the thread-pool functions are replaced (before secrets.js is loaded) by ones
    // that count and fail; hashing and checking must still work and leave the counts at zero.
    const mod = new URL('./secrets.js', import.meta.url).href;
    const script = [
      "import crypto from 'node:crypto'; import { syncBuiltinESMExports } from 'node:module';",
      'let calls = 0;',
      "for (const f of ['scrypt', 'pbkdf2', 'hkdf']) crypto[f] = (...a) => { calls += 1; a[a.length - 1](new Error('libuv pool used')); };",
      'syncBuiltinESMExports();',
      `const s = await import(${JSON.stringify(mod)});`,
      "const h = await s.hashPassword('correct horse battery');",
      "const ok = await s.verifyPassword('correct horse battery', h);",
      "const bad = await s.verifyPassword('wrong horse battery', h);",
      'process.stdout.write(JSON.stringify({ ok, bad, calls }));',
    ].join('\n');
    const out = await runScript(script);
    assert.equal(out.code, 0, out.text);
    assert.deepEqual(JSON.parse(out.text), { ok: true, bad: false, calls: 0 });
  });

  it('an idle pool does not keep the process alive', async () => {
    const mod = new URL('./secrets.js', import.meta.url).href;
    const out = await runScript(`const s = await import(${JSON.stringify(mod)}); const h = await s.hashPassword('correct horse battery'); process.stdout.write(String(await s.verifyPassword('correct horse battery', h)));`);
    assert.equal(out.code, 0, `exited ${out.code}: ${out.text}`);
    assert.equal(out.text, 'true', 'the hash finished before exit (a busy worker holds the process)');
  });
});

/** Runs an ES module script in a fresh node; its exit code and output. */
async function runScript(script: string): Promise<{ code: number | null; text: string }> {
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  let text = '';
  child.stdout.on('data', (d: Buffer) => (text += d.toString()));
  child.stderr.on('data', (d: Buffer) => (text += d.toString()));
  // A hang guard only: a process the pool kept alive never exits by itself.
  const guard = setTimeout(() => child.kill('SIGKILL'), 60_000);
  const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  clearTimeout(guard);
  return { code, text };
}
