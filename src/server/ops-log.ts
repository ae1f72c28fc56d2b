import type { SignInLock } from '../access/access.js';
import type { Logger } from '../log/logger.js';
import type { AuditDraft } from '../storage/store.js';

// The key server's operational log: one pino line per event an operator
// watches for (init, seal, unseal, sign-in failures and lockouts, approvals,
// scheduled rotations, audit sink failures), each with a stable `event` name.
//
// Most lines come from the audit records as they are stored (the audit log's
// onStored notification), not from calls beside each operation: every such
// operation already writes exactly one record on every path (HTTP request,
// scheduler tick, start-up), with its actor, result and details, and a line is
// written only once its record is durable, so the log never reports something
// the audit log does not hold. Events that have no record of their own (a
// lockout, a sink failure) are explicit calls. Records never hold secrets
// (audit-log.ts), and only named fields are copied from them.

export interface OpsLog {
  /** The audit log's onStored listener: picks the records worth a line. */
  stored(records: readonly AuditDraft[]): void;
  /** A failed sign-in locked its (name, source) pair. */
  signInLocked(lock: SignInLock): void;
  /** The audit sink could not take records; the pump retries from the same record. */
  auditSinkFailed(err: unknown): void;
}

type Details = Record<string, string | number | boolean>;
type Line = (r: AuditDraft, d: Details, log: Logger) => void;

/** Fields of a request's record: who asked, from where, with what outcome. */
function request(r: AuditDraft, d: Details): Record<string, unknown> {
  return { actor: r.actor, ...(d.user !== undefined ? { user: d.user } : {}), source: d.source, result: r.result, requestId: r.request_id };
}

// Records written by the operation itself carry no request id; the request's
// own record (written by the pipeline when it answers) does: refusals are read
// from the latter, what happened from the former. Key names go out as
// `keyName`: `key` is a redacted field name (logger.ts).
const LINES = new Map<string, Line>(Object.entries({
  'sys.init': (r, d, log) => {
    if (r.request_id === null && r.result === 'ok') log.info({ event: 'init', kind: d.kind, admin: d.admin, keyAdmin: d.keyAdmin, ...(d.redone ? { redone: true } : {}) }, 'server initialised');
    else if (r.request_id !== null && r.result !== 'ok') log.warn({ event: 'init.refused', ...request(r, d) }, 'init refused');
  },
  'sys.unseal': (r, d, log) => {
    if (r.request_id === null && r.result === 'ok') {
      const broken = d.auditHeadBroken === true;
      const fields = { event: 'unseal', by: r.actor, kind: d.kind, ...(d.operatorSealLifted ? { operatorSealLifted: true } : {}), ...(broken ? { auditHeadBroken: true } : {}), ...(d.unsignedRecordsAdopted ? { unsignedRecordsAdopted: d.unsignedRecordsAdopted } : {}) };
      if (broken) log.warn(fields, 'server unsealed; the stored audit head does not match the chain (run keyhaven audit verify)');
      else log.info(fields, 'server unsealed');
    } else if (r.request_id !== null && r.result !== 'ok') log.warn({ event: 'unseal.refused', ...request(r, d) }, 'unseal refused');
  },
  'sys.seal': (r, d, log) => {
    if (r.request_id === null && r.result === 'ok') log.info({ event: 'seal', by: r.actor, kind: d.kind, ...(d.operatorSeal ? { operatorSeal: true } : {}) }, 'server sealed');
    else if (r.request_id !== null && r.result !== 'ok') log.warn({ event: 'seal.refused', ...request(r, d) }, 'seal refused');
  },
  'auth.login': (r, d, log) => {
    // Only refusals of the credentials: a refusal for load (unavailable) is counted by metrics, not logged per request.
    if (r.result === 'unauthenticated') log.warn({ event: 'signin.failed', ...request(r, d) }, 'sign-in failed');
    else if (r.result === 'too_many_attempts') log.warn({ event: 'signin.refused', ...request(r, d) }, 'sign-in refused: too many attempts (locked or rate-limited)');
  },
  'approval.request': (r, d, log) => {
    if (r.request_id === null) log.info({ event: 'approval.filed', approval: d.approval, operation: d.operation, by: r.actor, ...(r.key_name ? { keyName: r.key_name } : {}) }, 'approval request filed');
  },
  'approval.approve': (r, d, log) => {
    if (r.request_id === null) {
      log.info({ event: 'approval.approved', approval: d.approval, operation: d.operation, by: r.actor, approvals: d.approvals, required: d.required }, 'approval given');
    } else if (r.result === 'ok' && d.executed !== undefined) {
      if (d.executed === 'executed') log.info({ event: 'approval.executed', approval: d.approval, state: d.executed, requestId: r.request_id }, 'approved request executed');
      else log.warn({ event: 'approval.executed', approval: d.approval, state: d.executed, requestId: r.request_id }, 'approved request could not be executed');
    } else if (r.result !== 'ok') log.warn({ event: 'approval.refused', approval: d.approval, ...request(r, d) }, 'approval refused');
  },
  'approval.deny': (r, d, log) => {
    if (r.request_id === null) log.info({ event: 'approval.denied', approval: d.approval, operation: d.operation, by: r.actor }, 'approval request denied');
  },
  'approval.expire': (_r, d, log) => {
    log.info({ event: 'approval.expired', approval: d.approval, operation: d.operation }, 'approval request expired');
  },
  'key.rotate': (r, d, log) => {
    if (d.scheduled === true) log.info({ event: 'key.rotated', keyName: r.key_name, version: r.key_version, by: r.actor, scheduled: true }, 'key rotated by the scheduler');
  },
  'key.destroy': (r, d, log) => {
    if (d.scheduled === true) log.info({ event: 'key.destroyed', keyName: r.key_name, by: r.actor, scheduled: true }, 'scheduled key destruction done');
  },
} satisfies Record<string, Line>));

function parseDetails(raw: string | null): Details {
  if (raw === null) return {};
  try {
    const d = JSON.parse(raw) as unknown;
    return d !== null && typeof d === 'object' ? (d as Details) : {};
  } catch {
    return {};
  }
}

export function createOpsLog(logger: Logger): OpsLog {
  const log = logger.child({ component: 'ops' });
  return {
    stored(records) {
      for (const r of records) {
        // Most records (crypto calls) are no event: one lookup, no parsing.
        const line = LINES.get(r.operation);
        if (!line) continue;
        try {
          line(r, parseDetails(r.details), log);
        } catch (e) {
          // A log line never fails the write it follows.
          log.error({ err: e, operation: r.operation }, 'could not write the log line of an audit record');
        }
      }
    },
    signInLocked(lock) {
      log.warn({ event: 'signin.locked', ...(lock.name !== undefined ? { user: lock.name } : {}), source: lock.source, failures: lock.failures, lockedUntil: lock.lockedUntil }, 'sign-in locked for this name and source after repeated failures');
    },
    auditSinkFailed(err) {
      log.warn({ event: 'audit.sink.failed', err }, 'audit sink write failed; will retry from the same record');
    },
  };
}
