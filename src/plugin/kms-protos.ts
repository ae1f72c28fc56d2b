import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { PACKAGE_ROOT } from '../paths.js';

// The KMS API definitions and gRPC server options, in a module of their own:
// test clients and the benchmark's echo server load them without the plugin
// and every provider behind it.

/** gRPC server options; the benchmark's echo server uses the same ones. */
export const KMS_SERVER_OPTIONS: grpc.ServerOptions = {
  // Annotations may total 32 KiB; nothing legitimate comes near this.
  'grpc.max_receive_message_length': 128 * 1024,
  'grpc.max_send_message_length': 128 * 1024,
  // channelz bookkeeping costs ~10% of a call's CPU and nothing here reads it.
  'grpc.enable_channelz': 0,
};

const PROTO_OPTIONS: protoLoader.Options = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

/** KMS v2 and v1beta1, from proto/ in the package. */
export function loadKmsProtos() {
  const root = fileURLToPath(new URL('proto/', `file://${PACKAGE_ROOT}`));
  const def = protoLoader.loadSync([`${root}v2/api.proto`, `${root}v1beta1/api.proto`], PROTO_OPTIONS);
  const pkg = grpc.loadPackageDefinition(def) as unknown as {
    v2: { KeyManagementService: grpc.ServiceClientConstructor };
    v1beta1: { KeyManagementService: grpc.ServiceClientConstructor };
  };
  return pkg;
}
