// HTTP load generator, run as its own process so it never shares an event
// loop with the server it measures: an undici Pool with one keep-alive
// connection per loop, `concurrency` loops each sending POSTs back to back.
// Usage: node dist/bench/http-load.js SPEC.json
//   spec: {url, path, headers, bodies: string[], concurrency, seconds, warmup}
// Prints "measure" and "done" as the measured window opens and closes, then
// one JSON line: {concurrency, calls, errors, seconds, callsPerSec, p50Ms,
// p99Ms, cpuSeconds, errorKinds, firstError?}. Calls and latencies count the calls
// that complete inside the measured window; errors count the whole run,
// warm-up included.
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { Pool } from 'undici';

export interface LoadSpec {
  url: string;
  path: string;
  headers: Record<string, string>;
  bodies: string[];
  concurrency: number;
  seconds: number;
  warmup: number;
}

export interface HttpLoadReport {
  concurrency: number;
  calls: number;
  errors: number;
  seconds: number;
  callsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  /** CPU seconds the client itself used in the measured window. */
  cpuSeconds?: number;
  /** Failed calls by HTTP status or error code. */
  errorKinds: Record<string, number>;
  firstError?: string;
}

function percentile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return 0;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return Math.round(sorted[i]! * 1000) / 1000;
}

async function main(): Promise<void> {
  const specPath = process.argv[2];
  if (!specPath) {
    process.stderr.write('usage: http-load SPEC.json\n');
    process.exit(2);
  }
  const spec = JSON.parse(readFileSync(specPath, 'utf8')) as LoadSpec;
  const c = spec.concurrency;
  const bodies = spec.bodies.map((b) => Buffer.from(b));
  const headers = { 'content-type': 'application/json', ...spec.headers };
  const pool = new Pool(spec.url, { connections: c, pipelining: 1, keepAliveTimeout: 60_000 });

  let lat = new Float64Array(1 << 16);
  let calls = 0;
  let errors = 0;
  const errorKinds: Record<string, number> = {};
  let firstError: string | undefined;
  const fail = (kind: string, detail: string) => {
    errors += 1;
    errorKinds[kind] = (errorKinds[kind] ?? 0) + 1;
    firstError ??= `${kind}: ${detail.slice(0, 300)}`;
  };

  const t0 = performance.now();
  const windowStart = t0 + spec.warmup * 1000;
  const windowEnd = windowStart + spec.seconds * 1000;
  // Marks on stdout let the runner sample the target's CPU over the same window.
  let cpuStart = process.cpuUsage();
  let cpuSeconds = 0;
  setTimeout(() => {
    cpuStart = process.cpuUsage();
    process.stdout.write('measure\n');
  }, spec.warmup * 1000);
  setTimeout(() => {
    const d = process.cpuUsage(cpuStart);
    cpuSeconds = (d.user + d.system) / 1e6;
    process.stdout.write('done\n');
  }, spec.warmup * 1000 + spec.seconds * 1000);

  const loop = async (k: number): Promise<void> => {
    let i = k;
    for (;;) {
      const start = performance.now();
      if (start >= windowEnd) return;
      const body = bodies[i % bodies.length]!;
      i += c;
      let ok = false;
      try {
        const res = await pool.request({ path: spec.path, method: 'POST', headers, body });
        if (res.statusCode >= 200 && res.statusCode < 300) {
          await res.body.dump();
          ok = true;
        } else {
          fail(`http_${res.statusCode}`, await res.body.text());
        }
      } catch (e) {
        const err = e as Error & { code?: string };
        fail(err.code ?? err.name, err.message);
        // Keep a refusing server from turning the loop into a busy spin.
        await new Promise((r) => setTimeout(r, 10));
      }
      const end = performance.now();
      if (ok && end >= windowStart && end <= windowEnd) {
        if (calls === lat.length) {
          const grown = new Float64Array(lat.length * 2);
          grown.set(lat);
          lat = grown;
        }
        lat[calls++] = end - start;
      }
    }
  };

  await Promise.all(Array.from({ length: c }, (_, k) => loop(k)));
  // The loops end when the window does; let the closing mark go out first.
  while (cpuSeconds === 0 && performance.now() < windowEnd + 1000) await new Promise((r) => setTimeout(r, 5));
  await pool.close();

  const sorted = lat.subarray(0, calls).sort();
  const report: HttpLoadReport = {
    concurrency: c,
    calls,
    errors,
    seconds: spec.seconds,
    callsPerSec: Math.round((calls / spec.seconds) * 10) / 10,
    p50Ms: percentile(sorted, 0.5),
    p99Ms: percentile(sorted, 0.99),
    errorKinds,
    ...(firstError ? { firstError } : {}),
    cpuSeconds: Math.round(cpuSeconds * 1000) / 1000,
  };
  process.stdout.write(`${JSON.stringify(report)}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`http-load: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
