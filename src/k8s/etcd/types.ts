/** One key of etcd as read. `value` is the stored bytes, exactly. */
export interface EtcdEntry {
  /** The key as UTF-8 (Kubernetes keys are ASCII; any other byte decodes to U+FFFD). */
  key: string;
  value: Buffer;
  modRevision: number;
}

/** A read-only view of an etcd keyspace: a live cluster, or a snapshot file served for the time of a read. */
export interface EtcdSource {
  /** A description for output and errors, never holding a credential: `etcd https://127.0.0.1:2379` or `snapshot backup.db`. */
  readonly label: string;
  /**
   * When the contents are from, if not now: a snapshot's file time (ISO 8601). A copied file's time is
   * later than the snapshot's, never earlier.
   */
  readonly takenAt?: string;
  /** Pages of entries under prefix, in key order, all at one revision (the first page's), `pageSize` keys at a time, so a large store never loads at once. */
  pages(prefix: string, pageSize?: number): AsyncIterable<EtcdEntry[]>;
  /** How many keys are under prefix (count_only), for the progress bar. */
  count(prefix: string): Promise<number>;
  close(): Promise<void>;
}
