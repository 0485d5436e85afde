/**
 * The daemon's log lines while a test runs in its process, the console kept quiet
 * meanwhile: for tests that look for a line, or for the absence of errors.
 */
import { Writable } from 'node:stream';
import winston from 'winston';
import { logger } from '../../src/log/logger';

export class LogCapture {
  readonly lines: string[] = [];
  private readonly transport: winston.transport;
  private readonly level = logger.level;
  private readonly silenced: winston.transport[];
  /** `level`: the lowest level kept (the daemon's own level goes there meanwhile). */
  constructor(level = 'info') {
    const lines = this.lines;
    this.transport = new winston.transports.Stream({
      stream: new Writable({
        write(chunk: Buffer, _enc, cb): void {
          lines.push(...chunk.toString().split('\n').filter((l) => l !== ''));
          cb();
        },
      }),
    });
    this.silenced = logger.transports.filter((t) => !t.silent);
    for (const t of this.silenced) t.silent = true;
    logger.add(this.transport);
    logger.level = level;
  }
  matching(re: RegExp): string[] {
    return this.lines.filter((l) => re.test(l));
  }
  stop(): void {
    logger.remove(this.transport);
    for (const t of this.silenced) t.silent = false;
    logger.level = this.level;
  }
}
