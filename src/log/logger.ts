/**
 * The one logger of the daemon. Under systemd (stderr is the stream JOURNAL_STREAM names) lines carry the
 * syslog priority prefix the journal understands and no timestamp of their own; elsewhere
 * they are human-readable with a timestamp. Level from KDBUS_CUSE_LOG_LEVEL (default info;
 * tests default to warn so their output stays readable).
 */
import fs from 'node:fs';
import winston from 'winston';

const syslogPriority: Record<string, number> = { error: 3, warn: 4, info: 6, verbose: 7, debug: 7 };

function defaultLevel(): string {
  if (process.env['KDBUS_CUSE_LOG_LEVEL']) return process.env['KDBUS_CUSE_LOG_LEVEL'];
  return process.argv.some((a) => a.includes('mocha')) ? 'warn' : 'info';
}

/**
 * JOURNAL_STREAM names the device and inode of the journal's stream; a process that merely
 * inherited the variable (its stderr redirected elsewhere) must not write journal prefixes.
 */
function stderrIsJournal(): boolean {
  const v = process.env['JOURNAL_STREAM'];
  if (!v) return false;
  const [dev, ino] = v.split(':');
  try {
    const st = fs.fstatSync(2, { bigint: true });
    return String(st.dev) === dev && String(st.ino) === ino;
  } catch {
    return false;
  }
}

const journal = stderrIsJournal();

const lineFormat = journal
  ? winston.format.printf((i) => `<${syslogPriority[i.level] ?? 6}>${String(i.message)}`)
  : winston.format.combine(
      winston.format.timestamp({ format: 'YYYY-MM-DD HH:mm:ss.SSS' }),
      winston.format.printf((i) => `${String(i['timestamp'])} ${i.level.padEnd(7)} ${String(i.message)}`),
    );

export const logger = winston.createLogger({
  level: defaultLevel(),
  format: lineFormat,
  transports: [new winston.transports.Console({ stderrLevels: ['error', 'warn', 'info', 'verbose', 'debug'] })],
});

export function setLogLevel(level: string): void {
  logger.level = level;
}
