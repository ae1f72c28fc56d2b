import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { KeyhavenError } from '../errors.js';
import { DEFAULT_KEY_NAME, loadPluginConfig, mergeConfig, parsePluginConfig, readYamlFile } from './plugin-config.js';
import { ownedTempDir } from '../../test/reaper.js';

let dir: string;
let n = 0;

before(() => {
  dir = ownedTempDir('kh-config-');
});

after(() => {
  rmSync(dir, { recursive: true, force: true });
});

function yamlFile(text: string): string {
  n += 1;
  const p = join(dir, `plugin-${n}.yaml`);
  writeFileSync(p, text);
  return p;
}

/** The embedded provider's settings (the test fails if the provider is another kind). */
function embedded(cfg: { provider: { type: string } }) {
  assert.equal(cfg.provider.type, 'embedded');
  return cfg.provider as Extract<ReturnType<typeof parsePluginConfig>['provider'], { type: 'embedded' }>;
}

const minimal = { provider: { type: 'embedded', dataDir: '/var/lib/keyhaven' } };

function withMinimal(extra: Record<string, unknown>): Record<string, unknown> {
  return { ...minimal, ...extra };
}

/** config_invalid whose message matches every pattern given. */
function invalid(...patterns: RegExp[]): (e: unknown) => true {
  return (e: unknown) => {
    assert.ok(e instanceof KeyhavenError, `expected a KeyhavenError, got ${String(e)}`);
    assert.equal(e.code, 'config_invalid', e.message);
    for (const p of patterns) assert.match(e.message, p);
    return true;
  };
}

describe('config/plugin-config: defaults', () => {
  it('fills every default from a minimal config', () => {
    const cfg = parsePluginConfig(minimal, 'test');
    assert.equal(cfg.socket, 'unix:///run/keyhaven/kms.sock');
    assert.equal(cfg.socketMode, 0o600);
    assert.equal(cfg.socketGroup, null);
    assert.equal(cfg.status.cacheTTL, 5000);
    assert.equal(cfg.status.gracePeriod, 300000);
    assert.equal(cfg.status.recheckInterval, 30000);
    assert.equal(cfg.health.address, '127.0.0.1:8787');
    assert.equal(cfg.log.level, 'info');
    assert.equal(cfg.v1beta1, true);
    assert.equal(cfg.provider.type, 'embedded');
    assert.equal(cfg.provider.key, DEFAULT_KEY_NAME);
    assert.equal(cfg.provider.key, 'kubernetes-secrets');
    assert.equal(embedded(cfg).dataDir, '/var/lib/keyhaven');
    assert.equal(embedded(cfg).rootKeyFile, '/var/lib/keyhaven/root.key');
  });

  it('fills the nested defaults when only part of a section is given', () => {
    const cfg = parsePluginConfig(withMinimal({ status: { cacheTTL: '1s' } }), 'test');
    assert.equal(cfg.status.cacheTTL, 1000);
    assert.equal(cfg.status.gracePeriod, 300000);
  });

  it('resolves a relative dataDir and rootKeyFile to absolute paths', () => {
    const cfg = parsePluginConfig({ provider: { type: 'embedded', dataDir: 'rel/data', rootKeyFile: 'keys/root.key' } }, 'test');
    assert.equal(embedded(cfg).dataDir, resolve('rel/data'));
    assert.equal(embedded(cfg).rootKeyFile, resolve('keys/root.key'));
  });

  it('keeps explicit values', () => {
    const cfg = parsePluginConfig(
      {
        socket: 'unix:///tmp/x.sock',
        socketMode: '0660',
        socketGroup: 'kube',
        provider: { type: 'embedded', dataDir: '/d', key: 'my.key_1-a', rootKeyFile: '/k/root.key' },
        status: { cacheTTL: '250ms', gracePeriod: '2h' },
        health: { address: 'off' },
        log: { level: 'debug' },
        v1beta1: false,
      },
      'test',
    );
    assert.equal(cfg.socket, 'unix:///tmp/x.sock');
    assert.equal(cfg.socketMode, 0o660);
    assert.equal(cfg.socketGroup, 'kube');
    assert.equal(embedded(cfg).key, 'my.key_1-a');
    assert.equal(embedded(cfg).rootKeyFile, '/k/root.key');
    assert.equal(cfg.status.cacheTTL, 250);
    assert.equal(cfg.status.gracePeriod, 7_200_000);
    assert.equal(cfg.health.address, 'off');
    assert.equal(cfg.log.level, 'debug');
    assert.equal(cfg.v1beta1, false);
  });

  it('accepts a numeric socket group', () => {
    assert.equal(parsePluginConfig(withMinimal({ socketGroup: 0 }), 't').socketGroup, 0);
    assert.equal(parsePluginConfig(withMinimal({ socketGroup: 998 }), 't').socketGroup, 998);
  });
});

describe('config/plugin-config: durations and modes', () => {
  const cases: Array<[string, number]> = [
    ['5s', 5000],
    ['5m', 300000],
    ['500ms', 500],
    ['1h', 3_600_000],
    ['0s', 0],
  ];
  for (const [text, ms] of cases) {
    it(`parses "${text}" to ${ms} ms`, () => {
      const cfg = parsePluginConfig(withMinimal({ status: { cacheTTL: text, gracePeriod: text } }), 'test');
      assert.equal(cfg.status.cacheTTL, ms);
      assert.equal(cfg.status.gracePeriod, ms);
    });
  }

  for (const bad of ['5', '5 s', '-5s', '1.5s', '5w', 's', '', '5S', '1234567890s']) {
    it(`refuses the duration ${JSON.stringify(bad)} naming the field`, () => {
      assert.throws(() => parsePluginConfig(withMinimal({ status: { cacheTTL: bad } }), 'test'), invalid(/status\.cacheTTL: must be a duration/));
    });
  }

  it('refuses a duration given as a number', () => {
    assert.throws(() => parsePluginConfig(withMinimal({ status: { gracePeriod: 300 } }), 'test'), invalid(/status\.gracePeriod/));
  });

  const modes: Array<[string, number]> = [
    ['0600', 0o600],
    ['600', 0o600],
    ['0660', 0o660],
    ['0777', 0o777],
  ];
  for (const [text, mode] of modes) {
    it(`parses socketMode "${text}" to 0o${mode.toString(8)}`, () => {
      assert.equal(parsePluginConfig(withMinimal({ socketMode: text }), 'test').socketMode, mode);
    });
  }

  for (const bad of ['0800', '06000', 'rw', '', '0x180', '00600']) {
    it(`refuses socketMode ${JSON.stringify(bad)}`, () => {
      assert.throws(() => parsePluginConfig(withMinimal({ socketMode: bad }), 'test'), invalid(/socketMode: must be an octal mode/));
    });
  }
});

describe('config/plugin-config: unknown fields', () => {
  it('refuses an unknown top-level field, naming it', () => {
    assert.throws(() => parsePluginConfig(withMinimal({ bogusField: 1 }), 'plugin.yaml'), invalid(/plugin\.yaml/, /\(top level\)/, /bogusField/));
  });

  it('refuses an unknown field in provider, naming the section and the field', () => {
    assert.throws(
      () => parsePluginConfig({ provider: { type: 'embedded', dataDir: '/d', rootkeyfile: '/x' } }, 'test'),
      invalid(/provider\b.*"rootkeyfile"/),
    );
  });

  for (const section of ['status', 'health', 'log']) {
    it(`refuses an unknown field in ${section}, naming the section and the field`, () => {
      assert.throws(() => parsePluginConfig(withMinimal({ [section]: { typoField: 'x' } }), 'test'), invalid(new RegExp(`${section}\\b.*"typoField"`)));
    });
  }
});

describe('config/plugin-config: wrong types and values', () => {
  const cases: Array<[string, Record<string, unknown>, RegExp]> = [
    ['socket as a number', withMinimal({ socket: 5 }), /socket: /],
    ['empty socket', withMinimal({ socket: '' }), /socket: /],
    ['socketMode as a number', withMinimal({ socketMode: 600 }), /socketMode: .*quoted octal string/],
    ['negative socketGroup', withMinimal({ socketGroup: -1 }), /socketGroup/],
    ['fractional socketGroup', withMinimal({ socketGroup: 1.5 }), /socketGroup/],
    ['empty socketGroup', withMinimal({ socketGroup: '' }), /socketGroup/],
    ['v1beta1 as a string', withMinimal({ v1beta1: 'yes' }), /v1beta1: .*expected boolean/],
    ['status as a string', withMinimal({ status: '5s' }), /status: /],
    ['log level unknown', withMinimal({ log: { level: 'verbose' } }), /log\.level/],
    ['provider missing', {}, /provider: /],
    ['provider as a list', { provider: [] }, /provider/],
    ['dataDir missing', { provider: { type: 'embedded' } }, /provider\.dataDir/],
    ['dataDir empty', { provider: { type: 'embedded', dataDir: '' } }, /provider\.dataDir/],
    ['dataDir as a number', { provider: { type: 'embedded', dataDir: 1 } }, /provider\.dataDir/],
    ['key name with a slash', { provider: { type: 'embedded', dataDir: '/d', key: 'a/b' } }, /provider\.key: must be 1-128/],
    ['key name starting with a dot', { provider: { type: 'embedded', dataDir: '/d', key: '.k' } }, /provider\.key/],
    ['key name of 129 characters', { provider: { type: 'embedded', dataDir: '/d', key: 'k'.repeat(129) } }, /provider\.key/],
    ['provider type unknown', { provider: { type: 'azure-keyvault', dataDir: '/d' } }, /provider\.type/],
    ['provider type missing', { provider: { dataDir: '/d' } }, /provider\.type/],
  ];
  for (const [name, raw, pattern] of cases) {
    it(`refuses ${name}`, () => {
      assert.throws(() => parsePluginConfig(raw, 'test'), invalid(pattern));
    });
  }

  it('refuses a config that is not a mapping', () => {
    for (const raw of [null, 'text', 5, []]) {
      assert.throws(() => parsePluginConfig(raw, 'test'), invalid(/invalid configuration in test/));
    }
  });

  it('lists every problem, one per line', () => {
    assert.throws(
      () => parsePluginConfig(withMinimal({ socketMode: 'x', v1beta1: 'x', log: { level: 'x' } }), 'test'),
      invalid(/\n {2}socketMode: /, /\n {2}v1beta1: /, /\n {2}log\.level: /),
    );
  });

  it('accepts a 128-character key name', () => {
    assert.equal(embedded(parsePluginConfig({ provider: { type: 'embedded', dataDir: '/d', key: 'k'.repeat(128) } }, 't')).key.length, 128);
  });
});

describe('config/plugin-config: health address', () => {
  for (const good of ['127.0.0.1:8787', '0.0.0.0:0', 'localhost:9000', '[::1]:8787', 'off', 'node-1.example.com:65535']) {
    it(`accepts ${good}`, () => {
      assert.equal(parsePluginConfig(withMinimal({ health: { address: good } }), 't').health.address, good);
    });
  }

  for (const bad of ['8787', '127.0.0.1', '127.0.0.1:65536', '127.0.0.1:99999', 'http://127.0.0.1:8787', '127.0.0.1:port', ':8787', '::1:8787', 'on', '']) {
    it(`refuses ${JSON.stringify(bad)} naming health.address`, () => {
      assert.throws(() => parsePluginConfig(withMinimal({ health: { address: bad } }), 't'), invalid(/health\.address: /));
    });
  }
});

describe('config/plugin-config: freezing', () => {
  it('returns a deeply frozen object', () => {
    const cfg = parsePluginConfig(minimal, 'test');
    assert.ok(Object.isFrozen(cfg));
    assert.ok(Object.isFrozen(cfg.provider));
    assert.ok(Object.isFrozen(cfg.status));
    assert.ok(Object.isFrozen(cfg.health));
    assert.ok(Object.isFrozen(cfg.log));
    assert.throws(() => {
      (cfg as { socket: string }).socket = 'unix:///evil.sock';
    }, TypeError);
    assert.throws(() => {
      (cfg.status as { cacheTTL: number }).cacheTTL = 1;
    }, TypeError);
    assert.equal(cfg.socket, 'unix:///run/keyhaven/kms.sock');
    assert.equal(cfg.status.cacheTTL, 5000);
  });

  it('does not freeze or change the input object', () => {
    const raw = { provider: { type: 'embedded', dataDir: 'rel' } };
    parsePluginConfig(raw, 'test');
    assert.ok(!Object.isFrozen(raw));
    assert.ok(!Object.isFrozen(raw.provider));
    assert.equal(raw.provider.dataDir, 'rel');
  });
});

describe('config/plugin-config: mergeConfig', () => {
  it('flags override file fields, deeply, and keep the rest', () => {
    const base = { socket: 'unix:///file.sock', provider: { type: 'embedded', dataDir: '/file', key: 'file-key' }, status: { cacheTTL: '1s' } };
    const merged = mergeConfig(base, { provider: { dataDir: '/flag' }, status: { gracePeriod: '1m' }, v1beta1: false });
    assert.deepEqual(merged, {
      socket: 'unix:///file.sock',
      provider: { type: 'embedded', dataDir: '/flag', key: 'file-key' },
      status: { cacheTTL: '1s', gracePeriod: '1m' },
      v1beta1: false,
    });
  });

  it('ignores flags left undefined', () => {
    const merged = mergeConfig({ socket: 'unix:///file.sock' }, { socket: undefined, log: undefined });
    assert.deepEqual(merged, { socket: 'unix:///file.sock' });
  });

  it('does not modify the base', () => {
    const base = { provider: { type: 'embedded', dataDir: '/file' } };
    mergeConfig(base, { provider: { dataDir: '/flag' } });
    assert.deepEqual(base, { provider: { type: 'embedded', dataDir: '/file' } });
  });

  it('a non-object base yields the overrides', () => {
    assert.deepEqual(mergeConfig(undefined, { a: 1 }), { a: 1 });
    assert.deepEqual(mergeConfig([1, 2], { a: 1 }), { a: 1 });
  });
});

describe('config/plugin-config: loadPluginConfig from files', () => {
  it('loads a YAML file and lets flags override its fields', () => {
    const file = yamlFile(['socket: unix:///file.sock', 'provider:', '  type: embedded', '  dataDir: /file', '  key: file-key', 'status:', '  cacheTTL: 2s', ''].join('\n'));
    const cfg = loadPluginConfig(file, { socket: 'unix:///flag.sock', provider: { dataDir: '/flag' }, status: { cacheTTL: undefined } });
    assert.equal(cfg.socket, 'unix:///flag.sock');
    assert.equal(embedded(cfg).dataDir, '/flag');
    assert.equal(embedded(cfg).key, 'file-key');
    assert.equal(cfg.status.cacheTTL, 2000);
    assert.ok(Object.isFrozen(cfg));
  });

  it('loads from flags alone when no file is given, and names the flags as the source', () => {
    const cfg = loadPluginConfig(undefined, { provider: { type: 'embedded', dataDir: '/flags' } });
    assert.equal(embedded(cfg).dataDir, '/flags');
    assert.throws(() => loadPluginConfig(undefined, {}), invalid(/command-line flags/, /provider/));
  });

  it('names the file in schema errors', () => {
    const file = yamlFile('provider:\n  type: embedded\n  dataDir: /d\nunknownThing: 1\n');
    assert.throws(() => loadPluginConfig(file, {}), invalid(new RegExp(`invalid configuration in ${file.replace(/[.]/g, '\\.')}`), /unknownThing/));
  });

  it('refuses a YAML syntax error, naming the file', () => {
    const file = yamlFile('provider: [\n  type: embedded\n');
    assert.throws(() => loadPluginConfig(file, {}), invalid(/not valid YAML/, new RegExp(file.replace(/[.]/g, '\\.'))));
  });

  it('refuses duplicate keys', () => {
    const file = yamlFile('provider:\n  type: embedded\n  dataDir: /a\nprovider:\n  type: embedded\n  dataDir: /b\n');
    assert.throws(() => loadPluginConfig(file, {}), invalid(/not valid YAML/, /unique/i));
  });

  it('refuses duplicate nested keys', () => {
    const file = yamlFile('provider:\n  type: embedded\n  dataDir: /a\n  dataDir: /b\n');
    assert.throws(() => loadPluginConfig(file, {}), invalid(/not valid YAML/, /unique/i));
  });

  it('refuses several YAML documents', () => {
    const file = yamlFile('provider:\n  type: embedded\n  dataDir: /a\n---\nsocket: unix:///x.sock\n');
    assert.throws(() => loadPluginConfig(file, {}), invalid(/not valid YAML/));
  });

  it('refuses a file that is not a mapping', () => {
    for (const text of ['just text\n', '- a\n- b\n', '42\n']) {
      const file = yamlFile(text);
      assert.throws(() => loadPluginConfig(file, {}), invalid(/must hold a YAML mapping/));
    }
  });

  it('treats an empty file as an empty mapping (then provider is required)', () => {
    const file = yamlFile('');
    assert.deepEqual(readYamlFile(file), {});
    assert.throws(() => loadPluginConfig(file, {}), invalid(/provider: /));
    assert.equal(embedded(loadPluginConfig(file, { provider: { type: 'embedded', dataDir: '/x' } })).dataDir, '/x');
  });

  it('refuses an unquoted octal socketMode (YAML reads it as a number)', () => {
    const file = yamlFile('socketMode: 0600\nprovider:\n  type: embedded\n  dataDir: /d\n');
    assert.throws(() => loadPluginConfig(file, {}), invalid(/socketMode/));
  });

  it('accepts a quoted socketMode from YAML', () => {
    const file = yamlFile('socketMode: "0640"\nprovider:\n  type: embedded\n  dataDir: /d\n');
    assert.equal(loadPluginConfig(file, {}).socketMode, 0o640);
  });

  it('refuses a __proto__ key instead of merging it', () => {
    const file = yamlFile('__proto__:\n  v1beta1: false\nprovider:\n  type: embedded\n  dataDir: /d\n');
    assert.throws(() => loadPluginConfig(file, {}), invalid(/__proto__/));
    assert.equal(({} as Record<string, unknown>)['v1beta1'], undefined);
  });

  it('refuses a missing file', () => {
    const file = join(dir, 'missing.yaml');
    assert.throws(() => loadPluginConfig(file, {}), invalid(/cannot read config file/, /ENOENT/, /missing\.yaml/));
  });

  it('refuses a file over 1 MiB, naming its size and the limit', () => {
    const head = 'provider:\n  type: embedded\n  dataDir: /d\n';
    const file = yamlFile(head + '#' + 'x'.repeat(1024 * 1024 - head.length - 2) + '\n' + '\n');
    assert.throws(() => loadPluginConfig(file, {}), invalid(/1048577 bytes/, /limit is 1048576/));
  });

  it('accepts a file of exactly 1 MiB', () => {
    const head = 'provider:\n  type: embedded\n  dataDir: /d\n';
    const text = head + '#' + 'x'.repeat(1024 * 1024 - head.length - 2) + '\n';
    assert.equal(Buffer.byteLength(text), 1024 * 1024);
    const file = yamlFile(text);
    assert.equal(embedded(loadPluginConfig(file, {})).dataDir, '/d');
  });
});

describe('config/plugin-config: provider keyhaven', () => {
  const remote = (p: Record<string, unknown> = {}) => ({ provider: { type: 'keyhaven', servers: ['https://keys-a.example:8200'], cluster: 'prod-eu-1', apiKeyFile: 'app.key', ...p } });
  const keyhaven = (raw: unknown) => {
    const cfg = parsePluginConfig(raw, 'test');
    assert.equal(cfg.provider.type, 'keyhaven');
    return cfg.provider as Extract<ReturnType<typeof parsePluginConfig>['provider'], { type: 'keyhaven' }>;
  };

  it('fills defaults: deadline 2 s, 1 s per server, local KEK on, report every 60 s; paths resolved', () => {
    const p = keyhaven(remote({ tls: { ca: 'ca.pem' } }));
    assert.deepEqual(p.servers, ['https://keys-a.example:8200']);
    assert.equal(p.key, DEFAULT_KEY_NAME);
    assert.equal(p.timeout, 2000);
    assert.equal(p.attemptTimeout, 1000);
    assert.deepEqual(p.backoff, { min: 250, max: 10_000 });
    assert.deepEqual(p.localKek, { enabled: true, maxUses: 1_000_000, maxAge: 86_400_000, cacheSize: 1024 });
    assert.equal(p.reportInterval, 60_000);
    assert.equal(p.apiKeyFile, resolve('app.key'));
    assert.equal(p.tls.ca, resolve('ca.pem'));
  });

  it('normalises server URLs to their origin and pins to lower-case hex', () => {
    const p = keyhaven(remote({ servers: ['https://KEYS-A.example:8200/', 'https://keys-b.example'], tls: { pinSha256: ['AB:'.repeat(31) + 'AB'] } }));
    assert.deepEqual(p.servers, ['https://keys-a.example:8200', 'https://keys-b.example']);
    assert.deepEqual(p.tls.pinSha256, ['ab'.repeat(32)]);
  });

  it('takes the API key from a file or an environment variable, exactly one', () => {
    assert.equal(keyhaven(remote({ apiKeyFile: undefined, apiKeyEnv: 'KH_KEY' })).apiKeyEnv, 'KH_KEY');
    assert.throws(() => parsePluginConfig(remote({ apiKeyFile: undefined }), 'test'), invalid(/exactly one of apiKeyFile and apiKeyEnv/));
    assert.throws(() => parsePluginConfig(remote({ apiKeyEnv: 'KH_KEY' }), 'test'), invalid(/exactly one of apiKeyFile and apiKeyEnv/));
    assert.throws(() => parsePluginConfig(remote({ apiKey: 'kha_x' }), 'test'), invalid(/apiKey/));
    assert.throws(() => parsePluginConfig(remote({ apiKeyFile: undefined, apiKeyEnv: '1BAD' }), 'test'), invalid(/apiKeyEnv/, /environment variable name/));
  });

  it('refuses bad server lists with the field and the reason', () => {
    assert.throws(() => parsePluginConfig(remote({ servers: [] }), 'test'), invalid(/provider\.servers/));
    assert.throws(() => parsePluginConfig(remote({ servers: ['ftp://x'] }), 'test'), invalid(/provider\.servers\.0/, /http\(s\)/));
    assert.throws(() => parsePluginConfig(remote({ servers: ['https://user:pw@keys.example'] }), 'test'), invalid(/without a path, query or credentials/));
    assert.throws(() => parsePluginConfig(remote({ servers: ['https://keys.example/v1'] }), 'test'), invalid(/without a path/));
    assert.throws(() => parsePluginConfig(remote({ servers: ['https://a.example', 'https://a.example/'] }), 'test'), invalid(/lists a server twice/));
    assert.throws(() => parsePluginConfig(remote({ servers: Array.from({ length: 9 }, (_, i) => `https://k${i}.example`) }), 'test'), invalid(/provider\.servers/));
  });

  it('plain HTTP only to loopback unless allowInsecureHttp', () => {
    assert.deepEqual(keyhaven(remote({ servers: ['http://127.0.0.1:8200', 'http://localhost:1'] })).servers, ['http://127.0.0.1:8200', 'http://localhost:1']);
    assert.throws(() => parsePluginConfig(remote({ servers: ['http://keys.example:8200'] }), 'test'), invalid(/not loopback/, /allowInsecureHttp/));
    assert.equal(keyhaven(remote({ servers: ['http://keys.example:8200'], allowInsecureHttp: true })).servers[0], 'http://keys.example:8200');
  });

  it('keeps the deadline inside the apiserver\'s 3 s and the attempt inside the deadline', () => {
    assert.throws(() => parsePluginConfig(remote({ timeout: '3s' }), 'test'), invalid(/below the apiserver's 3 s/));
    assert.throws(() => parsePluginConfig(remote({ timeout: '1s', attemptTimeout: '2s' }), 'test'), invalid(/attemptTimeout/));
    assert.throws(() => parsePluginConfig(remote({ backoff: { min: '5s', max: '1s' } }), 'test'), invalid(/backoff/));
  });

  it('refuses a cluster name that is not DNS-like, a client cert without its key, and unknown fields', () => {
    assert.throws(() => parsePluginConfig(remote({ cluster: 'Prod_EU' }), 'test'), invalid(/provider\.cluster/, /lower-case/));
    assert.throws(() => parsePluginConfig(remote({ cluster: undefined }), 'test'), invalid(/provider\.cluster/));
    assert.throws(() => parsePluginConfig(remote({ tls: { clientCert: 'c.pem' } }), 'test'), invalid(/clientCert and clientKey go together/));
    assert.throws(() => parsePluginConfig(remote({ tls: { pinSha256: ['abc'] } }), 'test'), invalid(/SHA-256 fingerprint/));
    assert.throws(() => parsePluginConfig(remote({ dataDir: '/d' }), 'test'), invalid(/dataDir/));
    assert.throws(() => parsePluginConfig(remote({ localKek: { maxUses: 0 } }), 'test'), invalid(/localKek\.maxUses/));
  });

  it('a --key flag overrides the key of a keyhaven provider from the file', () => {
    const file = yamlFile('provider:\n  type: keyhaven\n  servers: [https://k.example]\n  cluster: c1\n  apiKeyEnv: KH\n');
    const cfg = loadPluginConfig(file, { provider: { key: 'other' } });
    assert.equal(cfg.provider.type, 'keyhaven');
    assert.equal(cfg.provider.key, 'other');
  });
});

describe('config/plugin-config: the shipped examples', () => {
  for (const name of ['plugin.yaml', 'plugin-remote.yaml']) {
    it(`deploy/${name} parses`, () => {
      const file = join(fileURLToPath(new URL('../../../deploy/', import.meta.url)), name);
      const cfg = loadPluginConfig(file, {});
      assert.equal(cfg.socket, 'unix:///run/keyhaven/kms.sock');
    });
  }
});

// The per-field cases of test/startup-refusals.test.ts, in-process: the
// plugin command hands the file and its flags to loadPluginConfig, whose
// config_invalid becomes exit 78 at the CLI's one exit point. That file keeps
// one end-to-end refusal per class (bad YAML, bad field, missing file).
describe('config/plugin-config: start-up refusals of plugin.yaml, with the flags the plugin command adds', () => {
  const flags = { socket: 'unix:///run/test/kms.sock', provider: { type: 'embedded', dataDir: '/var/lib/keyhaven' }, health: { address: '127.0.0.1:0' } };
  const cases: Array<[string, string, RegExp, Record<string, unknown>?]> = [
    ['an unknown top-level field', 'socketMode: "0600"\ncolour: blue\n', /Unrecognized key.*"colour"/],
    ['an unknown nested field', 'status:\n  cacheTtl: 5s\n', /status: Unrecognized key.*"cacheTtl"/],
    ['an unknown provider field', 'provider:\n  type: embedded\n  dataDir: /x\n  rootkeyfile: /y\n', /provider: Unrecognized key.*"rootkeyfile"/],
    ['socketMode as an unquoted number', 'socketMode: 600\n', /socketMode: .*(string|quoted)/],
    ['v1beta1 as a string', 'v1beta1: "yes"\n', /v1beta1: .*expected boolean/],
    ['status.gracePeriod as a number', 'status:\n  gracePeriod: 5\n', /status\.gracePeriod: .*expected string/],
    ['a bad duration', 'status:\n  cacheTTL: 5 minutes\n', /status\.cacheTTL: must be a duration such as/],
    ['a bad log level', 'log:\n  level: verbose\n', /log\.level:/],
    ['invalid YAML', 'status: [unclosed\n', /is not valid YAML/],
    ['duplicate keys', 'v1beta1: true\nv1beta1: false\n', /is not valid YAML: .*unique/],
    ['a YAML list instead of a mapping', '- socket\n- unix:///x.sock\n', /must hold a YAML mapping/],
    ['a bad health address (no health flag)', 'health:\n  address: localhost\n', /health\.address: must be host:port/, { health: undefined }],
    ['socket: tcp://... (no socket flag)', 'socket: tcp://127.0.0.1:1\n', /socket: must be unix:\/\/\//, { socket: undefined }],
  ];
  for (const [what, text, message, change] of cases) {
    it(`refuses ${what}, naming the file and the field`, () => {
      const file = yamlFile(text);
      assert.throws(() => loadPluginConfig(file, { ...flags, ...change }), invalid(message, new RegExp(file.replace(/[.]/g, '\\.'))));
    });
  }

  it('refuses --socket tcp://... given as a flag, naming the field', () => {
    assert.throws(() => loadPluginConfig(undefined, { ...flags, socket: 'tcp://127.0.0.1:1' }), invalid(/socket: must be unix:\/\/\/absolute\/path\.sock or unix:\/\/\/@abstract-name/));
  });

  it('refuses a missing config file, naming it', () => {
    const file = join(dir, 'missing-start-up.yaml');
    assert.throws(() => loadPluginConfig(file, flags), invalid(new RegExp(`cannot read config file ${file.replace(/[.]/g, '\\.')}: ENOENT`)));
  });
});
