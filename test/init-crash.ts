import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { removeDir } from './helpers.js';
import { api, login, startServerProcess, type ServerProcess } from './server-helpers.js';

// kill -9 during POST /v1/sys/init, for adversary-init*.test.ts.

/** Every `step`-th of `count` points spread evenly over 0..1, from `first`: files share one spread. */
export function spread(count: number, first: number, step: number): number[] {
  const out: number[] = [];
  for (let i = first; i < count; i += step) out.push(i / (count - 1));
  return out;
}

/**
 * How long one whole init takes on this machine now (a throwaway server), so
 * the kill points cover the call on a fast or a busy machine alike. Not an
 * assertion: it only places the kills.
 */
async function initDurationMs(opts: { config: () => Record<string, unknown>; freshDir: () => string; fresh: () => Promise<void> }): Promise<number> {
  const dir = opts.freshDir();
  const s = await startServerProcess({ dir, config: opts.config() });
  try {
    const started = performance.now();
    const r = await api(s.url, 'POST', '/v1/sys/init', { body: {} });
    assert.equal(r.status, 200, r.text);
    return performance.now() - started;
  } finally {
    await s.stop('SIGKILL');
    removeDir(dir);
    await opts.fresh();
  }
}

export interface Answer {
  admin: { name: string; password: string };
  keyAdmin: { name: string; password: string };
}

export async function status(url: string): Promise<{ initialized: boolean; sealed: boolean; initConfirmed?: boolean }> {
  const r = await api(url, 'GET', '/v1/sys/seal-status');
  assert.equal(r.status, 200, r.text);
  return r.body;
}

/** Both answered users log in. */
export async function assertAnswerLogsIn(url: string, a: Answer, what: string): Promise<void> {
  for (const u of [a.admin, a.keyAdmin]) {
    const r = await api(url, 'POST', '/v1/auth/login', { body: { name: u.name, password: u.password } });
    assert.equal(r.status, 200, `${what}: ${u.name} cannot log in with the password init answered: ${r.text}`);
  }
}

/** Starts init, kills the server -9 after `delayMs`; the answer if one arrived first. */
async function initAndKill(s: ServerProcess, delayMs: number): Promise<Answer | undefined> {
  let answer: Answer | undefined;
  const call = api(s.url, 'POST', '/v1/sys/init', { body: {} }).then(
    (r) => {
      if (r.status === 200) answer = r.body as Answer;
      else assert.fail(`init answered ${r.status} ${r.text}`);
    },
    () => {}, // the connection died with the server
  );
  await sleep(delayMs);
  s.child.kill('SIGKILL');
  await s.exited;
  await call;
  return answer;
}

export async function crashLoop(opts: { points: readonly number[]; config: () => Record<string, unknown>; freshDir: () => string; fresh: () => Promise<void> }): Promise<{ spanMs: number; crashedBefore: number; redone: number; answered: number }> {
  // Kill points from 0 to 130% of a whole init: before, inside and after its transaction.
  const spanMs = 1.3 * (await initDurationMs(opts));
  const delaysMs = opts.points.map((f) => Math.round(f * spanMs));
  let dir = opts.freshDir();
  const dirs = [dir];
  let s: ServerProcess | undefined;
  const seen = { spanMs: Math.round(spanMs), crashedBefore: 0, redone: 0, answered: 0 };
  try {
    for (const [i, delay] of delaysMs.entries()) {
      s = await startServerProcess({ dir, config: opts.config() });
      const before = await status(s.url);
      if (before.initialized) {
        assert.equal(before.initConfirmed, false, `try ${i}: a server nobody logged in to counts as confirmed`);
        seen.redone += 1;
      }
      const answer = await initAndKill(s, delay);
      s = await startServerProcess({ dir, config: opts.config() });
      const after = await status(s.url);
      if (answer) {
        seen.answered += 1;
        assert.equal(after.initialized, true, `try ${i} (${delay} ms): init answered, then the restart forgot it`);
        await assertAnswerLogsIn(s.url, answer, `try ${i} (${delay} ms)`);
        // Confirmed now: init is closed for good.
        const again = await api(s.url, 'POST', '/v1/sys/init', { body: {} });
        assert.equal(again.status, 409, again.text);
        await s.stop();
        s = undefined;
        await opts.fresh();
        dir = opts.freshDir();
        dirs.push(dir);
        continue;
      }
      if (!after.initialized) seen.crashedBefore += 1;
      else assert.equal(after.initConfirmed, false, `try ${i} (${delay} ms): initialised, unanswered, and not open to a new init`);
      await s.stop();
      s = undefined;
    }
    // Whatever the last crash left, init now works and its users log in.
    s = await startServerProcess({ dir, config: opts.config() });
    const r = await api(s.url, 'POST', '/v1/sys/init', { body: {} });
    assert.equal(r.status, 200, r.text);
    await assertAnswerLogsIn(s.url, r.body, 'final init');
    const again = await api(s.url, 'POST', '/v1/sys/init', { body: {} });
    assert.equal(again.status, 409, again.text);
    // The audit chain (kept across redone inits) verifies, head signature included.
    const admin = await login(s.url, r.body.admin.name, r.body.admin.password);
    const made = await api(s.url, 'POST', '/v1/users', { token: admin, body: { name: 'aud', password: 'aud-password-123', roles: ['auditor'] } });
    assert.equal(made.status, 200, made.text);
    const v = await api(s.url, 'GET', '/v1/audit/verify', { token: await login(s.url, 'aud', 'aud-password-123') });
    assert.equal(v.status, 200, v.text);
    assert.equal(v.body.ok, true, v.text);
    return seen;
  } finally {
    await s?.stop('SIGKILL');
    for (const d of dirs) removeDir(d);
  }
}

