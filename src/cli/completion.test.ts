import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Command } from 'commander';
import { KeyhavenError } from '../errors.js';
import { completionScript } from './completion.js';

// The scripts come from the command tree: a command added later completes
// without anyone editing a script.

function tree(): Command {
  const p = new Command('keyhaven');
  const key = p.command('key').description('Manage keys');
  key.command('rotate').description('Rotate a key').option('--server <url>', 'server').option('--force', 'no prompt');
  key.command('hidden-one', { hidden: true });
  p.command('login').option('-o, --output <format>', 'text or json');
  return p;
}

describe('completionScript', () => {
  it('bash: every command path with its subcommands and options; value-taking options marked', () => {
    const s = completionScript(tree(), 'bash');
    assert.match(s, /^ {4}''\) words='key login --help' ;;$/m);
    assert.match(s, /^ {4}'key'\) words='rotate --help' ;;$/m);
    assert.match(s, /^ {4}'key rotate'\) words='--server --force --help' ;;$/m);
    assert.match(s, /^ {4}'key rotate'\) case "\$2" in --server\) return 0 ;; esac ;;$/m);
    assert.match(s, /^ {4}'login'\) case "\$2" in --output\|-o\) return 0 ;; esac ;;$/m);
    assert.doesNotMatch(s, /hidden-one/);
    assert.match(s, /^complete -o default -F _keyhaven keyhaven$/m);
  });

  it('zsh reuses the bash function through bashcompinit; fish gets one complete line per word', () => {
    assert.match(completionScript(tree(), 'zsh'), /^autoload -U \+X bashcompinit && bashcompinit$/m);
    const f = completionScript(tree(), 'fish');
    assert.match(f, /^complete -c keyhaven -n '__fish_use_subcommand' -a 'key' -d 'Manage keys'$/m);
    assert.match(f, /^complete -c keyhaven -n '__fish_seen_subcommand_from key; and not __fish_seen_subcommand_from rotate' -a 'rotate' -d 'Rotate a key'$/m);
    assert.match(f, /^complete -c keyhaven -n '__fish_seen_subcommand_from key; and __fish_seen_subcommand_from rotate' -l server -r$/m);
    assert.match(f, /^complete -c keyhaven -n '__fish_seen_subcommand_from key; and __fish_seen_subcommand_from rotate' -l force$/m);
  });

  it('an unknown shell is a precise error', () => {
    assert.throws(
      () => completionScript(tree(), 'tcsh'),
      (e: unknown) => e instanceof KeyhavenError && e.code === 'invalid_argument' && /bash, zsh, fish, not "tcsh"/.test(e.message),
    );
  });
});
