// The etcd reading layer: a live etcd or a snapshot file, read-only, paged.
export type { EtcdEntry, EtcdSource } from './types.js';
export { openLiveEtcd, type LiveEtcdOptions } from './live.js';
export { openSnapshot, type SnapshotOptions } from './snapshot.js';
