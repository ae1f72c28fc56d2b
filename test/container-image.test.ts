import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { DEFAULT_IMAGE } from '../src/k8s/static-pod.js';
import { PACKAGE_VERSION } from '../src/paths.js';
import { call, kmsClients, ROOT, tempDir, waitFor } from './helpers.js';
import { spawnOwned, suiteTeardown } from './reaper.js';
import { requireDependency } from './require.js';

// The Containerfile: its structure (always), and the image itself built with
// podman from the Debian bases of scripts/base-image.sh and run the way a
// static Pod runs it: read-only root, writes only to its two volumes.

interface Instruction {
  op: string;
  args: string;
}

/** The Containerfile as instructions (continuation lines joined, comments dropped), split into stages at FROM. */
function stages(text: string): Instruction[][] {
  const lines = text.replace(/\\\n(?:\s*#.*\n)*/g, ' ').split('\n');
  const out: Instruction[][] = [[]];
  for (const raw of lines) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([A-Za-z]+)\s+(.*)$/.exec(line);
    assert.ok(m, `a Containerfile instruction: ${line}`);
    const ins = { op: m[1]!.toUpperCase(), args: m[2]!.trim() };
    if (ins.op === 'FROM') out.push([]);
    out[out.length - 1]!.push(ins);
  }
  return out;
}

const CONTAINERFILE = readFileSync(join(ROOT, 'Containerfile'), 'utf8');
const BASE_SCRIPT = readFileSync(join(ROOT, 'scripts', 'base-image.sh'), 'utf8');
const [global, ...built] = stages(CONTAINERFILE);
const runtime = built[built.length - 1] ?? [];
const ops = (stage: Instruction[], op: string): string[] => stage.filter((i) => i.op === op).map((i) => i.args);

describe('the Containerfile', () => {
  it('has a build stage and a runtime stage, both FROM the Debian bases base-image.sh makes', () => {
    assert.equal(built.length, 2, 'two stages');
    assert.match(built[0]![0]!.args, /^\$\{BUILD_BASE\} AS build$/i);
    assert.equal(runtime[0]!.args, '${BASE}');
    const args = ops(global!, 'ARG');
    assert.ok(args.includes('BASE=localhost/keyhaven-base:trixie'), args.join(', '));
    assert.ok(args.includes('BUILD_BASE=localhost/keyhaven-base-build:trixie'), args.join(', '));
    for (const name of ['localhost/keyhaven-base:$SUITE', 'localhost/keyhaven-base-build:$SUITE']) assert.ok(BASE_SCRIPT.includes(name), `base-image.sh makes ${name}`);
    assert.match(BASE_SCRIPT, /SUITE=\$\{SUITE:-trixie\}/);
    assert.match(BASE_SCRIPT, /mmdebstrap --variant=minbase/);
  });

  it('fetches nothing by URL: no ADD, no curl or wget', () => {
    for (const stage of built) {
      assert.deepEqual(ops(stage, 'ADD'), []);
      for (const run of ops(stage, 'RUN')) assert.doesNotMatch(run, /\b(curl|wget)\b|https?:\/\//, run);
    }
  });

  it('builds in the build stage and copies only the build output into the runtime stage', () => {
    const buildRuns = ops(built[0]!, 'RUN').join(' && ');
    for (const step of ['npm ci', 'npm run build', 'npm prune --omit=dev']) assert.ok(buildRuns.includes(step), `the build stage runs ${step}`);
    const copies = ops(runtime, 'COPY');
    assert.ok(copies.length > 0);
    for (const c of copies) assert.match(c, /^--from=build \/src\/\S+ \.\/\S+$/, c);
    for (const path of ['bin', 'dist/bundle', 'proto', 'node_modules', 'package.json']) {
      assert.ok(copies.some((c) => c.startsWith(`--from=build /src/${path} `)), `the runtime stage gets ${path}`);
    }
    assert.deepEqual(ops(runtime, 'RUN').filter((r) => /\bnpm\b/.test(r)), [], 'no npm in the runtime stage');
    const ignore = readFileSync(join(ROOT, '.dockerignore'), 'utf8').split('\n');
    for (const p of ['node_modules', 'dist', '.git']) assert.ok(ignore.includes(p), `.dockerignore leaves out ${p}`);
  });

  it('runs as a non-root user, with keyhaven as the entrypoint and the two volumes', () => {
    const users = ops(runtime, 'USER');
    assert.equal(users.length, 1);
    const [uid, gid] = users[0]!.split(':').map(Number);
    assert.ok(Number.isInteger(uid) && uid! >= 1000, `USER ${users[0]} is numeric and not root`);
    assert.ok(gid === undefined || (Number.isInteger(gid) && gid >= 1000), `USER ${users[0]}: a group that is not root`);
    assert.equal(runtime.findIndex((i) => i.op === 'USER'), runtime.length - 3, 'USER comes last, before ENTRYPOINT and CMD');
    assert.deepEqual(JSON.parse(ops(runtime, 'ENTRYPOINT')[0]!), ['keyhaven']);
    assert.deepEqual(JSON.parse(ops(runtime, 'VOLUME')[0]!), ['/var/lib/keyhaven', '/run/keyhaven']);
    const run = ops(runtime, 'RUN').join(' ');
    assert.match(run, /install -d -o 10001 -g 10001 -m 0700 \/var\/lib\/keyhaven \/run\/keyhaven/);
  });

  it('labels the image with the package version and documents the name static-pod uses', () => {
    assert.deepEqual(ops(runtime, 'ARG'), ['BASE', `VERSION=${PACKAGE_VERSION}`]);
    const labels = ops(runtime, 'LABEL').join(' ');
    assert.match(labels, /org\.opencontainers\.image\.version="\$\{VERSION\}"/);
    assert.match(labels, /org\.opencontainers\.image\.licenses="Apache-2\.0"/);
    assert.ok(CONTAINERFILE.includes(`podman build -t ${DEFAULT_IMAGE} .`));
  });
});

function podman(args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync('podman', [...runtimeArgs(), ...args], { encoding: 'utf8', timeout: 120_000 });
  return { code: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? String(r.error ?? '') };
}

/**
 * Global podman flags: KEYHAVEN_OCI_RUNTIME picks the OCI runtime (.ci/run
 * sets runc: Debian 12's crun refuses the CI VM's hybrid cgroup layout).
 */
function runtimeArgs(): string[] {
  const rt = process.env.KEYHAVEN_OCI_RUNTIME;
  return rt ? ['--runtime', rt] : [];
}

/**
 * Resource limits at or below this process's own: podman's defaults
 * (nofile and nproc 1048576) cannot be set where the container manager lacks
 * CAP_SYS_RESOURCE, as in the CI VM. Lower limits work everywhere.
 */
function ulimitArgs(): string[] {
  const limits = readFileSync('/proc/self/limits', 'utf8');
  const hard = (name: string, cap: number): number => {
    const m = new RegExp(`^${name}\\s+\\S+\\s+(\\S+)`, 'm').exec(limits);
    const v = m && m[1] !== 'unlimited' ? Number(m[1]) : cap;
    return Math.min(v, cap);
  };
  const nofile = hard('Max open files', 65536);
  const nproc = hard('Max processes', 4096);
  return ['--ulimit', `nofile=${nofile}:${nofile}`, '--ulimit', `nproc=${nproc}:${nproc}`];
}

const BASES = ['localhost/keyhaven-base:trixie', 'localhost/keyhaven-base-build:trixie'];

/** Why podman cannot build and run the image here, or '' when it can (checked once: it starts a container). */
let readiness: string | undefined;
function podmanMissing(): string {
  if (readiness !== undefined) return readiness;
  if (spawnSync('podman', ['--version']).status !== 0) return (readiness = 'podman (apt-get install podman runc mmdebstrap)');
  const noBase = BASES.find((b) => podman(['image', 'exists', b]).code !== 0);
  if (noBase) return (readiness = `the base image ${noBase} (scripts/base-image.sh)`);
  const r = podman(['run', '--rm', ...ulimitArgs(), '--network', 'none', BASES[0]!, 'true']);
  readiness = r.code === 0 ? '' : `a container podman can start (KEYHAVEN_OCI_RUNTIME=runc may help): ${r.stderr.trim().slice(0, 300)}`;
  return readiness;
}

describe('the image, built and run with podman', () => {
  const teardown = suiteTeardown();
  const image = `localhost/keyhaven:test-${process.pid}`;
  let built = false;

  /** `podman build` of the repository (minutes the first time: npm ci compiles SQLite; cached layers after). */
  function build(): Promise<void> {
    return new Promise((resolve, reject) => {
      // The CA bundle this process trusts (a TLS-intercepting proxy's, in CI) goes to npm ci as a build secret.
      const ca = process.env.NODE_EXTRA_CA_CERTS;
      const secret = ca && existsSync(ca) ? ['--secret', `id=npm-ca,src=${ca}`] : [];
      const args = ['build', ...ulimitArgs(), ...secret, '--network', 'host', '-t', image, '-f', 'Containerfile', '.'];
      const child = spawnOwned('podman', [...runtimeArgs(), ...args], {
        cwd: ROOT,
        stdio: ['ignore', 'pipe', 'pipe'],
        t: teardown,
      });
      let out = '';
      child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
      child.on('error', reject);
      child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`podman build exited ${code}:\n${out.slice(-4000)}`))));
    });
  }

  /** `podman run` as a static Pod runs it: read-only root and no tmpfs either, so any write outside the volumes fails. */
  const runArgs = (): string[] => ['run', '--rm', ...ulimitArgs(), '--read-only', '--read-only-tmpfs=false', '--network', 'none'];

  it('builds, answers --version as the non-root user, with a read-only root', async (t) => {
    if (!requireDependency(t, podmanMissing() === '', podmanMissing())) return;
    // The build stage leaves untagged images behind, one per step. This build's
    // go with the test image, except the one of the dependency step (npm ci,
    // the addons compiled): the next build reuses it while the lockfile holds.
    const dangling = (): string[] => podman(['images', '--quiet', '--no-trunc', '--filter', 'dangling=true']).stdout.split('\n').filter(Boolean);
    const dependencyStep = (id: string): boolean => /npm ci --ignore-scripts/.test(podman(['history', '--no-trunc', '--format', '{{.CreatedBy}}', id]).stdout.split('\n')[0] ?? '');
    const before = new Set(dangling());
    teardown.after(() => {
      podman(['rmi', '--force', image]);
      // Removing one exposes its parent as dangling: a few rounds walk down the build stage.
      for (let round = 0; round < 8; round++) {
        const left = dangling().filter((id) => !before.has(id) && !dependencyStep(id));
        if (left.length === 0) break;
        podman(['rmi', '--no-prune', ...left]);
      }
    });
    await build();
    built = true;
    const v = podman([...runArgs(), image, '--version']);
    assert.equal(v.code, 0, v.stderr);
    assert.equal(v.stdout.trim(), PACKAGE_VERSION);
    const inspect = podman(['image', 'inspect', '--format', '{{.Config.User}} {{json .Config.Entrypoint}} {{index .Config.Labels "org.opencontainers.image.version"}} {{index .Config.Labels "org.opencontainers.image.base.name"}}', image]);
    assert.equal(inspect.code, 0, inspect.stderr);
    assert.equal(inspect.stdout.trim(), `10001:10001 ["keyhaven"] ${PACKAGE_VERSION} localhost/keyhaven-base:trixie`);
  });

  it('initialises a store and serves the KMS plugin on a socket in its volume, root file system read-only', async (t) => {
    if (!requireDependency(t, podmanMissing() === '', podmanMissing())) return;
    assert.ok(built, 'the image was built by the test before');
    const data = tempDir('kh-img-data-', t);
    const sock = tempDir('kh-img-sock-', t);
    for (const d of [data, sock]) {
      chownSync(d, 10001, 10001);
      chmodSync(d, 0o700);
    }
    const volumes = ['-v', `${data}:/var/lib/keyhaven`, '-v', `${sock}:/run/keyhaven`];

    const init = podman([...runArgs(), ...volumes, image, 'init', '--data-dir', '/var/lib/keyhaven']);
    assert.equal(init.code, 0, init.stderr);
    for (const f of ['root.key', 'keyhaven.db']) {
      const st = statSync(join(data, f));
      assert.equal(st.uid, 10001, `${f} belongs to the image's user`);
      assert.equal(st.mode & 0o777, 0o600, `${f} is 0600`);
    }

    const name = `kh-plugin-test-${process.pid}`;
    t.after(() => podman(['rm', '--force', '--time', '0', name]));
    const plugin = spawnOwned('podman', [...runtimeArgs(), ...runArgs(), '--name', name, ...volumes, image, 'plugin', '--socket', 'unix:///run/keyhaven/kms.sock', '--data-dir', '/var/lib/keyhaven', '--health-addr', 'off'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      t,
    });
    let out = '';
    plugin.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    plugin.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    const socket = join(sock, 'kms.sock');
    await waitFor(() => {
      if (plugin.exitCode !== null) throw new Error(`the plugin container exited ${plugin.exitCode}:\n${out}`);
      return existsSync(socket) || undefined;
    }, 'the plugin socket in the volume');

    const kms = kmsClients(socket);
    t.after(() => kms.close());
    const st = await waitFor(async () => {
      try {
        return await call<{ healthz: string; key_id: string; version: string }>(kms.v2, 'Status', {});
      } catch {
        return undefined;
      }
    }, 'Status from the plugin in the container');
    assert.equal(st.healthz, 'ok');
    assert.equal(st.version, 'v2');
    const plaintext = Buffer.from('a 32-byte seed for the container').subarray(0, 32);
    const enc = await call<{ ciphertext: Buffer; key_id: string }>(kms.v2, 'Encrypt', { plaintext, uid: 'container-test' });
    assert.equal(enc.key_id, st.key_id);
    const dec = await call<{ plaintext: Buffer }>(kms.v2, 'Decrypt', { ciphertext: enc.ciphertext, uid: 'container-test', key_id: enc.key_id });
    assert.deepEqual(Buffer.from(dec.plaintext), plaintext);
    assert.doesNotMatch(out, /EROFS|read-only file system/i, out);
  });
});
