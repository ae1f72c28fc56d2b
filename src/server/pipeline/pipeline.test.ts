import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { Principal } from '../../access/access.js';
import type { Role } from '../../access/roles.js';
import { dsmDialect } from '../dsm/dialect.js';
import { nativeDialect } from '../native/dialect.js';
import { vaultDialect } from '../vault/dialect.js';
import { allowed, isAccessRule } from './auth.js';
import { dialectOfPath } from './dialect.js';

const user = (roles: Role[]): Principal => ({ id: 'u', name: 'u', kind: 'user', roles, via: 'session' }) as Principal;
const app: Principal = { id: 'a', name: 'a', kind: 'app', roles: [], via: 'api_key' } as Principal;

describe('pipeline pieces', () => {
  it('dialectOfPath: whole path segments of each dialect\'s prefixes, native otherwise', () => {
    const dialects = [vaultDialect, dsmDialect];
    const cases: [string, string][] = [
      ['/v1/transit', 'vault'],
      ['/v1/transit/keys/k1', 'vault'],
      ['/v1/transit?list=true', 'vault'],
      ['/v1/auth/token/lookup-self', 'vault'],
      ['/v1/transitx', 'native'],
      ['/v1/auth/login', 'native'],
      ['/sys/v1/session/auth', 'dsm'],
      ['/crypto/v1', 'dsm'],
      ['/crypto/v1x', 'native'],
      ['/v1/keys/k1', 'native'],
      ['', 'native'],
    ];
    for (const [path, want] of cases) assert.equal(dialectOfPath(dialects, nativeDialect, path).name, want, path);
  });

  it('allowed: public for all, anyPrincipal for the signed-in, roles for users holding one, apps for apps', () => {
    const admin = user(['security-admin']);
    const keyAdmin = user(['key-admin']);
    const none = user([]);
    const table: [Parameters<typeof allowed>[0], (Principal | undefined)[], (Principal | undefined)[]][] = [
      [{ public: true }, [undefined, admin, app], []],
      [{ anyPrincipal: true }, [admin, none, app], [undefined]],
      [{ roles: ['key-admin'] }, [keyAdmin], [undefined, admin, none, app]],
      [{ roles: ['key-admin'], apps: 'granted' }, [keyAdmin, app], [undefined, admin, none]],
      [{ apps: 'granted' }, [app], [undefined, admin, keyAdmin]],
    ];
    for (const [rule, yes, no] of table) {
      for (const p of yes) assert.equal(allowed(rule, p), true, `${JSON.stringify(rule)} lets ${p?.name ?? 'anonymous'} in`);
      for (const p of no) assert.equal(allowed(rule, p), false, `${JSON.stringify(rule)} keeps ${p ? JSON.stringify(p.roles) + p.kind : 'anonymous'} out`);
    }
  });

  it('isAccessRule: the four rule forms, nothing else', () => {
    for (const ok of [{ public: true }, { public: true, sealedOk: true }, { anyPrincipal: true }, { roles: ['auditor'] }, { roles: ['auditor'], apps: 'granted' }, { apps: 'granted' }]) assert.equal(isAccessRule(ok), true, JSON.stringify(ok));
    for (const bad of [undefined, null, {}, { public: 'yes' }, { roles: [] }, { roles: 'auditor' }, { roles: ['auditor'], apps: 'all' }, { apps: true }]) assert.equal(isAccessRule(bad), false, JSON.stringify(bad));
  });
});
