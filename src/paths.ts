import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

// Compiled code runs from dist/src/, so the package root is two levels up.
export const PACKAGE_ROOT = fileURLToPath(new URL('../../', import.meta.url));

export const PACKAGE_VERSION: string = (JSON.parse(readFileSync(`${PACKAGE_ROOT}package.json`, 'utf8')) as { version: string }).version;
