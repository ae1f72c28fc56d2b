import { createSocket, type Socket } from 'node:dgram';
import { closeSync, fsyncSync, openSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import type { AuditRow, Store } from '../storage/store.js';
import { checkpointLine, type Checkpoint } from './checkpoint.js';

// An extra copy of the audit log, outside the database: a JSON-lines file or
// a syslog collector. The database stays the record of truth (a request is
// answered once its record is stored there); sinks follow it by sequence
// number, so they also carry records written by key changes and, with
// PostgreSQL, by other servers sharing the database. Each sink also carries
// the signed checkpoints, as {"checkpoint":{...}} lines: a witness outside the
// database that "audit verify --witness" reads.

export interface AuditSink {
  write(rows: readonly AuditRow[]): Promise<void>;
  writeCheckpoint(c: Checkpoint): Promise<void>;
  close(): Promise<void>;
}

export function fileSink(path: string): AuditSink {
  // Append-only, private: records name principals and keys.
  const fd = openSync(path, 'a', 0o600);
  return {
    async write(rows) {
      if (rows.length === 0) return;
      writeSync(fd, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
      fsyncSync(fd);
    },
    async writeCheckpoint(c) {
      writeSync(fd, checkpointLine(c) + '\n');
      fsyncSync(fd);
    },
    async close() {
      closeSync(fd);
    },
  };
}

/** RFC 5424 over UDP, one datagram per record; the message is the record as JSON. */
export function syslogSink(opts: { address: string; facility: number; tag: string }): AuditSink {
  const at = opts.address.lastIndexOf(':');
  const host = opts.address.slice(0, at).replace(/^\[|\]$/g, '');
  const port = Number(opts.address.slice(at + 1));
  const socket: Socket = createSocket(host.includes(':') ? 'udp6' : 'udp4');
  socket.on('error', () => {});
  const pri = opts.facility * 8 + 6; // severity: informational
  const me = hostname() || '-';
  const send = (line: string) => new Promise<void>((resolve, reject) => socket.send(line, port, host, (e) => (e ? reject(e) : resolve())));
  return {
    async write(rows) {
      for (const r of rows) await send(`<${pri}>1 ${r.time} ${me} ${opts.tag} ${process.pid} audit - ${JSON.stringify(r)}`);
    },
    async writeCheckpoint(c) {
      await send(`<${pri}>1 ${c.time} ${me} ${opts.tag} ${process.pid} checkpoint - ${checkpointLine(c)}`);
    },
    async close() {
      socket.close();
    },
  };
}

/**
 * JSON lines on the process's standard output, for container log collectors:
 * records as the file sink writes them, checkpoints as {"checkpoint":{...}}.
 * The server's own log lines share the stream; readers tell them apart.
 */
export function stdoutSink(out: NodeJS.WritableStream = process.stdout): AuditSink {
  const put = (text: string) =>
    new Promise<void>((resolve, reject) => {
      out.write(text, (e) => (e ? reject(e) : resolve()));
    });
  return {
    async write(rows) {
      if (rows.length) await put(rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
    },
    async writeCheckpoint(c) {
      await put(checkpointLine(c) + '\n');
    },
    async close() {},
  };
}

export interface SinkPump {
  /** Forwards what is new now (also runs on a timer). */
  kick(): void;
  stop(): Promise<void>;
}

/**
 * Forwards records stored after start-up to the sink, in order. A failing
 * sink is retried on the next tick from the same record, so it misses none.
 */
export async function startSinkPump(store: Store, sink: AuditSink, opts: { intervalMs: number; onError: (e: unknown) => void }): Promise<SinkPump> {
  // Start after the newest record: history is in the database and in exports.
  let cursor = await store.lastAuditSeq();
  let running: Promise<void> | undefined;
  let again = false;
  const pump = async () => {
    for (;;) {
      const rows = await store.readAudit(cursor, 500);
      if (rows.length === 0) return;
      await sink.write(rows);
      cursor = rows[rows.length - 1]!.seq;
    }
  };
  const kick = () => {
    if (running) {
      again = true;
      return;
    }
    running = pump()
      .catch(opts.onError)
      .finally(() => {
        running = undefined;
        if (again) {
          again = false;
          kick();
        }
      });
  };
  const timer = setInterval(kick, opts.intervalMs);
  timer.unref();
  return {
    kick,
    async stop() {
      clearInterval(timer);
      while (running) await running;
      await pump().catch(opts.onError);
      await sink.close();
    },
  };
}
