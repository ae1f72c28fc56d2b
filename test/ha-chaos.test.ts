import assert from 'node:assert/strict';
import { after, before, describe, it, type TestContext } from 'node:test';
import { postgresAvailable, POSTGRES_REASON } from './pg.js';
import { requireDependency } from './require.js';
import { api } from './server-helpers.js';
import {
  count, envInt, errorSample, fmtCounts, HA_KEY, inFlightAt, KmsLoad, sleep, startHaCluster,
  type CallRecord, type Fault, type HaCluster, type HaPlugin,
} from './ha-cluster.js';

// The operator's chaos test of key-server HA: two `keyhaven server`
// processes on one PostgreSQL database, a plugin with the local KEK on
// (prefers server A) and one with it off (prefers server B, so every call of
// it reaches a server and both servers carry load), 16 concurrent KMS v2
// callers over the unix sockets, and faults injected on the real processes.
// Counted, never timed: failed calls and key_ids going backwards are
// asserted; calls the apiserver would have given up on (over 3 s) and
// recovery times are figures printed with t.diagnostic, since a busy machine
// can starve any call past 3 s.
//
// KEYHAVEN_CHAOS_STOP_MS  how long each SIGSTOP lasts (default 3000; longer
//                         than a hung lock holder may block the others)
// KEYHAVEN_CHAOS_STOPS    how many SIGSTOPs, alternating A and B (default 4)

const available = await postgresAvailable();

const CALLERS = 16;
const STOP_MS = envInt('KEYHAVEN_CHAOS_STOP_MS', 3000);
const STOPS = envInt('KEYHAVEN_CHAOS_STOPS', 4);
/** How long a killed server stays down before its restart. */
const DOWN_MS = 3000;
/** How long to wait for a plugin to use a returned server again before reporting "not yet". */
const BACK_IN_USE_CAP_MS = 8000;

const rnd = (min: number, max: number) => min + Math.floor(Math.random() * (max - min));

/** ms until cond holds, or undefined after cap. */
async function timeUntil(cond: () => Promise<boolean>, capMs: number): Promise<number | undefined> {
  const t0 = Date.now();
  while (Date.now() - t0 < capMs) {
    if (await cond().catch(() => false)) return Date.now() - t0;
    await sleep(100);
  }
  return undefined;
}

/** Per fault: the calls that failed or ran over 3 s in its window (up to the next fault), and when the last of them ended. */
function perFault(recs: readonly CallRecord[], faults: readonly Fault[], endOfRun: number) {
  return faults.map((f, k) => {
    const to = faults[k + 1]?.at ?? endOfRun;
    const bad = recs.filter((r) => r.end > f.at && r.end <= to && (!r.ok || r.end - r.start > 3000));
    const lastBadEnd = Math.max(f.at, ...bad.map((r) => r.end));
    return { fault: f, bad: bad.length, recoveryMs: lastBadEnd - f.at };
  });
}

describe('HA chaos: two key servers on one PostgreSQL, plugins with the local KEK on and off, 16 KMS v2 callers', () => {
  let cluster: HaCluster | undefined;
  let load: KmsLoad | undefined;
  const name = (i: number) => cluster!.servers[i]!.name;
  /** The plugin that tries server i first. */
  const prefers = (i: number): HaPlugin => cluster!.plugins.find((p) => p.spec.order[0] === i)!;

  before(async () => {
    if (!available) return;
    cluster = await startHaCluster({
      servers: 2,
      plugins: [
        { name: 'kek-on', localKek: true, order: [0, 1] },
        { name: 'kek-off', localKek: false, order: [1, 0] },
      ],
      // The shipped scheduler interval: a server learns of another's rotation as late as it does in production.
      serverConfig: { scheduler: { interval: '30s' } },
    });
  });

  after(async () => {
    // Stops the callers first, then continues and kills every child, even when a test failed mid-fault.
    await load?.stop();
    await cluster?.close();
  });

  function startLoad(): KmsLoad {
    load = new KmsLoad(cluster!.plugins, CALLERS);
    load.start();
    return load;
  }

  function report(t: TestContext, recs: readonly CallRecord[]): void {
    t.diagnostic(`all: ${fmtCounts(count(recs))}`);
    cluster!.plugins.forEach((p, i) => {
      const mine = recs.filter((r) => r.plugin === i);
      t.diagnostic(`  plugin ${p.spec.name} (${p.spec.order.map(name).join('→')}): ${fmtCounts(count(mine))}; ` + ['Encrypt', 'Decrypt', 'Status'].map((op) => `${op} ${count(mine.filter((r) => r.op === op)).failed}/${mine.filter((r) => r.op === op).length} failed`).join(', '));
    });
  }

  it('1. kill -9 of either server under load, then its restart: 0 failed calls', async (t) => {
    if (!requireDependency(t, available, POSTGRES_REASON)) return;
    const c = cluster!;
    const l = startLoad();
    let driveError: unknown;
    const faults: Fault[] = [];
    const backInUse: string[] = [];
    try {
      await l.okCalls(200, 'a steady load before the first kill');
      for (const i of [0, 1]) {
        const f: Fault = { kind: 'kill', server: i, at: Date.now(), until: Infinity };
        faults.push(f);
        await c.kill(i);
        await l.okCalls(100, `calls while ${name(i)} is down`);
        await sleep(DOWN_MS);
        await c.restart(i);
        f.until = Date.now();
        // Recovery: the plugin that prefers the server uses it again.
        const p = prefers(i);
        const back = await timeUntil(async () => (await c.serverUp(p, i)) === 1, BACK_IN_USE_CAP_MS);
        backInUse.push(`${name(i)} back in use by ${p.spec.name} ${back === undefined ? `not within ${BACK_IN_USE_CAP_MS} ms` : `${back} ms after its restart`}`);
        await l.okCalls(100, `calls after ${name(i)} came back`);
      }
    } catch (e) {
      driveError = e;
    } finally {
      await l.stop();
    }
    const recs = l.records;
    report(t, recs);
    for (const x of perFault(recs, faults, Date.now())) {
      t.diagnostic(`kill -9 ${name(x.fault.server)}: down ${x.fault.until - x.fault.at} ms (restart included); ${x.bad} calls failed or over 3 s; recovered ${x.recoveryMs} ms after the kill`);
    }
    for (const b of backInUse) t.diagnostic(b);
    const all = count(recs);
    assert.deepEqual(l.wrong, [], 'no call answered a wrong plaintext');
    assert.equal(all.failed, 0, `0 failed calls; ${all.failed} of ${all.calls} failed:\n${errorSample(recs)}`);
    if (driveError) throw driveError;
  });

  it(`2. SIGSTOP/SIGCONT of each server in turn (${STOPS} stops of ${STOP_MS} ms at random moments): 0 failed calls beyond those in flight at a stop`, async (t) => {
    if (!requireDependency(t, available, POSTGRES_REASON)) return;
    const c = cluster!;
    for (const i of [0, 1]) assert.ok(await c.healthy(i), `server ${name(i)} serves before the stops`);
    const l = startLoad();
    let driveError: unknown;
    const faults: Fault[] = [];
    const notes: string[] = [];
    let midTransaction = 0;
    try {
      await l.okCalls(200, 'a steady load before the first stop');
      for (let k = 0; k < STOPS; k++) {
        const i = k % 2;
        // Random moments under a load of hundreds of transactions a second: some stops land mid-transaction.
        await sleep(rnd(200, 1200));
        const f: Fault = { kind: 'stop', server: i, at: Date.now(), until: Infinity };
        faults.push(f);
        c.pause(i);
        try {
          const probeAfter = Math.min(1000, Math.floor(STOP_MS / 2));
          await sleep(probeAfter);
          // A transaction open since before the stop and still open now: the hung server's, or one blocked behind it.
          const open = await c.openTransactionsSince(new Date(f.at)).catch(() => 0);
          if (open > 0) midTransaction += 1;
          await sleep(STOP_MS - probeAfter);
        } finally {
          c.resume(i);
          f.until = Date.now();
        }
        const p = prefers(i);
        const back = await timeUntil(async () => (await c.serverUp(p, i)) === 1, 3000);
        notes.push(`stop ${k + 1} (${name(i)}): back in use by ${p.spec.name} ${back === undefined ? 'not within 3000 ms' : `${back} ms after SIGCONT`}`);
      }
      await l.okCalls(200, 'calls after the last stop');
    } catch (e) {
      driveError = e;
    } finally {
      for (const s of c.servers) if (s.stopped) c.resume(s.index);
      await l.stop();
    }
    const recs = l.records;
    report(t, recs);
    const inFlight = recs.filter((r) => inFlightAt(r, faults));
    const rest = recs.filter((r) => !inFlightAt(r, faults));
    const fi = count(inFlight);
    const fr = count(rest);
    t.diagnostic(`in flight at a stop: ${fi.calls} calls, ${fi.calls - fi.failed} succeeded (failed over), ${fi.failed} failed, ${fi.over3s} over 3 s`);
    t.diagnostic(`all others: ${fmtCounts(fr)}`);
    t.diagnostic(`${midTransaction} of ${faults.length} stops left a transaction open across the stop`);
    for (const x of perFault(recs, faults, Date.now())) {
      t.diagnostic(`SIGSTOP ${name(x.fault.server)} for ${x.fault.until - x.fault.at} ms: ${x.bad} calls failed or over 3 s; recovered ${x.recoveryMs} ms after the stop`);
    }
    for (const n of notes) t.diagnostic(n);
    assert.deepEqual(l.wrong, [], 'no call answered a wrong plaintext');
    assert.equal(fr.failed, 0, `0 failed calls beyond those in flight at a stop; ${fr.failed} of ${fr.calls} failed:\n${errorSample(rest)}`);
    if (driveError) throw driveError;
  });

  it('3. rotation through one server, then failover to the other (the first stopped): the key_id a plugin reports never goes backwards', async (t) => {
    if (!requireDependency(t, available, POSTGRES_REASON)) return;
    const c = cluster!;
    for (const i of [0, 1]) assert.ok(await c.healthy(i), `server ${name(i)} serves before the rotations`);
    const l = startLoad();
    let driveError: unknown;
    const rounds: string[] = [];
    try {
      await l.okCalls(200, 'a steady load before the rotation');
      for (const [i, other] of [[0, 1], [1, 0]] as const) {
        const p = prefers(i);
        const pi = c.plugins.indexOf(p);
        const rot = await api(c.servers[i]!.url, 'POST', `/v1/keys/${HA_KEY}/rotate`, { token: c.keyAdmin, body: {} });
        assert.equal(rot.status, 200, rot.text);
        const v = rot.body.currentVersion as number;
        const rotatedAt = Date.now();
        // The plugin that prefers the rotating server reports the new version through it first.
        await l.okCalls(1, 'a call after the rotation');
        const seen = await timeUntil(async () => l.records.some((r) => r.plugin === pi && r.ok && r.op === 'Status' && r.start > rotatedAt && r.version === v), 10_000);
        assert.ok(seen !== undefined, `plugin ${p.spec.name} reports v${v} through ${name(i)}`);
        const stopAt = Date.now();
        c.pause(i);
        try {
          await sleep(STOP_MS);
        } finally {
          c.resume(i);
        }
        const during = l.records.filter((r) => r.plugin === pi && r.ok && r.version !== undefined && r.start >= stopAt + 1500 && r.start < stopAt + STOP_MS);
        rounds.push(`rotated to v${v} through ${name(i)}; ${p.spec.name} saw it after ${seen} ms; while ${name(i)} was stopped (through ${name(other)}) it reported versions ${[...new Set(during.map((r) => r.version))].join(',') || 'none'}`);
        await l.okCalls(100, `calls after ${name(i)} came back`);
      }
    } catch (e) {
      driveError = e;
    } finally {
      for (const s of c.servers) if (s.stopped) c.resume(s.index);
      await l.stop();
    }
    const recs = l.records;
    report(t, recs);
    for (const r of rounds) t.diagnostic(r);
    // A reply may not carry an older version than one the same plugin had already answered before the call began.
    const backwards: string[] = [];
    c.plugins.forEach((p, pi) => {
      const answered = recs.filter((r) => r.plugin === pi && r.ok && r.version !== undefined).sort((x, y) => x.end - y.end);
      let highest = 0;
      let j = 0;
      for (const r of [...answered].sort((x, y) => x.start - y.start)) {
        while (j < answered.length && answered[j]!.end < r.start) highest = Math.max(highest, answered[j++]!.version!);
        if (r.version! < highest) backwards.push(`${p.spec.name} ${r.op} answered v${r.version} after v${highest}`);
      }
    });
    t.diagnostic(`${backwards.length} replies carried an older key_id than the plugin had already reported`);
    if (count(recs).failed > 0) t.diagnostic(`failed calls: ${errorSample(recs.filter((r) => !r.ok))}`);
    assert.deepEqual(l.wrong, [], 'no call answered a wrong plaintext');
    assert.equal(backwards.length, 0, `the key_id went backwards ${backwards.length} times:\n${[...new Set(backwards)].slice(0, 8).join('\n')}`);
    if (driveError) throw driveError;
  });
});
