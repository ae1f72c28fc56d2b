import { createServer, type AddressInfo } from 'node:net';

/** A TCP port on 127.0.0.1 with nothing listening on it (bound once, then released): free to use, or refused when connected to. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}
