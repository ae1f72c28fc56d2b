import { Command, CommanderError } from 'commander';
import { PACKAGE_VERSION } from '../paths.js';
import { reportError } from './exit.js';

type Run = (fn: () => Promise<number>) => void;
type Register = (program: Command, run: Run) => void;

// Each command's module is imported only when that command runs: the server
// and plugin modules pull in fastify and gRPC, which a "key list" does not
// need. Help and unknown commands load them all, in this order.
const COMMANDS: ReadonlyArray<readonly [readonly string[], () => Promise<Register>]> = [
  [['dev'], async () => (await import('./commands/dev.js')).registerDev],
  [['init'], async () => (await import('./commands/init.js')).registerInit],
  [['server'], async () => (await import('./commands/server.js')).registerServer],
  [['plugin'], async () => (await import('./commands/plugin.js')).registerPlugin],
  [['login', 'logout', 'whoami', 'context'], async () => (await import('./commands/login.js')).registerLogin],
  [['operator'], async () => (await import('./commands/operator.js')).registerOperator],
  [['key'], async () => (await import('./commands/key.js')).registerKey],
  [['app'], async () => (await import('./commands/app.js')).registerApp],
  [['cluster'], async () => (await import('./commands/cluster.js')).registerCluster],
  [['user'], async () => (await import('./commands/user.js')).registerUser],
  [['approval'], async () => (await import('./commands/approval.js')).registerApproval],
  [['quorum'], async () => (await import('./commands/quorum.js')).registerQuorum],
  [['audit'], async () => (await import('./commands/audit.js')).registerAudit],
  [['k8s'], async () => (await import('./commands/k8s.js')).registerK8s],
  [['completion'], async () => (await import('./completion.js')).registerCompletion],
];

/** The keyhaven command: parse, run one action, exit once with its code. */
export async function main(argv: string[]): Promise<number> {
  // Everything keyhaven creates (sockets, databases, key files) is private by default.
  process.umask(0o077);
  let action: Promise<number> | undefined;
  const run: Run = (fn) => {
    action = fn();
  };
  const program = new Command('keyhaven')
    .description('keyhaven: a self-hosted key manager and Kubernetes KMS plugin')
    .version(PACKAGE_VERSION)
    // The program's own options (--version, --help) come before the command, so a
    // command may have a --version of its own (key retire-check --version N).
    .enablePositionalOptions()
    .exitOverride()
    .showHelpAfterError('(run with --help for usage)');
  const name = argv[2];
  // Completion walks the whole command tree, so it loads every command.
  const only = name === 'completion' ? [] : COMMANDS.filter(([names]) => name !== undefined && names.includes(name));
  const version = name === '--version' || name === '-V';
  if (!version) for (const [, load] of only.length ? only : COMMANDS) (await load())(program, run);
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
