import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import { createLogger } from '../log/logger.js';
import type { AuditDraft } from '../storage/store.js';
import { createOpsLog } from './ops-log.js';

function setup() {
  let text = '';
  const destination = new Writable({
    write(chunk, _enc, cb) {
      text += String(chunk);
      cb();
    },
  });
  const ops = createOpsLog(createLogger({ level: 'debug', destination }));
  const lines = () => text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, any>);
  return { ops, lines };
}

const rec = (r: Partial<AuditDraft> & { operation: string }, details?: Record<string, unknown>): AuditDraft => ({
  time: new Date().toISOString(),
  actor: 'system:seal',
  key_name: null,
  key_version: null,
  result: 'ok',
  request_id: null,
  ...r,
  details: details ? JSON.stringify(details) : null,
});

describe('operational log', () => {
  it('writes one line per event, at its level, and nothing for other records', () => {
    const { ops, lines } = setup();
    ops.stored([
      rec({ operation: 'crypto.encrypt', actor: 'app:a', request_id: 'r1' }, { status: 200, source: '127.0.0.1' }),
      rec({ operation: 'sys.init' }, { kind: 'keyfile', admin: 'admin', keyAdmin: 'keyadmin' }),
      rec({ operation: 'sys.init', actor: 'anonymous', request_id: 'r2' }, { status: 200, source: '127.0.0.1' }),
      rec({ operation: 'sys.unseal' }, { kind: 'keyfile' }),
      rec({ operation: 'sys.seal', actor: 'user:admin' }, { kind: 'keyfile', operatorSeal: true }),
      rec({ operation: 'sys.seal', actor: 'user:keyadmin', request_id: 'r3', result: 'permission_denied' }, { status: 403, source: '10.0.0.9' }),
      rec({ operation: 'auth.login', actor: 'anonymous', request_id: 'r4', result: 'unauthenticated' }, { status: 401, source: '10.0.0.9', user: 'bob' }),
      rec({ operation: 'auth.login', actor: 'anonymous', request_id: 'r5', result: 'unavailable' }, { status: 503, source: '10.0.0.9' }),
      rec({ operation: 'approval.request', actor: 'user:admin', key_name: 'k1' }, { approval: 'ap1', operation: 'key.delete' }),
      rec({ operation: 'approval.approve', actor: 'user:keyadmin' }, { approval: 'ap1', operation: 'key.delete', approvals: 1, required: 1 }),
      rec({ operation: 'approval.approve', actor: 'user:keyadmin', request_id: 'r6' }, { approval: 'ap1', executed: 'executed', status: 200 }),
      rec({ operation: 'approval.deny', actor: 'user:admin' }, { approval: 'ap2', operation: 'user.create' }),
      rec({ operation: 'key.rotate', actor: 'system:scheduler', key_name: 'k1', key_version: 3 }, { scheduled: true }),
      rec({ operation: 'key.rotate', actor: 'user:keyadmin', key_name: 'k1', key_version: 4 }),
    ]);
    const got = lines().map((l) => [l.level, l.event, l.msg]);
    assert.deepEqual(got, [
      ['info', 'init', 'server initialised'],
      ['info', 'unseal', 'server unsealed'],
      ['info', 'seal', 'server sealed'],
      ['warn', 'seal.refused', 'seal refused'],
      ['warn', 'signin.failed', 'sign-in failed'],
      ['info', 'approval.filed', 'approval request filed'],
      ['info', 'approval.approved', 'approval given'],
      ['info', 'approval.executed', 'approved request executed'],
      ['info', 'approval.denied', 'approval request denied'],
      ['info', 'key.rotated', 'key rotated by the scheduler'],
    ]);
    const l = lines();
    assert.deepEqual({ user: l[4]!.user, source: l[4]!.source, result: l[4]!.result }, { user: 'bob', source: '10.0.0.9', result: 'unauthenticated' });
    assert.deepEqual({ keyName: l[9]!.keyName, version: l[9]!.version }, { keyName: 'k1', version: 3 });
    assert.equal(l[0]!.component, 'ops');
  });

  it('lockouts and sink failures are warnings; a sink failure carries its error', () => {
    const { ops, lines } = setup();
    ops.signInLocked({ name: 'bob', source: '10.0.0.9', failures: 5, lockedUntil: '2026-01-01T00:00:00.000Z' });
    ops.signInLocked({ source: '10.0.0.9', failures: 6, lockedUntil: '2026-01-01T00:00:00.000Z' });
    ops.auditSinkFailed(Object.assign(new Error('EPIPE'), { code: 'EPIPE' }));
    const [a, b, c] = lines();
    assert.deepEqual([a!.level, a!.event, a!.user, a!.source, a!.failures], ['warn', 'signin.locked', 'bob', '10.0.0.9', 5]);
    assert.equal('user' in b!, false);
    assert.deepEqual([c!.level, c!.event, c!.err.message, c!.err.code], ['warn', 'audit.sink.failed', 'EPIPE', 'EPIPE']);
    assert.match(c!.err.stack, /Error: EPIPE/);
  });

  it('unreadable details still give the line', () => {
    const { ops, lines } = setup();
    ops.stored([{ ...rec({ operation: 'sys.seal', actor: 'user:admin' }), details: '{not json' }]);
    assert.equal(lines()[0]!.event, 'seal');
  });
});
