import { KeyhavenError } from './errors.js';

/**
 * pkcs11js (compiled from source) and @aws-sdk/client-kms (~17 MB) are
 * optionalDependencies: an install without a compiler, or one that left them
 * out, still runs every other feature. They are loaded only when a config
 * uses them, and a missing one is reported as the package to install.
 */

const NOT_FOUND = new Set(['MODULE_NOT_FOUND', 'ERR_MODULE_NOT_FOUND']);

/**
 * Whether `e` says the package itself is not installed. A package that is
 * there but fails inside (a native build for another Node, a missing file of
 * its own) is a different problem and keeps its own message.
 */
function isMissing(e: unknown, pkg: string): boolean {
  if (!(e instanceof Error)) return false;
  const code = (e as { code?: unknown }).code;
  if (typeof code !== 'string' || !NOT_FOUND.has(code)) return false;
  // require: "Cannot find module 'x'"; import: "Cannot find package 'x' imported from ...".
  const first = e.message.split('\n', 1)[0] ?? '';
  return first.includes(`'${pkg}'`) || first.includes(`'${pkg}/`);
}

/** The error for an optional package that could not be loaded; `who` names the feature ("the pkcs11 seal"). */
function loadError(e: unknown, pkg: string, who: string): KeyhavenError {
  if (isMissing(e, pkg)) {
    return new KeyhavenError('config_invalid', `${who} needs the npm package ${pkg} (npm install ${pkg})`);
  }
  const why = e instanceof Error ? (e.message.split('\n', 1)[0] ?? '') : String(e);
  return new KeyhavenError('config_invalid', `${who} needs the npm package ${pkg}, which is installed but failed to load: ${why}`, { cause: e });
}

/** Runs a synchronous `require` of an optional package (`load`), turning a failure into a KeyhavenError. */
export function requireOptional<T>(pkg: string, who: string, load: () => T): T {
  try {
    return load();
  } catch (e) {
    throw loadError(e, pkg, who);
  }
}

/**
 * Awaits a dynamic `import()` of an optional package. `load` is the literal
 * `() => import('pkg')`, so types and the bundler's externals still see it.
 */
export async function importOptional<T>(pkg: string, who: string, load: () => Promise<T>): Promise<T> {
  try {
    return await load();
  } catch (e) {
    throw loadError(e, pkg, who);
  }
}
