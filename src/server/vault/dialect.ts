import type { Dialect } from '../pipeline/dialect.js';
import { VAULT_PREFIXES, vaultErrorPayload, vaultNoRoute, vaultToken } from './envelope.js';

// Vault's error shape ({"errors": [...]} with Vault's statuses), its 405 for
// a known path taken with another method, and X-Vault-Token, which Vault
// reads before Authorization.

const JSON_TYPE = 'application/json';

export const vaultDialect: Dialect = {
  name: 'vault',
  prefixes: VAULT_PREFIXES,
  error: (code, message) => ({ ...vaultErrorPayload(code, message), type: JSON_TYPE }),
  notFound: (_method, url) => {
    const { status, message } = vaultNoRoute(url);
    return { status, type: JSON_TYPE, body: JSON.stringify({ errors: [message] }), result: status === 405 ? 'invalid_argument' : 'not_found' };
  },
  credentials: (req, access) => {
    const token = vaultToken(req);
    return token === undefined ? undefined : access.authenticate(token);
  },
};
