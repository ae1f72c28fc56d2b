import cliProgress from 'cli-progress';

export interface Progress {
  readonly update: (done: number) => void;
  stop(): void;
}

/**
 * A progress bar on stderr for long reads, shown only on a terminal (a pipe or
 * a log file gets none); the total is asked for once and may be unknown.
 */
export function progressBar(unit: string, total: () => Promise<number>): Progress {
  if (!process.stderr.isTTY) return { update: () => {}, stop: () => {} };
  const bar = new cliProgress.SingleBar({ stream: process.stderr, format: `{bar} {value}/{total} ${unit}`, hideCursor: true, clearOnComplete: true }, cliProgress.Presets.shades_classic);
  let started = false;
  let size = 0;
  void total().then(
    (n) => {
      size = n;
      if (started) bar.setTotal(n);
    },
    () => undefined,
  );
  return {
    update(done) {
      if (!started) {
        bar.start(Math.max(size, done), done);
        started = true;
      } else {
        if (done > size) bar.setTotal(done);
        bar.update(done);
      }
    },
    stop() {
      if (started) bar.stop();
    },
  };
}
