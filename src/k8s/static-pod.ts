import { posix } from 'node:path';
import { Document, isMap, isScalar, type Node } from 'yaml';
import { KeyhavenError } from '../errors.js';
import { PACKAGE_VERSION } from '../paths.js';

export interface StaticPodOptions {
  image?: string;
  configPath?: string;
  socketDir?: string;
  dataDir?: string;
  healthPort?: number;
  name?: string;
}

/**
 * The name the repository's Containerfile is built as (docs/container.md). The
 * "localhost/" registry is one nobody can publish to: a node that lacks the
 * image fails to pull it instead of fetching a look-alike from a public
 * registry. Operators who push it to their own registry pass --image.
 */
export const DEFAULT_IMAGE = `localhost/keyhaven:${PACKAGE_VERSION}`;

const STATIC_POD_DEFAULTS = Object.freeze({
  image: DEFAULT_IMAGE,
  configPath: '/etc/keyhaven/plugin.yaml',
  socketDir: '/var/run/keyhaven',
  dataDir: '/var/lib/keyhaven',
  healthPort: 8787,
  name: 'keyhaven-plugin',
});

// An image reference: [registry[:port]/]path[:tag][@digest]; no whitespace or shell metacharacters.
const IMAGE = /^[A-Za-z0-9][A-Za-z0-9._\-/:@+]*$/;
// The pod name is a DNS-1123 label; the kubelet appends "-<node name>" for the mirror pod.
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

function invalid(field: string, message: string): KeyhavenError {
  return new KeyhavenError('invalid_argument', `${field}: ${message}`);
}

function absolutePath(field: string, value: unknown): string {
  if (typeof value !== 'string' || value.length === 0) throw invalid(field, 'must be an absolute path');
  if (!value.startsWith('/')) throw invalid(field, `${JSON.stringify(value.slice(0, 80))} must be an absolute path`);
  if (/[\u0000-\u001f\u007f]/.test(value)) throw invalid(field, 'must not contain control characters');
  const segments = value.split('/').slice(1);
  if (segments.some((s) => s === '.' || s === '..')) throw invalid(field, 'must not contain "." or ".." segments');
  const normal = posix.normalize(value).replace(/\/+$/, '');
  if (normal === '') throw invalid(field, 'must not be the root directory');
  return normal;
}

function within(child: string, parent: string): boolean {
  return child === parent || child.startsWith(parent + '/');
}

function validate(o: StaticPodOptions): Required<StaticPodOptions> {
  const image = o.image ?? STATIC_POD_DEFAULTS.image;
  if (typeof image !== 'string' || image.length > 512 || !IMAGE.test(image)) {
    throw invalid('image', 'must be an image reference such as registry.example.com/keyhaven:0.1.0');
  }
  const name = o.name ?? STATIC_POD_DEFAULTS.name;
  if (typeof name !== 'string' || name.length > 63 || !DNS_LABEL.test(name)) {
    throw invalid('name', 'must be a DNS-1123 label: at most 63 lowercase letters, digits or "-", starting and ending with a letter or digit');
  }
  const configPath = absolutePath('configPath', o.configPath ?? STATIC_POD_DEFAULTS.configPath);
  const socketDir = absolutePath('socketDir', o.socketDir ?? STATIC_POD_DEFAULTS.socketDir);
  const dataDir = absolutePath('dataDir', o.dataDir ?? STATIC_POD_DEFAULTS.dataDir);
  // The apiserver mounts the socket directory: it must never see the root key or the database.
  if (within(socketDir, dataDir) || within(dataDir, socketDir)) {
    throw invalid('dataDir', 'socketDir and dataDir must be separate directories, neither inside the other (kube-apiserver mounts the socket directory and must not see the key material)');
  }
  if (within(configPath, socketDir) || within(configPath, dataDir)) {
    throw invalid('configPath', 'must not lie inside socketDir or dataDir');
  }
  const healthPort = o.healthPort ?? STATIC_POD_DEFAULTS.healthPort;
  if (typeof healthPort !== 'number' || !Number.isInteger(healthPort) || healthPort < 1 || healthPort > 65535) {
    throw invalid('healthPort', 'must be an integer from 1 to 65535');
  }
  return { image, name, configPath, socketDir, dataDir, healthPort };
}

/** Puts a comment line above a map key, found by its path from the document root. */
function commentKey(doc: Document, path: readonly (string | number)[], comment: string): void {
  const parentPath = path.slice(0, -1);
  const key = path[path.length - 1];
  const parent = parentPath.length === 0 ? doc.contents : doc.getIn(parentPath, true);
  if (!isMap(parent)) throw new KeyhavenError('internal', `no map at ${parentPath.join('.')}`);
  const pair = parent.items.find((p) => isScalar(p.key) && p.key.value === key);
  if (!pair || !isScalar(pair.key)) throw new KeyhavenError('internal', `no key ${String(key)} at ${parentPath.join('.')}`);
  (pair.key as Node).commentBefore = comment;
}

/** Renders a kube-system static Pod manifest that runs `keyhaven plugin` on a control-plane node. */
export function renderStaticPod(o: StaticPodOptions = {}): string {
  const v = validate(o);
  const probe = (path: string, extra: Record<string, number>) => ({
    httpGet: { host: '127.0.0.1', path, port: v.healthPort, scheme: 'HTTP' },
    ...extra,
  });
  const c = ['spec', 'containers', 0];

  const doc = new Document({
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name: v.name,
      namespace: 'kube-system',
      labels: { component: v.name, tier: 'control-plane' },
    },
    spec: {
      hostNetwork: true,
      priority: 2000001000,
      priorityClassName: 'system-node-critical',
      securityContext: { seccompProfile: { type: 'RuntimeDefault' } },
      terminationGracePeriodSeconds: 30,
      containers: [
        {
          name: 'keyhaven',
          image: v.image,
          imagePullPolicy: 'IfNotPresent',
          command: ['keyhaven', 'plugin', '--config', v.configPath],
          livenessProbe: probe('/livez', { initialDelaySeconds: 10, periodSeconds: 10, timeoutSeconds: 5, failureThreshold: 6 }),
          readinessProbe: probe('/healthz', { periodSeconds: 10, timeoutSeconds: 5, failureThreshold: 3 }),
          resources: { requests: { cpu: '50m', memory: '96Mi' } },
          securityContext: {
            runAsUser: 0,
            runAsGroup: 0,
            readOnlyRootFilesystem: true,
            allowPrivilegeEscalation: false,
            capabilities: { drop: ['ALL'] },
          },
          volumeMounts: [
            { name: 'config', mountPath: v.configPath, readOnly: true },
            { name: 'socket-dir', mountPath: v.socketDir },
            { name: 'data-dir', mountPath: v.dataDir },
            { name: 'tmp', mountPath: '/tmp' },
          ],
        },
      ],
      volumes: [
        { name: 'config', hostPath: { path: v.configPath, type: 'File' } },
        { name: 'socket-dir', hostPath: { path: v.socketDir, type: 'DirectoryOrCreate' } },
        { name: 'data-dir', hostPath: { path: v.dataDir, type: 'DirectoryOrCreate' } },
        { name: 'tmp', emptyDir: { medium: 'Memory', sizeLimit: '16Mi' } },
      ],
    },
  });

  doc.commentBefore = [
    ' keyhaven KMS plugin as a static Pod. Save it as',
    ` /etc/kubernetes/manifests/${v.name}.yaml on every control-plane node.`,
    ` It runs: keyhaven plugin --config ${v.configPath}`,
    ' Host paths are mounted at the same paths, so the plugin config names host paths:',
    `   socket under ${v.socketDir}/ (kube-apiserver mounts this directory too),`,
    `   provider.dataDir ${v.dataDir} (root.key and keyhaven.db; keep it mode 0700),`,
    `   health.address 127.0.0.1:${v.healthPort} (the probes below use it; "off" breaks them).`,
    ' The image must be on the node already or pullable with the node\'s own registry',
    ' credentials: a static Pod cannot use imagePullSecrets.',
  ].join('\n');
  commentKey(doc, ['spec', 'hostNetwork'], ' health binds 127.0.0.1 on the host; the probes reach it there');
  commentKey(
    doc,
    [...c, 'image'],
    v.image === DEFAULT_IMAGE
      ? ' what `podman build -t ' + DEFAULT_IMAGE + ' .` makes from the Containerfile;\n import it on the node or set --image to your registry'
      : ' set with --image',
  );
  commentKey(doc, [...c, 'livenessProbe'], ' /livez: the process answers; a provider outage must not restart it');
  commentKey(doc, [...c, 'readinessProbe'], ' /healthz: a real encrypt/decrypt round trip through the provider');
  commentKey(doc, [...c, 'resources'], ' requests only: a Decrypt burst at apiserver start-up must not be throttled or OOM-killed');
  commentKey(
    doc,
    [...c, 'securityContext', 'runAsUser'],
    [
      ' root, like kube-apiserver in kubeadm: the socket (mode 0600 by default) must be',
      ' reachable by the apiserver, and root.key and keyhaven.db are owned by root.',
      ' With socketGroup set in the plugin config, add CHOWN to capabilities.add.',
    ].join('\n'),
  );
  commentKey(doc, [...c, 'volumeMounts'], ' /tmp is the only writable path besides the data and socket directories');
  return doc.toString();
}
