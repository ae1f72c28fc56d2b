import { Document } from 'yaml';
import { KeyhavenError } from '../errors.js';

export interface EncryptionConfigOptions {
  /** KMS provider name; it becomes part of every etcd value (`k8s:enc:kms:v2:<name>:`). */
  name: string;
  /** `unix:///absolute/path` or `unix:///@abstract-name`. */
  endpoint: string;
  /** Per-call deadline as a Go duration; the apiserver's default is 3s. */
  timeout?: string;
  /** Resources to encrypt; default ["secrets"]. */
  resources?: string[];
}

const DEFAULT_TIMEOUT = '3s';
const DEFAULT_RESOURCES: readonly string[] = ['secrets'];

// The apiserver only forbids ':' (it separates the name in the etcd prefix);
// a narrower charset keeps the name safe in shells, logs and file names too.
const PROVIDER_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const MAX_NAME = 253;
// sun_path is 108 bytes on Linux, one of which is the trailing NUL (or, for an
// abstract socket, the leading NUL that replaces '@').
const MAX_SOCKET_PATH_BYTES = 107;
// Go's time.ParseDuration syntax, restricted to positive values.
const GO_DURATION = /^(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+$/;
const DURATION_PART = /(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)/g;
const UNIT_MS: Readonly<Record<string, number>> = { ns: 1e-6, us: 1e-3, µs: 1e-3, μs: 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
// A resource is `secrets`, `configmaps`, `deployments.apps`, `*.apps` or `*.*`.
const RESOURCE = /^(?:\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)(?:\.(?:\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?))*$/;

function invalid(field: string, message: string): KeyhavenError {
  return new KeyhavenError('invalid_argument', `${field}: ${message}`);
}

function validateProviderName(name: unknown): string {
  if (typeof name !== 'string' || name.length === 0) throw invalid('name', 'the KMS provider name must not be empty');
  if (name.length > MAX_NAME) throw invalid('name', `the KMS provider name must be at most ${MAX_NAME} characters`);
  if (name.includes(':')) {
    throw invalid('name', 'the KMS provider name must not contain ":" (the apiserver uses it as a separator in the etcd prefix k8s:enc:kms:v2:<name>:)');
  }
  if (!PROVIDER_NAME.test(name)) {
    throw invalid('name', 'the KMS provider name may hold only letters, digits, ".", "_" and "-", starting with a letter or digit');
  }
  return name;
}

/** Accepts `unix:///absolute/path` or `unix:///@abstract-name`; returns it unchanged. */
function validateEndpoint(endpoint: unknown): string {
  if (typeof endpoint !== 'string' || endpoint.length === 0) throw invalid('endpoint', 'the socket endpoint must not be empty');
  if (!endpoint.startsWith('unix://')) {
    throw invalid('endpoint', 'the socket endpoint must be unix:///absolute/path or unix:///@abstract-name (the apiserver reaches KMS plugins only over a unix socket)');
  }
  const path = endpoint.slice('unix://'.length);
  if (!path.startsWith('/')) {
    throw invalid('endpoint', 'the socket path must be absolute: write unix:///absolute/path (three slashes)');
  }
  // The apiserver parses the endpoint as a URL, so '?', '#' and '%' would
  // silently change the path it dials.
  if (/[\s?#%\\]/.test(path) || /[\u0000-\u001f\u007f]/.test(path)) {
    throw invalid('endpoint', 'the socket path must not contain whitespace, control characters, "?", "#", "%" or "\\"');
  }
  if (path.startsWith('/@')) {
    const abstract = path.slice(2);
    if (abstract.length === 0) throw invalid('endpoint', 'the abstract socket name after "@" must not be empty');
    if (Buffer.byteLength(abstract) > MAX_SOCKET_PATH_BYTES - 1) {
      throw invalid('endpoint', `the abstract socket name must be at most ${MAX_SOCKET_PATH_BYTES - 1} bytes`);
    }
    return endpoint;
  }
  const segments = path.split('/').slice(1);
  if (path.endsWith('/') || segments.some((s) => s === '' || s === '.' || s === '..')) {
    throw invalid('endpoint', 'the socket path must be a normalised absolute file path (no "//", ".", ".." or trailing "/")');
  }
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH_BYTES) {
    throw invalid('endpoint', `the socket path must be at most ${MAX_SOCKET_PATH_BYTES} bytes (the unix socket address limit)`);
  }
  return endpoint;
}

/** Parses a positive Go duration ("3s", "500ms", "1m30s") into milliseconds. */
export function parseGoDuration(value: string): number | undefined {
  if (!GO_DURATION.test(value)) return undefined;
  let ms = 0;
  for (const m of value.matchAll(DURATION_PART)) ms += Number(m[1]) * UNIT_MS[m[2]!]!;
  return ms;
}

function validateTimeout(timeout: unknown): string {
  if (typeof timeout !== 'string') throw invalid('timeout', 'the timeout must be a Go duration such as 3s, 500ms or 1m');
  const ms = parseGoDuration(timeout);
  if (ms === undefined) {
    throw invalid('timeout', `${JSON.stringify(timeout.slice(0, 40))} is not a Go duration such as 3s, 500ms or 1m`);
  }
  // Below a millisecond every call would time out; the apiserver would never reach the plugin.
  if (ms < 1) throw invalid('timeout', 'the timeout must be at least 1ms');
  return timeout;
}

function validateResources(resources: unknown): string[] {
  if (!Array.isArray(resources) || resources.length === 0) throw invalid('resources', 'give at least one resource, such as secrets');
  const seen = new Set<string>();
  for (const r of resources) {
    if (typeof r !== 'string' || !RESOURCE.test(r)) {
      throw invalid('resources', `${JSON.stringify(String(r).slice(0, 60))} is not a resource name such as secrets, configmaps or *.apps`);
    }
    if (seen.has(r)) throw invalid('resources', `${r} is listed twice`);
    seen.add(r);
  }
  return [...seen];
}

/** Renders the kube-apiserver EncryptionConfiguration for one keyhaven provider. */
export function renderEncryptionConfig(o: EncryptionConfigOptions): string {
  const name = validateProviderName(o.name);
  const endpoint = validateEndpoint(o.endpoint);
  const timeout = validateTimeout(o.timeout ?? DEFAULT_TIMEOUT);
  const resources = validateResources(o.resources ?? [...DEFAULT_RESOURCES]);

  const doc = new Document({
    apiVersion: 'apiserver.config.k8s.io/v1',
    kind: 'EncryptionConfiguration',
    resources: [
      {
        resources,
        providers: [{ kms: { apiVersion: 'v2', name, endpoint, timeout } }, { identity: {} }],
      },
    ],
  });
  doc.commentBefore = [
    ' kube-apiserver EncryptionConfiguration for the keyhaven KMS plugin.',
    ' Save it on every control-plane node (for example as',
    ' /etc/kubernetes/enc/encryption-config.yaml, mode 0600) and start kube-apiserver with',
    ' --encryption-provider-config=<that path>; mount its directory and the socket directory',
    ' into the kube-apiserver pod at the same paths.',
    ' The first provider encrypts new writes. identity stays last so data written',
    ' before encryption was enabled stays readable. Never rename the provider:',
    ' the name is stored in every encrypted value and is how the apiserver finds',
    ' the provider that can decrypt it.',
  ].join('\n');
  return doc.toString();
}
