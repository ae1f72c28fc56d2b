import type { Command } from 'commander';
import { KeyhavenError } from '../../errors.js';
import { renderEncryptionConfig } from '../../k8s/encryption-config.js';
import { DEFAULT_IMAGE, renderStaticPod } from '../../k8s/static-pod.js';
import { parse as parseYaml } from 'yaml';
import { goDuration, parseDurationFlag } from '../duration.js';
import { printData, type OutputFormat } from '../output.js';
import { parseOutput } from '../store-command.js';
import { registerK8sData } from './k8s-data.js';

/** A manifest in its natural YAML, or with -o json the same object as JSON. */
function printManifest(yaml: string, output: OutputFormat): void {
  if (output === 'json') printData(parseYaml(yaml) as unknown, 'json');
  else process.stdout.write(yaml);
}

const OUTPUT_HELP = 'yaml (the default, also "text") or json: the same object';

export function registerK8s(program: Command, run: (fn: () => Promise<number>) => void): void {
  const k8s = program.command('k8s').description('Kubernetes: manifests for the plugin, and what etcd holds (scan, break-glass recover)');
  registerK8sData(k8s, run);
  k8s
    .command('encryption-config')
    .description('Print an EncryptionConfiguration that encrypts Secrets with this plugin')
    .requiredOption('--name <name>', 'provider name (appears in the etcd prefix k8s:enc:kms:v2:<name>:)')
    .requiredOption('--socket <endpoint>', 'the plugin socket, unix:///path/to.sock')
    .option('--timeout <duration>', 'per-call deadline the apiserver applies, e.g. 3s or 1m30s', (v: string) => goDuration(parseDurationFlag('--timeout', v)), '3s')
    .option('--resource <resource...>', 'resources to encrypt', ['secrets'])
    .option('-o, --output <format>', OUTPUT_HELP, parseOutput, 'yaml' as OutputFormat)
    .action((flags: { name: string; socket: string; timeout: string; resource: string[]; output: OutputFormat }) =>
      run(async () => {
        printManifest(renderEncryptionConfig({ name: flags.name, endpoint: flags.socket, timeout: flags.timeout, resources: flags.resource }), flags.output);
        return 0;
      }),
    );
  k8s
    .command('static-pod')
    .description('Print a static Pod manifest that runs the plugin beside kube-apiserver')
    .option('--image <image>', `container image with keyhaven (default: ${DEFAULT_IMAGE}, the name docs/container.md builds the Containerfile as)`)
    .option('--config <path>', 'host path of plugin.yaml')
    .option('--socket-dir <dir>', 'host folder for the socket')
    .option('--data-dir <dir>', 'host folder of the embedded key store')
    .option('--health-port <port>', 'health/metrics port on 127.0.0.1')
    .option('-o, --output <format>', OUTPUT_HELP, parseOutput, 'yaml' as OutputFormat)
    .action((flags: { image?: string; config?: string; socketDir?: string; dataDir?: string; healthPort?: string; output: OutputFormat }) =>
      run(async () => {
        let healthPort: number | undefined;
        if (flags.healthPort !== undefined) {
          if (!/^\d{1,5}$/.test(flags.healthPort)) throw new KeyhavenError('invalid_argument', `--health-port must be a number, not ${JSON.stringify(flags.healthPort)}`);
          healthPort = Number(flags.healthPort);
        }
        printManifest(renderStaticPod({ image: flags.image, configPath: flags.config, socketDir: flags.socketDir, dataDir: flags.dataDir, healthPort }), flags.output);
        return 0;
      }),
    );
}
