import { Command, CommanderError } from 'commander';
import { PACKAGE_VERSION } from '../paths.js';
import { registerApp } from './commands/app.js';
import { registerApproval } from './commands/approval.js';
import { registerAudit } from './commands/audit.js';
import { registerDev } from './commands/dev.js';
import { registerInit } from './commands/init.js';
import { registerK8s } from './commands/k8s.js';
import { registerKey } from './commands/key.js';
import { registerLogin } from './commands/login.js';
import { registerOperator } from './commands/operator.js';
import { registerPlugin } from './commands/plugin.js';
import { registerServer } from './commands/server.js';
import { registerUser } from './commands/user.js';
import { reportError } from './exit.js';

/** The keyhaven command: parse, run one action, exit once with its code. */
export async function main(argv: string[]): Promise<number> {
  // Everything keyhaven creates (sockets, databases, key files) is private by default.
  process.umask(0o077);
  let action: Promise<number> | undefined;
  const run = (fn: () => Promise<number>) => {
    action = fn();
  };
  const program = new Command('keyhaven')
    .description('keyhaven: a self-hosted key manager and Kubernetes KMS plugin')
    .version(PACKAGE_VERSION)
    .exitOverride()
    .showHelpAfterError('(run with --help for usage)');
  registerDev(program, run);
  registerInit(program, run);
  registerServer(program, run);
  registerPlugin(program, run);
  registerLogin(program, run);
  registerOperator(program, run);
  registerKey(program, run);
  registerApp(program, run);
  registerUser(program, run);
  registerApproval(program, run);
  registerAudit(program, run);
  registerK8s(program, run);
  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      // --help and --version end here too, with code 0.
      return e.exitCode === 0 ? 0 : 2;
    }
    return reportError(e);
  }
  if (!action) return 0;
  try {
    return await action;
  } catch (e) {
    return reportError(e);
  }
}
