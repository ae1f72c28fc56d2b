import { accessSync, constants } from 'node:fs';
import { KeyhavenError } from '../errors.js';
import { openLiveEtcd, openSnapshot, type EtcdSource } from '../k8s/etcd/index.js';

/** Flags naming where a scan or recovery reads: a live etcd or a snapshot file. */
export interface EtcdFlags {
  etcd?: string;
  cacert?: string;
  cert?: string;
  key?: string;
  snapshot?: string;
}

export const ETCD_HELP = `
Reads a live etcd (--etcd https://HOST:2379 with --cacert, --cert and --key,
the apiserver's own etcd client files) or an etcd snapshot file (--snapshot
FILE, restored into a temporary folder and served by a temporary etcd on
127.0.0.1, both removed afterwards; needs etcd and etcdctl on PATH). Reads
only: nothing is ever written to etcd.`;

/** The flag checks that need no etcd: done before anything else starts (a recovery, a snapshot restore). */
export function checkEtcdFlags(f: EtcdFlags): void {
  if ((f.etcd === undefined) === (f.snapshot === undefined)) throw new KeyhavenError('invalid_argument', 'give exactly one of --etcd URL or --snapshot FILE');
  if (f.snapshot !== undefined) {
    if (f.cacert || f.cert || f.key) throw new KeyhavenError('invalid_argument', '--cacert, --cert and --key go with --etcd, not --snapshot');
    try {
      accessSync(f.snapshot, constants.R_OK);
    } catch (e) {
      throw new KeyhavenError('invalid_argument', `cannot read the snapshot ${f.snapshot}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
    }
  }
  if ((f.cert === undefined) !== (f.key === undefined)) throw new KeyhavenError('invalid_argument', '--cert and --key go together');
}

export async function openEtcdFromFlags(f: EtcdFlags): Promise<EtcdSource> {
  checkEtcdFlags(f);
  if (f.snapshot !== undefined) return openSnapshot({ file: f.snapshot });
  return openLiveEtcd({ endpoint: f.etcd!, ...(f.cacert ? { caFile: f.cacert } : {}), ...(f.cert ? { certFile: f.cert, keyFile: f.key! } : {}) });
}
