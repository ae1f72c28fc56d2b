/**
 * Where an object lives, read from its etcd key the way kube-apiserver lays
 * keys out: `<prefix>/<resource>/<namespace>/<name>` for namespaced objects,
 * `<prefix>/<resource>/<name>` for cluster-wide ones, and
 * `<prefix>/<group>/<resource>/...` for resources of API groups stored under
 * their group's name (custom resources, apiregistration.k8s.io). A group
 * always has a dot; a core resource never does.
 */
export interface ObjectPath {
  /** `secrets`, `configmaps`, or `<group>/<resource>`. */
  readonly resource: string;
  /** Segments after the resource: [namespace, name] or [name]. */
  readonly rest: readonly string[];
}

export function objectPath(prefix: string, key: string): ObjectPath {
  const base = prefix.endsWith('/') ? prefix : `${prefix}/`;
  const tail = key.startsWith(base) ? key.slice(base.length) : key.replace(/^\/+/, '');
  const parts = tail.split('/');
  const first = parts[0] ?? '';
  if (first.includes('.') && parts.length > 1) return { resource: `${first}/${parts[1]}`, rest: parts.slice(2) };
  return { resource: first, rest: parts.slice(1) };
}

/** `namespace/name` for a namespaced object, else the name (or the rest of the key). */
export function objectName(p: ObjectPath): string {
  return p.rest.join('/');
}

/** The etcd key prefix of everything under an apiserver prefix: `/registry` reads `/registry/…`, never `/registryX`. */
export function keyPrefix(prefix: string): string {
  return prefix.endsWith('/') ? prefix : `${prefix}/`;
}
