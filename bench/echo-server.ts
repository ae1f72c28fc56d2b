// A bare @grpc/grpc-js KMS v2 server with constant answers: the ceiling a
// Node gRPC server reaches on this machine, measured beside the plugin.
// Usage: node dist/bench/echo-server.js SOCKET_PATH
import { existsSync, unlinkSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { KMS_SERVER_OPTIONS } from '../src/plugin/kms-protos.js';

const socketArg = process.argv[2];
if (!socketArg) {
  process.stderr.write('usage: echo-server SOCKET_PATH\n');
  process.exit(2);
}
const socketPath = resolve(socketArg.replace(/^unix:(\/\/)?/, ''));

// dist/bench/echo-server.js -> repo root
const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const definition = protoLoader.loadSync(resolve(root, 'proto/v2/api.proto'), {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const pkg = grpc.loadPackageDefinition(definition) as unknown as {
  v2: { KeyManagementService: grpc.ServiceClientConstructor };
};

const KEY_ID = 'echo-key-'.padEnd(40, '0');
const CIPHERTEXT = Buffer.alloc(73, 0xab);
const PLAINTEXT = Buffer.alloc(32, 0xcd);

const handlers: grpc.UntypedServiceImplementation = {
  Status(_call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) {
    cb(null, { version: 'v2', healthz: 'ok', key_id: KEY_ID });
  },
  Encrypt(_call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) {
    cb(null, { ciphertext: CIPHERTEXT, key_id: KEY_ID, annotations: {} });
  },
  Decrypt(_call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) {
    cb(null, { plaintext: PLAINTEXT });
  },
};

// The plugin's own server options, so the ceiling is measured like for like.
const server = new grpc.Server(KMS_SERVER_OPTIONS);
server.addService(pkg.v2.KeyManagementService.service, handlers);

function removeSocket(): void {
  try {
    if (existsSync(socketPath)) unlinkSync(socketPath);
  } catch {
    // best effort
  }
}

removeSocket();
server.bindAsync(`unix://${socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => {
  if (err) {
    process.stderr.write(`echo-server: bind ${socketPath}: ${err.message}\n`);
    process.exit(1);
  }
  process.stdout.write('listening\n');
});

let stopping = false;
function stop(): void {
  if (stopping) return;
  stopping = true;
  const force = setTimeout(() => {
    server.forceShutdown();
    removeSocket();
    process.exit(0);
  }, 2000);
  force.unref();
  server.tryShutdown(() => {
    removeSocket();
    process.exit(0);
  });
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
