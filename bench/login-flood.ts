// A wrong-password flood against a key server's sign-in, run as its own
// process beside the encrypt load (bench/server-bench.ts, "sign-in flood").
// Usage: node dist/bench/login-flood.js URL CONCURRENCY SECONDS
// `CONCURRENCY` loops send POST /v1/auth/login back to back, each from its
// own loopback source address (127.0.0.10, .11, ...: Linux routes all of
// 127/8 to lo), each attempt with a name never tried before, so no
// (name, source) lock refuses it before its password is checked. Prints
// "flooding" once the first answer is in, then, after SECONDS, one JSON line:
// {requests, perSec, answers: {hashed, busy, locked, rateLimited, other}, firstOther?}.
import { performance } from 'node:perf_hooks';
import { Agent, request } from 'undici';

export interface FloodReport {
  requests: number;
  perSec: number;
  answers: { hashed: number; busy: number; locked: number; rateLimited: number; other: number };
  firstOther?: string;
}

async function main(): Promise<void> {
  const [url, cArg, sArg] = process.argv.slice(2);
  const concurrency = Number(cArg);
  const seconds = Number(sArg);
  if (!url || !Number.isInteger(concurrency) || concurrency < 1 || concurrency > 200 || !(seconds > 0)) {
    process.stderr.write('usage: login-flood URL CONCURRENCY(1-200) SECONDS\n');
    process.exit(2);
  }
  const answers = { hashed: 0, busy: 0, locked: 0, rateLimited: 0, other: 0 };
  let firstOther: string | undefined;
  let requests = 0;
  let announced = false;
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  const agents = Array.from({ length: concurrency }, (_, i) => new Agent({ localAddress: `127.0.0.${10 + i}`, keepAliveTimeout: 60_000 }));
  const body = (i: number, n: number) => JSON.stringify({ name: `flood-${i}-${n}`, password: 'not-the-password-at-all' });

  const loop = async (i: number): Promise<void> => {
    for (let n = 0; performance.now() < end; n++) {
      try {
        const res = await request(`${url}/v1/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: body(i, n), dispatcher: agents[i]! });
        const text = await res.body.text();
        requests += 1;
        if (res.statusCode === 401) answers.hashed += 1;
        else if (res.statusCode === 429 && text.includes('busy')) answers.busy += 1;
        else if (res.statusCode === 429 && text.includes('failed sign-ins')) answers.locked += 1;
        else if (res.statusCode === 429 && text.includes('sign-in requests')) answers.rateLimited += 1;
        else {
          answers.other += 1;
          firstOther ??= `${res.statusCode}: ${text.slice(0, 200)}`;
        }
      } catch (e) {
        answers.other += 1;
        firstOther ??= (e as Error).message;
        await new Promise((r) => setTimeout(r, 10));
      }
      if (!announced) {
        announced = true;
        process.stdout.write('flooding\n');
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, (_, i) => loop(i)));
  await Promise.all(agents.map((a) => a.close()));
  const report: FloodReport = { requests, perSec: Math.round((requests / ((performance.now() - t0) / 1000)) * 10) / 10, answers, ...(firstOther ? { firstOther } : {}) };
  process.stdout.write(`${JSON.stringify(report)}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`login-flood: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
