import protobuf from 'protobufjs';
import { KeyhavenError } from '../../errors.js';

// Message schemas are built with protobufjs's reflection API in code, not read
// from .proto files, so they work unchanged from dist/ and from the bundle.

const { Type, Field, MapField, Root, Writer } = protobuf;

export { Writer };

export function message(name: string, fields: [string, number, string, ('map' | 'repeated')?, string?][]): protobuf.Type {
  const t = new Type(name);
  for (const [fname, id, type, rule, keyType] of fields) {
    if (rule === 'map') t.add(new MapField(fname, id, keyType ?? 'string', type));
    else t.add(new Field(fname, id, type, rule === 'repeated' ? 'repeated' : undefined));
  }
  return t;
}

/** Builds the types in one root so they can refer to each other by name. */
export function defineTypes(types: protobuf.Type[]): void {
  const root = new Root();
  for (const t of types) root.add(t);
  root.resolveAll();
}

/** Decodes with `type`, turning protobufjs's errors (truncation, bad wire types) into a precise KeyhavenError. */
export function decodeMessage(type: protobuf.Type, bytes: Buffer, what: string): Record<string, unknown> {
  try {
    const m = type.decode(bytes);
    return type.toObject(m, { longs: Number, defaults: false }) as Record<string, unknown>;
  } catch (e) {
    const detail = e instanceof Error ? e.message : String(e);
    throw new KeyhavenError('invalid_argument', `${what} is not a valid ${type.name} protobuf message: ${detail}`, { cause: e });
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Go's proto3 rejects invalid UTF-8 in string fields; read them as bytes and check. */
export function strictUtf8(b: Buffer, what: string): string {
  try {
    return utf8.decode(b);
  } catch {
    throw new KeyhavenError('invalid_argument', `${what} is not valid UTF-8`);
  }
}
