import * as assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parse, parseDocument } from 'yaml';
import { KeyhavenError } from '../errors.js';
import { parseGoDuration, renderEncryptionConfig, type EncryptionConfigOptions } from './encryption-config.js';

interface Rendered {
  apiVersion: string;
  kind: string;
  resources: { resources: string[]; providers: Record<string, unknown>[] }[];
}

const base: EncryptionConfigOptions = { name: 'keyhaven', endpoint: 'unix:///var/run/keyhaven/kms.sock' };

function render(o: Partial<EncryptionConfigOptions>): Rendered {
  return parse(renderEncryptionConfig({ ...base, ...o })) as Rendered;
}

function assertInvalid(o: Partial<EncryptionConfigOptions>, field: string): void {
  assert.throws(
    () => renderEncryptionConfig({ ...base, ...o }),
    (e: unknown) => {
      assert.ok(e instanceof KeyhavenError, 'throws a KeyhavenError');
      assert.equal(e.code, 'invalid_argument');
      assert.match(e.message, new RegExp(`^${field}:`), `message names ${field}: ${e.message}`);
      return true;
    },
  );
}

describe('renderEncryptionConfig', () => {
  it('renders kms v2 first and identity last for secrets', () => {
    const out = render({});
    assert.equal(out.apiVersion, 'apiserver.config.k8s.io/v1');
    assert.equal(out.kind, 'EncryptionConfiguration');
    assert.equal(out.resources.length, 1);
    const entry = out.resources[0]!;
    assert.deepEqual(entry.resources, ['secrets']);
    assert.equal(entry.providers.length, 2);
    assert.deepEqual(entry.providers[0], {
      kms: { apiVersion: 'v2', name: 'keyhaven', endpoint: 'unix:///var/run/keyhaven/kms.sock', timeout: '3s' },
    });
    assert.deepEqual(entry.providers[1], { identity: {} });
  });

  it('carries the timeout and resources it is given', () => {
    const out = render({ timeout: '500ms', resources: ['secrets', 'configmaps', '*.apps'] });
    const entry = out.resources[0]!;
    assert.deepEqual(entry.resources, ['secrets', 'configmaps', '*.apps']);
    assert.equal((entry.providers[0] as { kms: { timeout: string } }).kms.timeout, '500ms');
    assert.deepEqual(entry.providers.at(-1), { identity: {} });
  });

  it('accepts an abstract socket', () => {
    const out = render({ endpoint: 'unix:///@keyhaven-kms' });
    assert.equal((out.resources[0]!.providers[0] as { kms: { endpoint: string } }).kms.endpoint, 'unix:///@keyhaven-kms');
  });

  it('starts with a comment saying where the file goes', () => {
    const text = renderEncryptionConfig(base);
    assert.match(text, /^# /);
    assert.match(text, /--encryption-provider-config/);
    assert.ok(parseDocument(text).errors.length === 0);
  });

  it('rejects a name with a colon', () => assertInvalid({ name: 'key:haven' }, 'name'));
  it('rejects an empty name', () => assertInvalid({ name: '' }, 'name'));
  it('rejects a name longer than 253 characters', () => assertInvalid({ name: 'a'.repeat(254) }, 'name'));
  it('rejects a name outside the safe charset', () => {
    assertInvalid({ name: 'key haven' }, 'name');
    assertInvalid({ name: 'keyhaven/kek' }, 'name');
    assertInvalid({ name: '-keyhaven' }, 'name');
  });
  it('accepts a 253-character name', () => {
    assert.equal((render({ name: 'a'.repeat(253) }).resources[0]!.providers[0] as { kms: { name: string } }).kms.name.length, 253);
  });

  it('rejects a relative socket path', () => {
    assertInvalid({ endpoint: 'unix://var/run/keyhaven/kms.sock' }, 'endpoint');
    assertInvalid({ endpoint: 'unix://kms.sock' }, 'endpoint');
  });
  it('rejects a tcp:// endpoint', () => assertInvalid({ endpoint: 'tcp://127.0.0.1:9000' }, 'endpoint'));
  it('rejects a bare path', () => assertInvalid({ endpoint: '/var/run/keyhaven/kms.sock' }, 'endpoint'));
  it('rejects URL syntax that would change the dialled path', () => {
    assertInvalid({ endpoint: 'unix:///var/run/kms.sock?x=1' }, 'endpoint');
    assertInvalid({ endpoint: 'unix:///var/run/kms%2esock' }, 'endpoint');
    assertInvalid({ endpoint: 'unix:///var/run/../kms.sock' }, 'endpoint');
  });
  it('rejects an empty abstract name and an over-long path', () => {
    assertInvalid({ endpoint: 'unix:///@' }, 'endpoint');
    assertInvalid({ endpoint: `unix:///${'a'.repeat(120)}` }, 'endpoint');
  });

  it('rejects a bad timeout', () => {
    for (const timeout of ['3', '3 s', '-1s', '0s', 'soon', '1d', '']) assertInvalid({ timeout }, 'timeout');
  });
  it('accepts Go durations', () => {
    for (const timeout of ['3s', '500ms', '1m', '1m30s', '1.5s']) assert.equal((render({ timeout }).resources[0]!.providers[0] as { kms: { timeout: string } }).kms.timeout, timeout);
    assert.equal(parseGoDuration('1m30s'), 90_000);
    assert.equal(parseGoDuration('1.5s'), 1500);
  });

  it('rejects bad resources', () => {
    assertInvalid({ resources: [] }, 'resources');
    assertInvalid({ resources: ['Secrets'] }, 'resources');
    assertInvalid({ resources: ['secrets', 'secrets'] }, 'resources');
  });
});
