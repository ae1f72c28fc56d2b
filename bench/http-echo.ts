// A bare node:http server: reads the request body and answers a constant JSON
// body of a given size, the ceiling a Node HTTP server reaches on this machine.
// Paths ending in /encrypt and /decrypt get bodies the size of the key
// server's answers to them.
// Usage: node dist/bench/http-echo.js ENCRYPT_BYTES DECRYPT_BYTES [crypto]
// With "crypto", an encrypt call also does the per-call cryptography the key
// server cannot skip (a random nonce, AES-256-GCM of the request's plaintext,
// one SHA-256 as for an audit record's link) and nothing else: no framework,
// no authentication, no audit write. It is the floor under the key server's
// encrypt figures on this machine.
// Prints {"url": "http://127.0.0.1:PORT"} once listening.
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

/** A JSON object of exactly `bytes` bytes, shaped like {"<field>":"xxx…","version":1}. */
function paddedJson(field: string, bytes: number): Buffer {
  const bare = JSON.stringify({ [field]: '', version: 1 });
  const pad = Math.max(0, bytes - bare.length);
  return Buffer.from(JSON.stringify({ [field]: 'x'.repeat(pad), version: 1 }));
}

function main(): void {
  const enc = Number(process.argv[2]);
  const dec = Number(process.argv[3]);
  if (!Number.isInteger(enc) || !Number.isInteger(dec) || enc <= 0 || dec <= 0) {
    process.stderr.write('usage: http-echo ENCRYPT_BYTES DECRYPT_BYTES [crypto]\n');
    process.exit(2);
  }
  const crypto = process.argv[4] === 'crypto';
  const key = randomBytes(32);
  const encBody = paddedJson('ciphertext', enc);
  const decBody = paddedJson('plaintext', dec);
  const headers = (body: Buffer) => ({ 'content-type': 'application/json; charset=utf-8', 'content-length': String(body.length) });
  const encHeaders = headers(encBody);
  const decHeaders = headers(decBody);

  const server = createServer({ keepAliveTimeout: 60_000 }, (req, res) => {
    // Drain the body before answering, as any real handler must.
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => {
      if (crypto) chunks.push(c);
    });
    req.on('end', () => {
      const url = req.url ?? '';
      if (crypto && url.endsWith('/encrypt')) {
        const { plaintext } = JSON.parse(Buffer.concat(chunks).toString()) as { plaintext: string };
        const iv = randomBytes(12);
        const c = createCipheriv('aes-256-gcm', key, iv);
        const ct = Buffer.concat([iv, c.update(Buffer.from(plaintext, 'base64')), c.final(), c.getAuthTag()]);
        const link = createHash('sha256').update(JSON.stringify({ op: 'encrypt', t: new Date().toISOString(), n: ct.length })).digest('hex');
        const text = `kh:v1:${ct.toString('base64')}`;
        const bare = JSON.stringify({ ciphertext: text, version: 1, link });
        // Padded to the key server's answer size, as the plain echo is.
        const body = bare.length >= enc ? bare : JSON.stringify({ ciphertext: text, version: 1, link, pad: 'x'.repeat(Math.max(0, enc - bare.length - 9)) });
        res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'content-length': String(Buffer.byteLength(body)) }).end(body);
      } else if (url.endsWith('/encrypt')) {
        res.writeHead(200, encHeaders).end(encBody);
      } else if (url.endsWith('/decrypt')) {
        res.writeHead(200, decHeaders).end(decBody);
      } else {
        res.writeHead(404).end();
      }
    });
  });
  server.listen(0, '127.0.0.1', () => {
    const { port } = server.address() as AddressInfo;
    process.stdout.write(`${JSON.stringify({ url: `http://127.0.0.1:${port}` })}\n`);
  });
  const stop = () => server.close(() => process.exit(0)).closeAllConnections();
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
