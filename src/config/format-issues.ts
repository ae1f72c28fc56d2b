import type { z } from 'zod';
import { KeyhavenError } from '../errors.js';

/** Turns schema issues into one readable message: "file: path.to.field: problem". */
export function configError(source: string, error: z.ZodError): KeyhavenError {
  const lines = error.issues.map((i) => {
    const path = i.path.length > 0 ? i.path.join('.') : '(top level)';
    return `  ${path}: ${i.message}`;
  });
  return new KeyhavenError('config_invalid', `invalid configuration in ${source}:\n${lines.join('\n')}`);
}
