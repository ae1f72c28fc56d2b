import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BIN, cleanCliEnv, removeDir, runCli, tempDir } from './helpers.js';
import { spawnOwned } from './reaper.js';
import { requireDependency } from './require.js';
import { initServer, login, startServerProcess, type ServerProcess } from './server-helpers.js';

// Saved servers by name (contexts): the old single-session file still works
// and is rewritten on the next login, --context / $KEYHAVEN_CONTEXT pick one,
// and a saved token only ever goes to the server that issued it. Shell
// completion is generated from the same command tree and run in a real bash.

/** bash -c SCRIPT; its stdout, or a rejection with stderr when it fails. */
function runBash(bash: string, script: string, env: NodeJS.ProcessEnv): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawnOwned(bash, ['-c', script], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`bash exited ${code}:\n${out}\n${err}`))));
  });
}

interface SessionsFile {
  version: number;
  current?: string;
  contexts: Record<string, { server: string; token?: string; expiresAt?: string; caFile?: string }>;
}

describe('CLI contexts (several saved servers by name)', () => {
  let srv: ServerProcess;
  let home = '';
  let admin = { name: '', password: '' };
  let cap: Server;
  let capUrl = '';
  const seen: Array<string | undefined> = [];
  const env = (extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({ ...cleanCliEnv(), XDG_CONFIG_HOME: home, ...extra });
  const file = () => join(home, 'keyhaven', 'session.json');
  const read = () => JSON.parse(readFileSync(file(), 'utf8')) as SessionsFile;

  before(async () => {
    home = tempDir('kh-cli-ctx-');
    srv = await startServerProcess();
    admin = (await initServer(srv.url)).admin;
    // Another "server" that records the Authorization header it is sent.
    cap = createServer((req, res) => {
      seen.push(req.headers.authorization);
      res.writeHead(401, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { code: 'unauthenticated', message: 'authentication required' } }));
    });
    await new Promise<void>((r) => cap.listen(0, '127.0.0.1', r));
    capUrl = `http://127.0.0.1:${(cap.address() as AddressInfo).port}`;
  });
  after(async () => {
    cap?.close();
    await srv?.stop();
    if (srv) removeDir(srv.dir);
    if (home) removeDir(home);
  });

  it('reads the old single-session file, and rewrites it as contexts (0600) on the next login', async () => {
    const token = await login(srv.url, admin.name, admin.password);
    mkdirSync(join(home, 'keyhaven'), { recursive: true, mode: 0o700 });
    writeFileSync(file(), JSON.stringify({ server: srv.url, token, expiresAt: new Date(Date.now() + 3600_000).toISOString() }), { mode: 0o600 });
    const who = await runCli(['whoami', '-o', 'json'], { env: env() });
    assert.equal(who.code, 0, who.stderr);
    assert.equal(JSON.parse(who.stdout).name, admin.name);

    const r = await runCli(['login', '--context', 'prod', '--server', srv.url, '--name', admin.name, '--password-stdin'], { env: env(), input: `${admin.password}\n` });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /as context prod/);
    const f = read();
    assert.equal(f.version, 2);
    assert.equal(f.current, 'prod');
    const legacy = `127.0.0.1-${new URL(srv.url).port}`;
    assert.deepEqual(Object.keys(f.contexts).sort(), [legacy, 'prod'].sort());
    assert.equal(f.contexts[legacy]!.token, token, 'the old login is kept under a host-port name');
    assert.equal(statSync(file()).mode & 0o777, 0o600);
  });

  it('--context and $KEYHAVEN_CONTEXT pick a saved server; its token goes to that server only', async () => {
    // A context for the recording server, with a token of its own.
    const f = read();
    f.contexts.other = { server: capUrl, token: 'khs_for_other', expiresAt: new Date(Date.now() + 3600_000).toISOString() };
    writeFileSync(file(), JSON.stringify(f), { mode: 0o600 });

    const list = await runCli(['context', 'list', '-o', 'json'], { env: env() });
    assert.equal(list.code, 0, list.stderr);
    const rows = (JSON.parse(list.stdout) as { contexts: Array<{ name: string; current: boolean; server: string; loggedIn: boolean }> }).contexts;
    assert.deepEqual(rows.find((x) => x.name === 'other'), { name: 'other', current: false, server: capUrl, loggedIn: true, expiresAt: f.contexts.other.expiresAt });
    assert.ok(rows.find((x) => x.name === 'prod')!.current);

    const toOther = await runCli(['whoami', '--context', 'other'], { env: env() });
    assert.equal(toOther.code, 5, toOther.stderr);
    assert.deepEqual(seen, ['Bearer khs_for_other']);
    const byEnv = await runCli(['whoami'], { env: env({ KEYHAVEN_CONTEXT: 'other' }) });
    assert.equal(byEnv.code, 5, byEnv.stderr);
    assert.equal(seen.length, 2);
    assert.equal(seen[1], 'Bearer khs_for_other');

    // --server elsewhere: the context's token stays home.
    const moved = await runCli(['whoami', '--context', 'prod', '--server', capUrl], { env: env() });
    assert.equal(moved.code, 5);
    assert.match(moved.stderr, /the saved login is for http:\/\/127\.0\.0\.1:\d+, not http/);
    assert.equal(seen[2], undefined, 'no token to a server that did not issue it');

    const prod = await runCli(['whoami', '--context', 'prod', '-o', 'json'], { env: env({ KEYHAVEN_CONTEXT: 'other' }) });
    assert.equal(prod.code, 0, prod.stderr);
    assert.equal(JSON.parse(prod.stdout).server, srv.url, 'the flag wins over $KEYHAVEN_CONTEXT');

    const use = await runCli(['context', 'use', 'other'], { env: env() });
    assert.equal(use.code, 0, use.stderr);
    assert.equal((await runCli(['context', 'current'], { env: env() })).stdout, 'other\n');
    assert.equal(read().current, 'other');
    const back = await runCli(['context', 'use', 'prod'], { env: env() });
    assert.equal(back.code, 0, back.stderr);
  });

  it('an unknown or malformed context name is a precise error', async () => {
    const unknown = await runCli(['whoami', '--context', 'nope'], { env: env() });
    assert.equal(unknown.code, 3, unknown.stderr);
    assert.match(unknown.stderr, /no saved context "nope" \(from --context\); saved: .*prod/);
    const byEnv = await runCli(['key', 'list'], { env: env({ KEYHAVEN_CONTEXT: 'nope' }) });
    assert.match(byEnv.stderr, /no saved context "nope" \(from KEYHAVEN_CONTEXT\)/);
    // --context means the key server even where $KEYHAVEN_DATA_DIR would pick the embedded store.
    const local = await runCli(['key', 'list', '--context', 'nope'], { env: env({ KEYHAVEN_DATA_DIR: join(home, 'no-store') }) });
    assert.match(local.stderr, /no saved context "nope" \(from --context\)/);
    const both = await runCli(['key', 'list', '--context', 'prod', '--data-dir', join(home, 'no-store')], { env: env() });
    assert.match(both.stderr, /--context and --data-dir\/--root-key-file name different targets/);
    const bad = await runCli(['login', '--context', 'a b', '--name', 'x', '--password-stdin'], { env: env(), input: 'pw\n' });
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /--context must be 1-63 letters, digits/);
    const del = await runCli(['context', 'delete', 'nope'], { env: env() });
    assert.equal(del.code, 3, del.stderr);
  });

  it('logout --context forgets that token only; context delete removes the entry', async () => {
    const out = await runCli(['logout', '--context', 'prod'], { env: env() });
    assert.equal(out.code, 0, out.stderr);
    assert.match(out.stdout, /logged out of http:\/\/127\.0\.0\.1:\d+ \(context prod\)/);
    let f = read();
    assert.equal(f.contexts.prod!.token, undefined);
    assert.equal(f.contexts.prod!.server, srv.url);
    assert.equal(f.contexts.other!.token, 'khs_for_other');
    const who = await runCli(['whoami', '--context', 'prod'], { env: env() });
    assert.equal(who.code, 5);
    assert.match(who.stderr, /not logged in to http:\/\/127\.0\.0\.1:\d+ \(context prod\): run "keyhaven login --context prod"/);
    // Logging in to the context again needs no --server: the context has it.
    const again = await runCli(['login', '--context', 'prod', '--name', admin.name, '--password-stdin'], { env: env(), input: `${admin.password}\n` });
    assert.equal(again.code, 0, again.stderr);

    const del = await runCli(['context', 'delete', 'other'], { env: env() });
    assert.equal(del.code, 0, del.stderr);
    f = read();
    assert.equal(f.contexts.other, undefined);
    assert.equal(f.current, 'prod');
    const text = await runCli(['context', 'list'], { env: env() });
    assert.match(text.stdout, /^CURRENT\s+NAME\s+SERVER\s+LOGIN\n/);
    assert.match(text.stdout, /^\*\s+prod\s+http:\/\/127\.0\.0\.1:\d+\s+until /m);
    assert.ok(!text.stdout.includes(f.contexts.prod!.token!), 'no token in the listing');
  });

  it('completion bash: a script bash loads, completing commands, subcommands, options and context names', async (t) => {
    const bash = ['/bin/bash', '/usr/bin/bash'].find((b) => existsSync(b));
    if (!requireDependency(t, bash !== undefined, 'bash (runs the completion script)')) return;
    // keyhaven on PATH as the shell would find it, with this test's config folder.
    const binDir = tempDir('kh-cli-ctx-bin-');
    try {
      writeFileSync(join(binDir, 'keyhaven'), `#!/bin/sh\nexec "${process.execPath}" "${BIN}" "$@"\n`, { mode: 0o755 });
      const script = `
        source <(keyhaven completion bash) || exit 9
        complete -p keyhaven
        try() { COMP_WORDS=("$@"); COMP_CWORD=$(( \${#COMP_WORDS[@]} - 1 )); COMPREPLY=(); _keyhaven; echo "[$*] \${COMPREPLY[*]}"; }
        try keyhaven con
        try keyhaven context u
        try keyhaven key rotate --ser
        try keyhaven context use pr
        try keyhaven whoami --context pr
      `;
      const out = await runBash(bash!, script, { ...env(), PATH: `${binDir}:${process.env.PATH}` });
      assert.match(out, /^complete -o default -F _keyhaven keyhaven$/m);
      assert.match(out, /^\[keyhaven con\] context$/m);
      assert.match(out, /^\[keyhaven context u\] use$/m);
      assert.match(out, /^\[keyhaven key rotate --ser\] --server$/m);
      assert.match(out, /^\[keyhaven context use pr\] prod$/m);
      assert.match(out, /^\[keyhaven whoami --context pr\] prod$/m);
    } finally {
      removeDir(binDir);
    }
    for (const shell of ['zsh', 'fish']) {
      const r = await runCli(['completion', shell], { env: env() });
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /keyhaven/);
    }
    const bad = await runCli(['completion', 'tcsh'], { env: env() });
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /the shell must be one of bash, zsh, fish, not "tcsh"/);
  });
});
