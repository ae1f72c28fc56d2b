import * as assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parse } from 'yaml';
import { KeyhavenError } from '../errors.js';
import { readFileSync } from 'node:fs';
import { PACKAGE_ROOT, PACKAGE_VERSION } from '../paths.js';
import { DEFAULT_IMAGE, renderStaticPod, type StaticPodOptions } from './static-pod.js';

interface Probe {
  httpGet: { host: string; path: string; port: number };
}
interface Container {
  name: string;
  image: string;
  command: string[];
  livenessProbe: Probe;
  readinessProbe: Probe;
  resources: { requests: Record<string, string>; limits?: unknown };
  securityContext: { runAsUser: number; readOnlyRootFilesystem: boolean; allowPrivilegeEscalation: boolean };
  volumeMounts: { name: string; mountPath: string; readOnly?: boolean }[];
}
interface Pod {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace: string };
  spec: {
    hostNetwork: boolean;
    priorityClassName: string;
    containers: Container[];
    volumes: { name: string; hostPath?: { path: string; type: string }; emptyDir?: unknown }[];
  };
}

function render(o: StaticPodOptions = {}): { pod: Pod; c: Container } {
  const pod = parse(renderStaticPod(o)) as Pod;
  assert.equal(pod.spec.containers.length, 1);
  return { pod, c: pod.spec.containers[0]! };
}

function hostPath(pod: Pod, c: Container, mountPath: string): { path: string; type: string; readOnly: boolean } {
  const mount = c.volumeMounts.find((m) => m.mountPath === mountPath);
  assert.ok(mount, `a mount at ${mountPath}`);
  const vol = pod.spec.volumes.find((v) => v.name === mount.name);
  assert.ok(vol?.hostPath, `a hostPath volume for ${mountPath}`);
  return { ...vol.hostPath, readOnly: mount.readOnly === true };
}

function assertInvalid(o: StaticPodOptions, field: string): void {
  assert.throws(
    () => renderStaticPod(o),
    (e: unknown) => {
      assert.ok(e instanceof KeyhavenError, 'throws a KeyhavenError');
      assert.equal(e.code, 'invalid_argument');
      assert.match(e.message, new RegExp(`^${field}:`), `message names ${field}: ${e.message}`);
      return true;
    },
  );
}

describe('renderStaticPod', () => {
  it('renders a kube-system static pod with the defaults', () => {
    const { pod, c } = render();
    assert.equal(pod.apiVersion, 'v1');
    assert.equal(pod.kind, 'Pod');
    assert.equal(pod.metadata.name, 'keyhaven-plugin');
    assert.equal(pod.metadata.namespace, 'kube-system');
    assert.equal(pod.spec.hostNetwork, true);
    assert.equal(pod.spec.priorityClassName, 'system-node-critical');
    assert.equal(c.image, `localhost/keyhaven:${PACKAGE_VERSION}`);
    assert.equal(c.image, DEFAULT_IMAGE);
    assert.deepEqual(c.command, ['keyhaven', 'plugin', '--config', '/etc/keyhaven/plugin.yaml']);
    assert.deepEqual(hostPath(pod, c, '/etc/keyhaven/plugin.yaml'), { path: '/etc/keyhaven/plugin.yaml', type: 'File', readOnly: true });
    assert.deepEqual(hostPath(pod, c, '/var/run/keyhaven'), { path: '/var/run/keyhaven', type: 'DirectoryOrCreate', readOnly: false });
    assert.deepEqual(hostPath(pod, c, '/var/lib/keyhaven'), { path: '/var/lib/keyhaven', type: 'DirectoryOrCreate', readOnly: false });
    assert.deepEqual(c.livenessProbe.httpGet, { host: '127.0.0.1', path: '/livez', port: 8787, scheme: 'HTTP' });
    assert.deepEqual(c.readinessProbe.httpGet, { host: '127.0.0.1', path: '/healthz', port: 8787, scheme: 'HTTP' });
    assert.equal(c.securityContext.runAsUser, 0);
    assert.equal(c.securityContext.readOnlyRootFilesystem, true);
    assert.equal(c.securityContext.allowPrivilegeEscalation, false);
    assert.ok(c.resources.requests['cpu'] && c.resources.requests['memory']);
    assert.equal(c.resources.limits, undefined);
  });

  it('uses the options it is given', () => {
    const { pod, c } = render({
      image: 'registry.example.com/sec/keyhaven:0.1.0@sha256:' + 'a'.repeat(64),
      configPath: '/opt/keyhaven/plugin.yaml',
      socketDir: '/run/keyhaven',
      dataDir: '/srv/keyhaven/',
      healthPort: 9443,
      name: 'kms',
    });
    assert.equal(pod.metadata.name, 'kms');
    assert.match(c.image, /^registry\.example\.com\/sec\/keyhaven:0\.1\.0@sha256:a{64}$/);
    assert.deepEqual(c.command, ['keyhaven', 'plugin', '--config', '/opt/keyhaven/plugin.yaml']);
    assert.equal(hostPath(pod, c, '/run/keyhaven').path, '/run/keyhaven');
    assert.equal(hostPath(pod, c, '/srv/keyhaven').path, '/srv/keyhaven');
    assert.equal(c.livenessProbe.httpGet.port, 9443);
    assert.equal(c.readinessProbe.httpGet.port, 9443);
  });

  it('defaults to the name the Containerfile documents building, with the package version', () => {
    const containerfile = readFileSync(`${PACKAGE_ROOT}Containerfile`, 'utf8');
    assert.ok(containerfile.includes(`podman build -t ${DEFAULT_IMAGE} .`), 'the Containerfile names the default image');
    assert.match(containerfile, new RegExp(`^ARG VERSION=${PACKAGE_VERSION.replace(/\./g, '\\.')}$`, 'm'), 'the image label carries the package version');
    assert.match(renderStaticPod(), /podman build -t localhost\/keyhaven:/);
    assert.doesNotMatch(renderStaticPod({ image: 'registry.example.com/keyhaven:1' }), /podman build/);
  });

  it('explains running as root in a comment', () => {
    assert.match(renderStaticPod(), /# root, like kube-apiserver/);
  });

  it('rejects a relative dataDir', () => assertInvalid({ dataDir: 'var/lib/keyhaven' }, 'dataDir'));
  it('rejects relative socketDir and configPath', () => {
    assertInvalid({ socketDir: './run' }, 'socketDir');
    assertInvalid({ configPath: 'plugin.yaml' }, 'configPath');
    assertInvalid({ socketDir: '/var/run/../keyhaven' }, 'socketDir');
    assertInvalid({ dataDir: '/' }, 'dataDir');
  });
  it('rejects port 0 and other bad ports', () => {
    assertInvalid({ healthPort: 0 }, 'healthPort');
    assertInvalid({ healthPort: 65536 }, 'healthPort');
    assertInvalid({ healthPort: 80.5 }, 'healthPort');
    assertInvalid({ healthPort: Number.NaN }, 'healthPort');
  });
  it('rejects a socket directory that holds or is held by the data directory', () => {
    assertInvalid({ socketDir: '/var/lib/keyhaven', dataDir: '/var/lib/keyhaven' }, 'dataDir');
    assertInvalid({ socketDir: '/var/lib/keyhaven/run', dataDir: '/var/lib/keyhaven' }, 'dataDir');
  });
  it('rejects a bad image and name', () => {
    assertInvalid({ image: '' }, 'image');
    assertInvalid({ image: 'keyhaven:0.1.0; rm -rf /' }, 'image');
    assertInvalid({ name: 'Keyhaven' }, 'name');
  });
});
