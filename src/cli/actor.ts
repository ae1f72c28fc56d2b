import { userInfo } from 'node:os';

/** Who ran a CLI command, for the audit log: the local OS user. */
export function localActor(): string {
  try {
    return `cli:${userInfo().username}`;
  } catch {
    return `cli:uid:${process.getuid?.() ?? 'unknown'}`;
  }
}
