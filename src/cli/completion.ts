import type { Command } from 'commander';
import { KeyhavenError } from '../errors.js';

// Shell completion scripts generated from commander's command tree, so a new
// command or option completes without editing a hand-written script.

interface Node {
  /** Command path without the program name: "", "key", "key rotate". */
  readonly path: string;
  readonly subcommands: readonly string[];
  readonly options: readonly string[];
  /** Options that take a value (the next word is not a command). */
  readonly valued: readonly string[];
  readonly description: string;
}

function walk(c: Command, path: string, out: Node[]): void {
  const subs = c.commands.filter((s) => !(s as unknown as { _hidden?: boolean })._hidden);
  const options: string[] = [];
  const valued: string[] = [];
  for (const o of c.options) {
    if (o.hidden) continue;
    for (const f of [o.long, o.short]) {
      if (!f) continue;
      options.push(f);
      if (o.required || o.optional) valued.push(f);
    }
  }
  options.push('--help');
  out.push({ path, subcommands: subs.map((s) => s.name()), options, valued, description: c.description() });
  for (const s of subs) walk(s, path ? `${path} ${s.name()}` : s.name(), out);
}

const SHELLS = ['bash', 'zsh', 'fish'] as const;
type Shell = (typeof SHELLS)[number];

function q(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

function bash(nodes: readonly Node[]): string {
  const words = nodes.map((n) => `    ${q(n.path)}) words=${q([...n.subcommands, ...n.options].join(' '))} ;;`).join('\n');
  const valued = nodes
    .filter((n) => n.valued.length)
    .map((n) => `    ${q(n.path)}) case "$2" in ${n.valued.join('|')}) return 0 ;; esac ;;`)
    .join('\n');
  return `# keyhaven bash completion: source <(keyhaven completion bash)
_keyhaven() {
  local cur="\${COMP_WORDS[COMP_CWORD]}" prev="" path="" w i words
  # The command path: the known command words typed so far.
  for ((i = 1; i < COMP_CWORD; i++)); do
    w="\${COMP_WORDS[i]}"
    if [[ -n "$prev" ]]; then prev=""; continue; fi
    if _keyhaven_valued "$path" "$w"; then prev="$w"; continue; fi
    [[ "$w" == -* ]] && continue
    _keyhaven_node "\${path:+$path }$w" && path="\${path:+$path }$w"
  done
  if [[ -z "$prev" ]] && _keyhaven_valued "$path" "\${COMP_WORDS[COMP_CWORD-1]}"; then prev="\${COMP_WORDS[COMP_CWORD-1]}"; fi
  if [[ -n "$prev" ]]; then
    if [[ "$prev" == --context ]]; then
      COMPREPLY=($(compgen -W "$(keyhaven context list -q 2>/dev/null)" -- "$cur"))
    else
      COMPREPLY=($(compgen -f -- "$cur"))
    fi
    return 0
  fi
  if [[ "$path" == "context use" || "$path" == "context delete" ]] && [[ "$cur" != -* ]]; then
    COMPREPLY=($(compgen -W "$(keyhaven context list -q 2>/dev/null)" -- "$cur"))
    return 0
  fi
  words="$(_keyhaven_words "$path")"
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
_keyhaven_words() {
  local words=""
  case "$1" in
${words}
  esac
  printf '%s' "$words"
}
_keyhaven_valued() {
  case "$1" in
${valued}
  esac
  return 1
}
_keyhaven_node() {
  case "$1" in
    ${nodes
      .filter((n) => n.path)
      .map((n) => q(n.path))
      .join('|')}) return 0 ;;
  esac
  return 1
}
complete -o default -F _keyhaven keyhaven
`;
}

function zsh(nodes: readonly Node[]): string {
  // zsh runs the bash function through bashcompinit: one tree walk, one behaviour.
  return `#compdef keyhaven
# keyhaven zsh completion: source <(keyhaven completion zsh)
autoload -U +X bashcompinit && bashcompinit
${bash(nodes)}`;
}

function fish(nodes: readonly Node[]): string {
  const lines = ['# keyhaven fish completion: keyhaven completion fish | source', 'complete -c keyhaven -f'];
  const top = nodes.find((n) => n.path === '')!;
  for (const n of nodes) {
    const parts = n.path ? n.path.split(' ') : [];
    // Seen every word of this path, and none of its subcommands yet.
    const conds = parts.map((p) => `__fish_seen_subcommand_from ${p}`);
    const seenSub = n.subcommands.length ? [`not __fish_seen_subcommand_from ${n.subcommands.join(' ')}`] : [];
    const cond = n.path === '' ? '__fish_use_subcommand' : [...conds, ...seenSub].join('; and ');
    for (const s of n.subcommands) {
      const child = nodes.find((c) => c.path === (n.path ? `${n.path} ${s}` : s));
      lines.push(`complete -c keyhaven -n ${q(cond)} -a ${q(s)} -d ${q((child?.description ?? '').split('\n')[0]!.slice(0, 80))}`);
    }
    if (!n.path) continue;
    const optCond = [...conds].join('; and ');
    for (const o of n.options) {
      if (top.options.includes(o) && o !== '--help') continue;
      const flag = o.startsWith('--') ? `-l ${o.slice(2)}` : `-s ${o.slice(1)}`;
      lines.push(`complete -c keyhaven -n ${q(optCond)} ${flag}${n.valued.includes(o) ? ' -r' : ''}`);
    }
  }
  return `${lines.join('\n')}\n`;
}

/** The completion script for a shell, from the program's registered commands. */
export function completionScript(program: Command, shell: string): string {
  if (!(SHELLS as readonly string[]).includes(shell)) throw new KeyhavenError('invalid_argument', `the shell must be one of ${SHELLS.join(', ')}, not ${JSON.stringify(shell)}`);
  const nodes: Node[] = [];
  walk(program, '', nodes);
  return { bash, zsh, fish }[shell as Shell](nodes);
}

export function registerCompletion(program: Command, run: (fn: () => Promise<number>) => void): void {
  program
    .command('completion')
    .description('Print a shell completion script for bash, zsh or fish')
    .argument('<shell>', 'bash, zsh or fish')
    .addHelpText(
      'after',
      `
  bash:  source <(keyhaven completion bash)       (or save it under ~/.local/share/bash-completion/completions/keyhaven)
  zsh:   source <(keyhaven completion zsh)        (in ~/.zshrc, after compinit)
  fish:  keyhaven completion fish | source        (or save it as ~/.config/fish/completions/keyhaven.fish)`,
    )
    .action((shell: string) =>
      run(async () => {
        process.stdout.write(completionScript(program, shell));
        return 0;
      }),
    );
}
