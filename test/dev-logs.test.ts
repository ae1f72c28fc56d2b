import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { BIN, logLines, removeDir, tempDir, waitFor } from './helpers.js';
import { spawnOwned } from './reaper.js';

// `keyhaven dev` writes readable log lines by default and JSON lines with
// --log-format json (as `keyhaven server` and `keyhaven plugin` always do).

interface Run {
  stdout(): string;
  stderr(): string;
  stop(): Promise<number | null>;
  exited: Promise<number | null>;
}

function devEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.KEYHAVEN_DATA_DIR;
  return env;
}

function runDev(cwd: string, extra: string[]): Run {
  const child = spawnOwned(process.execPath, [BIN, 'dev', '--health-addr', '127.0.0.1:0', '--listen', '127.0.0.1:0', ...extra], { cwd, env: devEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code, sig) => r(code ?? (sig ? 128 : null))));
  return {
    stdout: () => out,
    stderr: () => err,
    exited,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT');
      return exited;
    },
  };
}

describe('keyhaven dev log format', () => {
  const dir = tempDir('kh-devlog-');
  after(() => removeDir(dir));

  it('is readable by default: a line per event with level, time and message, fields below; no JSON lines', async () => {
    const dev = runDev(dir, []);
    await waitFor(() => dev.stderr().includes('Press Ctrl-C to stop.') && dev.stdout().includes('kms plugin listening'), 'keyhaven dev to start', 30_000).catch((e: unknown) => {
      throw new Error(`${String(e)}\nstdout:\n${dev.stdout()}\nstderr:\n${dev.stderr()}`);
    });
    assert.equal(await dev.stop(), 0);
    const out = dev.stdout();
    assert.deepEqual(logLines(out), [], 'no JSON lines');
    assert.match(out, /^\[\d\d:\d\d:\d\d\.\d{3}\] INFO \(keyhaven\): server initialised\n {4}component: "ops"\n {4}event: "init"/m);
    assert.match(out, /^\[\d\d:\d\d:\d\d\.\d{3}\] INFO \(keyhaven\): kms plugin listening$/m);
    // Lines written while stopping reach the output too.
    assert.match(out, /INFO \(keyhaven\): stopping: letting in-flight calls finish\n {4}signal: "SIGINT"/);
    // Not on a terminal: no colour codes.
    assert.doesNotMatch(out, /\x1b\[/);
  });

  it('is JSON with --log-format json', async () => {
    const dev = runDev(dir, ['--log-format', 'json']);
    await waitFor(() => dev.stderr().includes('Press Ctrl-C to stop.') && logLines(dev.stdout()).some((l) => l.msg === 'kms plugin listening'), 'keyhaven dev to start', 30_000).catch((e: unknown) => {
      throw new Error(`${String(e)}\nstdout:\n${dev.stdout()}\nstderr:\n${dev.stderr()}`);
    });
    assert.equal(await dev.stop(), 0);
    const lines = logLines(dev.stdout());
    const nonEmpty = dev.stdout().split('\n').filter(Boolean);
    assert.equal(lines.length, nonEmpty.length, 'every line is JSON');
    const unseal = lines.find((l) => l.event === 'unseal');
    assert.deepEqual([unseal?.level, unseal?.component, unseal?.by], ['info', 'ops', 'system:seal']);
  });

  it('refuses an unknown format, naming the choices', async () => {
    const dev = runDev(dir, ['--log-format', 'xml']);
    assert.notEqual(await dev.exited, 0);
    assert.match(dev.stderr(), /--log-format.*'xml' is invalid.*pretty, json/);
  });
});
