import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { createConnection, createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { clearStaleSocket, parseEndpoint, removeSocketIfOurs, socketIdentity, secureSocket } from './socket.js';
import { code as fails } from '../../test/expect-error.js';
import { ownedTempDir } from '../../test/reaper.js';

let dir: string;
let n = 0;
const servers: Server[] = [];

before(() => {
  dir = ownedTempDir('kh-sock-');
});

afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise<void>((r) => s.close(() => r()));
});

after(() => {
  rmSync(dir, { recursive: true, force: true });
});

function newPath(name = 'kms.sock'): string {
  n += 1;
  const d = join(dir, `c${n}`);
  mkdirSync(d);
  return join(d, name);
}


/** Leaves a real socket file nobody listens on: a child binds it and is killed with SIGKILL. */
async function staleSocket(path: string): Promise<void> {
  const child = spawn(process.execPath, ['-e', `require('node:net').createServer().listen(process.argv[1], () => process.stdout.write('ready'))`, path], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (code) => reject(new Error(`listener exited early (${code})`)));
  });
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;
  assert.ok(lstatSync(path).isSocket(), 'the killed process left its socket file behind');
}

async function listen(path: string): Promise<Server> {
  const server = createServer((c) => {
    // The stale-socket probe connects and hangs up at once.
    c.on('error', () => {});
    c.end('hello');
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(path, r));
  return server;
}

function connectOk(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let data = '';
    const c = createConnection(path);
    c.on('data', (d) => (data += d.toString()));
    c.on('end', () => resolve(data));
    c.on('error', reject);
  });
}

describe('plugin/socket: parseEndpoint', () => {
  it('parses unix:///absolute/path', () => {
    assert.deepEqual(parseEndpoint('unix:///run/keyhaven/kms.sock'), { kind: 'path', path: '/run/keyhaven/kms.sock', grpcAddress: 'unix:///run/keyhaven/kms.sock' });
  });

  it('parses unix:///@name as an abstract socket', () => {
    assert.deepEqual(parseEndpoint('unix:///@keyhaven-kms'), { kind: 'abstract', name: 'keyhaven-kms', grpcAddress: 'unix-abstract:keyhaven-kms' });
  });

  it('accepts an abstract name of 100 characters and refuses 101, empty, or with spaces', () => {
    assert.equal(parseEndpoint(`unix:///@${'n'.repeat(100)}`).kind, 'abstract');
    assert.throws(() => parseEndpoint(`unix:///@${'n'.repeat(101)}`), fails('invalid_argument'));
    assert.throws(() => parseEndpoint('unix:///@'), fails('invalid_argument'));
    assert.throws(() => parseEndpoint('unix:///@a b'), fails('invalid_argument'));
    assert.throws(() => parseEndpoint('unix:///@a\0b'), fails('invalid_argument'));
  });

  for (const rel of ['unix://kms.sock', 'unix://./kms.sock', 'unix://run/kms.sock', 'unix://']) {
    it(`refuses the relative path ${JSON.stringify(rel)}`, () => {
      assert.throws(() => parseEndpoint(rel), fails('invalid_argument', /must be absolute/));
    });
  }

  for (const other of ['tcp://127.0.0.1:8080', 'http://localhost/kms', '/run/kms.sock', 'unix:/run/kms.sock', 'UNIX:///run/kms.sock', 'unix-abstract:kms', '']) {
    it(`refuses ${JSON.stringify(other)} (not unix://)`, () => {
      assert.throws(() => parseEndpoint(other), fails('invalid_argument', /must start with unix:\/\//));
    });
  }

  it('accepts a path of 107 bytes and refuses 108 (sun_path)', () => {
    const p107 = `/${'p'.repeat(106)}`;
    const p108 = `/${'p'.repeat(107)}`;
    assert.equal(parseEndpoint(`unix://${p107}`).kind, 'path');
    assert.throws(() => parseEndpoint(`unix://${p108}`), fails('invalid_argument', /107 bytes/));
  });

  it('counts the path length in bytes, not characters', () => {
    const p = `/${'é'.repeat(54)}`; // 55 characters, 109 bytes
    assert.ok(p.length < 107 && Buffer.byteLength(p) > 107);
    assert.throws(() => parseEndpoint(`unix://${p}`), fails('invalid_argument'));
  });
});

describe('plugin/socket: clearStaleSocket (real unix sockets)', () => {
  it('returns none when nothing is at the path', async () => {
    assert.equal(await clearStaleSocket(newPath()), 'none');
  });

  it('removes a stale socket left by a killed process', async () => {
    const path = newPath();
    await staleSocket(path);
    assert.equal(await clearStaleSocket(path), 'removed');
    assert.equal(existsSync(path), false);
    // The path is free again.
    await listen(path);
    assert.equal(await connectOk(path), 'hello');
  });

  it('refuses a regular file at the path and leaves it untouched', async () => {
    const path = newPath();
    writeFileSync(path, 'important data', { mode: 0o640 });
    await assert.rejects(clearStaleSocket(path), fails('config_invalid', /is not a socket/));
    assert.equal(readFileSync(path, 'utf8'), 'important data');
    assert.equal(statSync(path).mode & 0o777, 0o640);
  });

  it('refuses a directory at the path and leaves it in place', async () => {
    const path = newPath();
    mkdirSync(path);
    await assert.rejects(clearStaleSocket(path), fails('config_invalid', /is not a socket/));
    assert.ok(statSync(path).isDirectory());
  });

  it('refuses a symlink (even to a stale socket) and removes neither link nor target', async () => {
    const target = newPath('target.sock');
    await staleSocket(target);
    const link = newPath('link.sock');
    symlinkSync(target, link);
    await assert.rejects(clearStaleSocket(link), fails('config_invalid'));
    assert.ok(lstatSync(link).isSymbolicLink());
    assert.ok(lstatSync(target).isSocket());
  });

  it('refuses a socket something is listening on, and the listener keeps working', async () => {
    const path = newPath();
    await listen(path);
    await assert.rejects(clearStaleSocket(path), fails('config_invalid', /already serving/));
    assert.ok(lstatSync(path).isSocket());
    assert.equal(await connectOk(path), 'hello');
  });

  it('reports a path it cannot inspect', async () => {
    const file = newPath('file');
    writeFileSync(file, 'x');
    await assert.rejects(clearStaleSocket(join(file, 'kms.sock')), fails('config_invalid', /cannot inspect socket path .*ENOTDIR/));
  });
});

describe('plugin/socket: secureSocket and removeSocketIfOurs (real unix sockets)', () => {
  it('applies the mode', async () => {
    const path = newPath();
    await listen(path);
    secureSocket(path, 0o660, undefined);
    assert.equal(statSync(path).mode & 0o777, 0o660);
    secureSocket(path, 0o600, undefined);
    assert.equal(statSync(path).mode & 0o777, 0o600);
  });

  it('applies a numeric group', async () => {
    const path = newPath();
    await listen(path);
    const gid = process.getgid!();
    secureSocket(path, 0o660, String(gid));
    assert.equal(statSync(path).gid, gid);
  });

  it('refuses a group that does not exist', async () => {
    const path = newPath();
    await listen(path);
    assert.throws(() => secureSocket(path, 0o660, 'no-such-group-kh-test'), fails('config_invalid', /no-such-group-kh-test/));
  });

  it('removeSocketIfOurs removes the socket it bound, and no other file at that path', async () => {
    const sock = newPath();
    await staleSocket(sock);
    const ours = socketIdentity(sock);
    removeSocketIfOurs(sock, ours);
    assert.equal(existsSync(sock), false);
    // Another process bound the same path since: a different inode, left alone.
    await staleSocket(sock);
    removeSocketIfOurs(sock, ours);
    assert.equal(existsSync(sock), true);
    const file = newPath('file');
    writeFileSync(file, 'keep');
    removeSocketIfOurs(file, socketIdentity(file));
    assert.equal(readFileSync(file, 'utf8'), 'keep');
    assert.doesNotThrow(() => removeSocketIfOurs(newPath('missing'), ours));
  });
});
