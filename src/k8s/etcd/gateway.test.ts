import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { KeyhavenError } from '../../errors.js';
import { connectGateway, gatewaySource } from './gateway.js';
import type { EtcdEntry } from './types.js';

// The paging protocol against a scripted stand-in for etcd's gateway: what is
// asked (range, limit, revision) and how answers that are not etcd's are met.
// The real etcd is in test/etcd-source.test.ts.

type Answer = { status?: number; body: unknown };
const b64 = (s: string) => Buffer.from(s).toString('base64');
const kv = (key: string, value: string, rev = 5) => ({ key: b64(key), value: b64(value), mod_revision: String(rev) });

describe('gateway paging', () => {
  let server: Server;
  let origin = '';
  const asked: Record<string, unknown>[] = [];
  let answers: Answer[] = [];
  before(async () => {
    server = createServer((req, res) => {
      let body = '';
      req.on('data', (d: Buffer) => (body += d.toString()));
      req.on('end', () => {
        assert.equal(req.url, '/v3/kv/range');
        asked.push(JSON.parse(body) as Record<string, unknown>);
        const a = answers.shift() ?? { status: 500, body: 'no answer scripted' };
        res.writeHead(a.status ?? 200, { 'content-type': 'application/json' });
        res.end(typeof a.body === 'string' ? a.body : JSON.stringify(a.body));
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(() => server.close());

  const source = async () => gatewaySource('etcd test', await connectGateway({ origin, label: 'etcd test', tls: {}, timeoutMs: 5000 }));
  const all = async (prefix: string, size?: number) => {
    const src = await source();
    const pages: EtcdEntry[][] = [];
    try {
      for await (const p of src.pages(prefix, size)) pages.push(p);
    } finally {
      await src.close();
    }
    return pages;
  };

  it('asks for the prefix range, then from after the last key at the first revision', async () => {
    asked.length = 0;
    answers = [
      { body: { header: { revision: '42' }, kvs: [kv('/r/a', '1'), kv('/r/b', '2')], more: true, count: '3' } },
      { body: { header: { revision: '43' }, kvs: [kv('/r/c', '3', 7)], count: '1' } },
    ];
    const pages = await all('/r/', 2);
    assert.deepEqual(pages.map((p) => p.map((e) => [e.key, e.value.toString(), e.modRevision])), [[['/r/a', '1', 5], ['/r/b', '2', 5]], [['/r/c', '3', 7]]]);
    assert.deepEqual(asked, [
      { key: b64('/r/'), range_end: b64('/r0'), limit: 2 },
      { key: Buffer.from('/r/b\0').toString('base64'), range_end: b64('/r0'), limit: 2, revision: 42 },
    ]);
  });

  it('counts with count_only; an absent count is 0', async () => {
    asked.length = 0;
    answers = [{ body: { header: { revision: '1' }, count: '12' } }, { body: { header: { revision: '1' } } }];
    const src = await source();
    assert.equal(await src.count('/r/'), 12);
    assert.equal(await src.count('/none/'), 0);
    await src.close();
    assert.deepEqual(asked[0], { key: b64('/r/'), range_end: b64('/r0'), count_only: true });
  });

  it('refuses answers that are not etcd, and a "more" with no keys', async () => {
    const cases: [Answer, RegExp][] = [
      [{ body: 'not json' }, /does not look like etcd \(an answer that is not JSON/],
      [{ body: { kvs: [] } }, /without a header revision/],
      [{ body: { header: { revision: 'x' } } }, /revision is not a count/],
      [{ body: { header: { revision: '1' }, kvs: [{ key: 5 }] } }, /key is not base64/],
      [{ status: 404, body: 'Not Found' }, /HTTP 404/],
      [{ body: { header: { revision: '1' }, more: true } }, /said more keys follow but sent none/],
      [{ status: 400, body: { error: 'etcdserver: mvcc: required revision has been compacted', code: 11 } }, /compacted revision 0 while it was being read/],
      [{ status: 403, body: { message: 'etcdserver: permission denied', code: 7 } }, /refused the read: etcdserver: permission denied/],
    ];
    for (const [answer, pattern] of cases) {
      answers = [answer];
      await assert.rejects(all('/r/'), (e: unknown) => e instanceof KeyhavenError && pattern.test(e.message), String(pattern));
    }
  });
});
