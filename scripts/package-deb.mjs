#!/usr/bin/env node
// Builds a Debian package for control-plane nodes from the built tree
// (npm run build): dist/deb/keyhaven_<version>_<arch>.deb.
//
//   node scripts/package-deb.mjs [--out <dir>]
//
// What runs is the bundle (dist/bundle) with the few packages it leaves
// external (scripts/bundle.mjs): better-sqlite3 (native), and pkcs11js and
// @aws-sdk/client-kms when they are installed (optional providers). Their
// native addons were built for this machine's Node.js major version and
// architecture, so the package depends on exactly that major version.
import { execFileSync } from 'node:child_process';
import {
  chmodSync, copyFileSync, cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync,
  symlinkSync, writeFileSync,
} from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';

const ROOT = resolve(import.meta.dirname, '..');
const NODE_MODULES = join(ROOT, 'node_modules');

function fail(msg) {
  process.stderr.write(`package-deb: ${msg}\n`);
  process.exit(1);
}

function parseArgs(argv) {
  let out = join(ROOT, 'dist', 'deb');
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--out' && argv[i + 1]) out = resolve(argv[++i]);
    else fail(`unknown argument ${JSON.stringify(argv[i])} (usage: package-deb.mjs [--out <dir>])`);
  }
  return { out };
}

const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));

/** npm's 1.2.3-rc.1 sorts after 1.2.3 in dpkg unless the hyphen becomes a tilde. */
function debianVersion(v) {
  if (!/^\d+\.\d+\.\d+(-[0-9A-Za-z.]+)?$/.test(v)) fail(`package.json version ${JSON.stringify(v)} is not x.y.z[-pre]`);
  return v.replace('-', '~');
}

/** `nodejs` versions the native addons work with: the building Node.js major, at least the engines floor. */
function nodeDepends() {
  const major = Number(process.versions.node.split('.')[0]);
  const floor = major === 20 ? '20.18.1' : `${major}`;
  return `nodejs (>= ${floor}), nodejs (<< ${major + 1})`;
}

// Files each external package needs at run time; the rest of its folder is
// build input (better-sqlite3's SQLite sources and object files are 27 MB).
const TRIM = {
  'better-sqlite3': ['package.json', 'LICENSE', 'lib', 'build/Release/better_sqlite3.node'],
  pkcs11js: ['package.json', 'LICENSE', 'index.js', 'build/Release/pkcs11.node'],
};
// Install-time only: better-sqlite3 fetches a prebuilt addon with it.
const INSTALL_ONLY = new Set(['prebuild-install']);

/** The folder Node would load `name` from, seen from `fromDir` (a package folder, or node_modules' parent). */
function findPackage(name, fromDir) {
  for (let dir = fromDir; ; dir = dirname(dir)) {
    const candidate = join(dir, 'node_modules', name);
    if (existsSync(join(candidate, 'package.json'))) return candidate;
    if (dir === ROOT || dirname(dir) === dir) return undefined;
  }
}

/** Every package folder `name` needs at run time (dependencies, and optional ones that are installed). */
function closure(name, fromDir, seen = new Map()) {
  const dir = findPackage(name, fromDir);
  if (!dir) return seen;
  if (seen.has(dir)) return seen;
  seen.set(dir, name);
  const p = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
  for (const dep of Object.keys(p.dependencies ?? {})) {
    if (INSTALL_ONLY.has(dep)) continue;
    if (!findPackage(dep, dir)) fail(`${name} needs ${dep}, which is not installed (run npm ci)`);
    closure(dep, dir, seen);
  }
  for (const dep of Object.keys(p.optionalDependencies ?? {})) closure(dep, dir, seen);
  return seen;
}

function copyPackage(src, name, stageModules) {
  const dest = join(stageModules, relative(NODE_MODULES, src));
  const keep = TRIM[name];
  if (keep) {
    for (const f of keep) {
      if (!existsSync(join(src, f))) fail(`${name} has no ${f} (is it built? run npm ci)`);
      mkdirSync(dirname(join(dest, f)), { recursive: true });
      cpSync(join(src, f), join(dest, f), { recursive: true });
    }
    return;
  }
  // Nested node_modules are packages of their own, copied when the closure reaches them.
  cpSync(src, dest, { recursive: true, filter: (s) => relative(src, s).split('/')[0] !== 'node_modules' || relative(src, s) === '' });
}

/** Directories 0755, files 0644, the listed executables 0755; owners come from --root-owner-group. */
function normaliseModes(dir, executables) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    if (entry.isSymbolicLink()) continue;
    if (entry.isDirectory()) {
      chmodSync(p, 0o755);
      normaliseModes(p, executables);
    } else chmodSync(p, executables.has(p) ? 0o755 : 0o644);
  }
}

function dirSize(dir) {
  let total = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    if (entry.isDirectory()) total += dirSize(p);
    else if (!entry.isSymbolicLink()) total += statSync(p).size;
  }
  return total;
}

function write(path, text, mode = 0o644) {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, text);
  chmodSync(path, mode);
}

const SYSUSERS = `# The keyhaven key server's account (keyhaven-server.service runs as it).
# The KMS plugin runs as root, like kube-apiserver, and does not use it.
u keyhaven - "keyhaven key manager" /var/lib/keyhaven /usr/sbin/nologin
`;

const TMPFILES = `# Configuration readable by the key server's group, not by everyone: it may
# name credentials. State (root key, database) is private to its owner.
d /etc/keyhaven 0750 root keyhaven -
d /var/lib/keyhaven 0700 keyhaven keyhaven -
`;

const POSTINST = `#!/bin/sh
set -e

if [ "$1" = configure ]; then
  # Native addons in /usr/lib/keyhaven/node_modules were built for one Node.js
  # major version (see Depends); a node installed outside dpkg is not checked
  # by it, so say so here rather than at the first start.
  if ! command -v node >/dev/null 2>&1; then
    echo "keyhaven: warning: no node on PATH; /usr/bin/keyhaven needs Node.js @NODE_MAJOR@" >&2
  elif [ "$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null)" != "@NODE_MAJOR@" ]; then
    echo "keyhaven: warning: node on PATH is $(node --version 2>/dev/null); this package's native modules need Node.js @NODE_MAJOR@" >&2
  fi

  if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers keyhaven.conf
  elif ! getent passwd keyhaven >/dev/null; then
    # Without systemd (a container): the same account as /usr/lib/sysusers.d/keyhaven.conf.
    getent group keyhaven >/dev/null || groupadd --system keyhaven
    useradd --system --gid keyhaven --home-dir /var/lib/keyhaven --no-create-home \\
      --shell /usr/sbin/nologin --comment "keyhaven key manager" keyhaven
  fi

  if command -v systemd-tmpfiles >/dev/null 2>&1; then
    systemd-tmpfiles --create keyhaven.conf
  else
    install -d -m 0750 -o root -g keyhaven /etc/keyhaven
    install -d -m 0700 -o keyhaven -g keyhaven /var/lib/keyhaven
  fi

  # Units are not enabled or started: the plugin needs a store (keyhaven init)
  # and /etc/keyhaven/plugin.yaml first (docs/install-kubeadm.md).
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
  fi
fi
exit 0
`;

const PRERM = `#!/bin/sh
set -e

# On removal only: an upgrade keeps the plugin serving kube-apiserver, and the
# new files are used from the next restart.
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl stop keyhaven-plugin.service keyhaven-server.service || true
fi
exit 0
`;

const POSTRM = `#!/bin/sh
set -e

if [ "$1" = purge ]; then
  # /var/lib/keyhaven may hold the root key and the key store: without them no
  # Secret encrypted through the plugin can be read again, so purge never
  # deletes them. Empty folders go; so does nothing else. The keyhaven account
  # stays, as files may still belong to it.
  rmdir /var/lib/keyhaven 2>/dev/null || true
  rmdir /etc/keyhaven 2>/dev/null || true
  if [ -d /var/lib/keyhaven ] || [ -d /etc/keyhaven ]; then
    echo "keyhaven: kept /etc/keyhaven and /var/lib/keyhaven (keys and configuration); remove them yourself if they are no longer needed" >&2
  fi
fi
if [ "$1" = remove ] || [ "$1" = purge ]; then
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
  fi
fi
exit 0
`;

function control({ version, arch, installedSize }) {
  const optional = ['pkcs11js', '@aws-sdk/client-kms'].filter((n) => findPackage(n, ROOT));
  return [
    `Package: keyhaven`,
    `Version: ${version}`,
    `Architecture: ${arch}`,
    `Maintainer: keyhaven maintainers <maintainers@users.noreply.r-seed-7b041801.example>`,
    `Installed-Size: ${installedSize}`,
    `Depends: ${nodeDepends()}, passwd`,
    `Section: admin`,
    `Priority: optional`,
    `Description: ${pkg.description}`,
    ` keyhaven stores and rotates keys, and its KMS plugin encrypts Kubernetes`,
    ` Secrets for kube-apiserver on control-plane nodes. This package installs`,
    ` /usr/bin/keyhaven, the keyhaven-plugin and keyhaven-server systemd units`,
    ` (not enabled), the keyhaven system account and /etc/keyhaven and`,
    ` /var/lib/keyhaven. Optional providers included: ${optional.length ? optional.join(', ') : 'none'}.`,
    '',
  ].join('\n');
}

function main() {
  const { out } = parseArgs(process.argv.slice(2));
  const bundle = join(ROOT, 'dist', 'bundle', 'main.js');
  if (!existsSync(bundle)) fail('dist/bundle/main.js is missing; run "npm run build" first');
  const version = debianVersion(pkg.version);
  const arch = execFileSync('dpkg', ['--print-architecture'], { encoding: 'utf8' }).trim();

  const stage = join(out, `keyhaven_${version}_${arch}.stage`);
  rmSync(stage, { recursive: true, force: true });
  const lib = join(stage, 'usr', 'lib', 'keyhaven');
  mkdirSync(lib, { recursive: true });

  // The runtime: bin/keyhaven runs dist/bundle/main.js (no dist/.tsbuildinfo here, so never the tsc output).
  for (const f of ['bin', 'dist/bundle', 'proto', 'package.json', 'LICENSE']) {
    cpSync(join(ROOT, f), join(lib, f), { recursive: true });
  }
  const modules = join(lib, 'node_modules');
  const packages = new Map();
  closure('better-sqlite3', ROOT, packages);
  for (const optional of ['pkcs11js', '@aws-sdk/client-kms']) closure(optional, ROOT, packages);
  for (const [dir, name] of packages) copyPackage(dir, name, modules);

  mkdirSync(join(stage, 'usr', 'bin'), { recursive: true });
  symlinkSync('../lib/keyhaven/bin/keyhaven', join(stage, 'usr', 'bin', 'keyhaven'));

  // The units as in deploy/, with the packaged binary's path.
  for (const unit of ['keyhaven-plugin.service', 'keyhaven-server.service']) {
    const text = readFileSync(join(ROOT, 'deploy', unit), 'utf8').replaceAll('/usr/local/bin/keyhaven', '/usr/bin/keyhaven');
    if (!text.includes('ExecStart=/usr/bin/keyhaven ')) fail(`deploy/${unit} has no ExecStart=/usr/local/bin/keyhaven to rewrite`);
    write(join(stage, 'lib', 'systemd', 'system', unit), text);
  }
  write(join(stage, 'usr', 'lib', 'sysusers.d', 'keyhaven.conf'), SYSUSERS);
  write(join(stage, 'usr', 'lib', 'tmpfiles.d', 'keyhaven.conf'), TMPFILES);

  // The remote drop-in is an example: installed under /lib/systemd/system it
  // would apply to every node and lift the plugin's loopback-only restriction.
  const doc = join(stage, 'usr', 'share', 'doc', 'keyhaven');
  const examples = join(doc, 'examples');
  mkdirSync(join(examples, 'keyhaven-plugin.service.d'), { recursive: true });
  for (const f of ['plugin.yaml', 'plugin-remote.yaml', 'server.yaml']) copyFileSync(join(ROOT, 'deploy', f), join(examples, f));
  copyFileSync(join(ROOT, 'deploy', 'keyhaven-plugin.service.d', 'remote.conf'), join(examples, 'keyhaven-plugin.service.d', 'remote.conf'));
  copyFileSync(join(ROOT, 'README.md'), join(doc, 'README.md'));
  write(join(doc, 'copyright'), `keyhaven is licensed under the Apache License, Version 2.0.\nThe full text is in /usr/lib/keyhaven/LICENSE and /usr/share/common-licenses/Apache-2.0.\n`);

  const executables = new Set([join(lib, 'bin', 'keyhaven')]);
  normaliseModes(stage, executables);
  chmodSync(stage, 0o755);

  const installedSize = Math.ceil(dirSize(stage) / 1024);
  const nodeMajor = process.versions.node.split('.')[0];
  const debian = join(stage, 'DEBIAN');
  write(join(debian, 'control'), control({ version, arch, installedSize }));
  write(join(debian, 'postinst'), POSTINST.replaceAll('@NODE_MAJOR@', nodeMajor), 0o755);
  write(join(debian, 'prerm'), PRERM, 0o755);
  write(join(debian, 'postrm'), POSTRM, 0o755);
  chmodSync(debian, 0o755);

  const deb = join(out, `keyhaven_${version}_${arch}.deb`);
  execFileSync('dpkg-deb', ['--build', '--root-owner-group', '-Zxz', stage, deb], { stdio: ['ignore', 'ignore', 'inherit'] });
  rmSync(stage, { recursive: true, force: true });
  const mb = (n) => `${(n / 1024 / 1024).toFixed(1)} MB`;
  process.stdout.write(`${deb} (${mb(statSync(deb).size)}, ${mb(installedSize * 1024)} installed)\n`);
}

main();
