import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Option, type Command } from 'commander';
import { actorName, hashNewPassword, SYSTEM } from '../../access/access.js';
import { generatePassword } from '../../access/secrets.js';
import { DEFAULT_KEY_NAME, parsePluginConfig } from '../../config/plugin-config.js';
import { parseServerConfig } from '../../config/server-config.js';
import { KeyhavenError } from '../../errors.js';
import { renderEncryptionConfig } from '../../k8s/encryption-config.js';
import { createLogger } from '../../log/logger.js';
import { prettyStdout } from '../../log/pretty.js';
import { startPlugin } from '../../plugin/run-plugin.js';
import type { Services } from '../../server/core.js';
import { startServer } from '../../server/run-server.js';
import { defaultDataDir } from '../data-dir.js';
import { serveUntilSignal } from '../signals.js';

const DEV_ADMIN = 'dev-admin';
const DEV_APP = 'dev-plugin';

function writeApiKey(file: string, apiKey: string): void {
  writeFileSync(file, `${apiKey}\n`, { mode: 0o600 });
  chmodSync(file, 0o600);
}

/** The plugin's saved API key still authenticates (a rotation or a deleted file makes a new one). */
async function apiKeyStillValid(s: Services, file: string): Promise<boolean> {
  if (!existsSync(file)) return false;
  try {
    const p = await s.access.authenticate(readFileSync(file, 'utf8').trim());
    return p.kind === 'app' && p.name === DEV_APP;
  } catch {
    return false;
  }
}

/**
 * Makes sure the dev admin, the key and the plugin's app exist. Returns the
 * admin password when the admin was created now (it is shown once).
 */
async function ensureDevState(s: Services, initPassword: string | undefined, apiKeyFile: string): Promise<{ password?: string; keyCreated: boolean }> {
  let password = initPassword;
  const users = await s.access.list('user');
  if (!users.some((u) => u.name === DEV_ADMIN)) {
    password = generatePassword();
    await s.access.createUser(SYSTEM, { name: DEV_ADMIN, password, roles: [] });
  }
  // One person does everything in dev; production separates these roles.
  const admin = users.find((u) => u.name === DEV_ADMIN);
  if (!admin || admin.roles.length < 3) await s.access.setRoles(SYSTEM, DEV_ADMIN, ['security-admin', 'key-admin', 'auditor']);
  let keyCreated = false;
  try {
    await s.keys.get(DEFAULT_KEY_NAME);
  } catch (e) {
    if (!(e instanceof KeyhavenError && e.code === 'not_found')) throw e;
    await s.keys.create(DEFAULT_KEY_NAME, actorName(SYSTEM));
    keyCreated = true;
  }
  const apps = await s.access.list('app');
  const app = apps.find((a) => a.name === DEV_APP);
  if (!app) {
    const created = await s.access.createApp(SYSTEM, { name: DEV_APP, description: 'the KMS plugin of keyhaven dev' });
    writeApiKey(apiKeyFile, created.apiKey);
  } else if (!(await apiKeyStillValid(s, apiKeyFile))) {
    writeApiKey(apiKeyFile, (await s.access.rotateAppKey(SYSTEM, DEV_APP)).apiKey);
  }
  if (!app?.grants?.some((g) => g.key === DEFAULT_KEY_NAME)) await s.access.setGrant(SYSTEM, DEV_APP, DEFAULT_KEY_NAME, ['encrypt', 'decrypt']);
  return { ...(password ? { password } : {}), keyCreated };
}

/**
 * A way back in for the dev admin when the password shown on the first run is
 * lost: a new one, printed once. Only on a store keyhaven dev made (its admin
 * and plugin app exist); a server's store is refused untouched.
 */
async function resetDevAdmin(s: Services): Promise<string> {
  const [users, apps] = await Promise.all([s.access.list('user'), s.access.list('app')]);
  if (!users.some((u) => u.name === DEV_ADMIN) || !apps.some((a) => a.name === DEV_APP)) {
    throw new KeyhavenError('failed_precondition', `--reset-admin-password works only on a store made by keyhaven dev (with user ${DEV_ADMIN} and app ${DEV_APP}); this one is not: reset passwords on a server with "keyhaven user reset-password"`);
  }
  const password = generatePassword();
  // Also ends the admin's sessions and clears a sign-in lockout: the reason to reset may be failed guesses.
  await s.access.resetPassword(SYSTEM, DEV_ADMIN, await hashNewPassword(password));
  await s.access.unlock(SYSTEM, DEV_ADMIN);
  return password;
}

export function registerDev(program: Command, run: (fn: () => Promise<number>) => void): void {
  program
    .command('dev')
    .description('Run the key server (SQLite, key file in ./.keyhaven) and the KMS plugin using it over HTTP as app dev-plugin, printing the EncryptionConfiguration to use')
    .option('--data-dir <dir>', 'state folder (default $KEYHAVEN_DATA_DIR or ./.keyhaven)')
    .option('--listen <host:port>', 'key server address', '127.0.0.1:8200')
    .option('--health-addr <host:port>', 'plugin address for /healthz, /livez, /metrics', '127.0.0.1:8787')
    .option('--log-level <level>', 'log level', 'info')
    .option('--reset-admin-password', `give ${DEV_ADMIN} a new password and print it (a dev store only; the old password and sessions stop working)`)
    .addOption(new Option('--log-format <format>', 'log lines: pretty (readable) or json (one JSON object per line, as keyhaven server and keyhaven plugin write)').choices(['pretty', 'json']).default('pretty'))
    .addHelpText('after', `\nThe ${DEV_ADMIN} password is shown once, on the run that creates the state folder. Lost it? Stop
keyhaven dev and start it again with --reset-admin-password (npm start -- --reset-admin-password):
it sets a new password, prints it once and ends the old sessions. Nothing stores the password.`)
    .action((flags: { dataDir?: string; listen: string; healthAddr: string; logLevel: string; logFormat: 'pretty' | 'json'; resetAdminPassword?: boolean }) =>
      run(async () => {
        const dataDir = flags.dataDir ?? defaultDataDir();
        const socket = `unix://${join(dataDir, 'kms.sock')}`;
        const serverCfg = parseServerConfig(
          {
            listen: flags.listen,
            storage: { sqlite: { path: join(dataDir, 'keyhaven.db') } },
            seal: { keyfile: { path: join(dataDir, 'root.key') } },
            log: { level: flags.logLevel },
          },
          'keyhaven dev',
        );
        const apiKeyFile = join(dataDir, `${DEV_APP}.apikey`);
        const logger = createLogger({ level: flags.logLevel, ...(flags.logFormat === 'pretty' ? { destination: prettyStdout() } : {}) });
        const server = await startServer(serverCfg, logger, { singlePersonDev: true });
        const core = server.core;
        let plugin;
        let state;
        try {
          const created = !core.status().initialized;
          const init = created ? await core.init({ adminName: DEV_ADMIN, confirmed: true }) : undefined;
          // Checked before ensureDevState, which would make the dev users on any store.
          const reset = flags.resetAdminPassword && !created ? await resetDevAdmin(core.services()) : undefined;
          state = { created, keyAdmin: init?.keyAdmin, ...(await ensureDevState(core.services(), init?.admin.password ?? reset, apiKeyFile)) };
          // The production path: the plugin reaches the server over HTTP as app dev-plugin.
          const pluginCfg = parsePluginConfig(
            {
              socket,
              provider: { type: 'keyhaven', servers: [server.url], key: DEFAULT_KEY_NAME, cluster: 'dev', apiKeyFile },
              health: { address: flags.healthAddr },
              log: { level: flags.logLevel },
            },
            'keyhaven dev',
          );
          plugin = await startPlugin(pluginCfg, logger);
        } catch (e) {
          await server.close();
          throw e;
        }
        const h = plugin.health;
        const where = h ? `http://${h.address.includes(':') ? `[${h.address}]` : h.address}:${h.port}` : undefined;
        const banner = [
          '',
          `keyhaven dev: key server on ${server.url}, KMS plugin on ${socket}`,
          `  state:   ${dataDir} (${state.created ? 'created now' : 'reused'}; root.key, keyhaven.db)`,
          `  key:     ${DEFAULT_KEY_NAME}; the plugin uses it over HTTP as app "${DEV_APP}" (grants: encrypt, decrypt; API key in ${apiKeyFile})`,
          state.password
            ? `  admin:   ${DEV_ADMIN} / ${state.password}   (shown once; roles: security-admin, key-admin, auditor)`
            : `  admin:   ${DEV_ADMIN} (password shown on the run that created it; lost it? restart with --reset-admin-password)`,
          ...(state.keyAdmin ? [`  also:    ${state.keyAdmin.name} / ${state.keyAdmin.password}   (key-admin, as init makes on a real server; dev needs only ${DEV_ADMIN})`] : []),
          `  login:   ./bin/keyhaven login --server ${server.url} --name ${DEV_ADMIN}`,
          `  manage:  ./bin/keyhaven key list | rotate ${DEFAULT_KEY_NAME} | disable ${DEFAULT_KEY_NAME} | enable ${DEFAULT_KEY_NAME}`,
          `  api:     ${server.url}/v1/openapi.json   server metrics: ${server.url}/metrics`,
          where ? `  plugin:  ${where}/healthz   liveness: ${where}/livez   metrics: ${where}/metrics` : '  plugin health: off',
          '',
          'EncryptionConfiguration for kube-apiserver (--encryption-provider-config):',
          '',
          renderEncryptionConfig({ name: 'keyhaven', endpoint: socket, timeout: '3s' }),
          'Press Ctrl-C to stop.',
          '',
        ].join('\n');
        process.stderr.write(banner);
        const p = plugin;
        const code = await serveUntilSignal(async () => {
          await p.close();
          await server.close();
        }, logger);
        await new Promise<void>((r) => logger.flush(() => r()));
        return code;
      }),
    );
}
