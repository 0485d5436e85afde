/**
 * Command-line parsing without a framework: the contract is small and fixed
 * (see the README), and every mistake must say which flag is wrong.
 */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export interface FlagSpec {
  /** Takes a value (--flag VALUE or --flag=VALUE). */
  value: boolean;
  /** May be given more than once; values collect in order. */
  repeat?: boolean;
}

export interface Parsed {
  flags: Map<string, string[]>;
  positional: string[];
}

export function parseArgs(argv: readonly string[], specs: Record<string, FlagSpec>): Parsed {
  const flags = new Map<string, string[]>();
  const positional: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('--')) {
      positional.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    const name = eq > 0 ? arg.slice(2, eq) : arg.slice(2);
    const spec = specs[name];
    if (!spec) throw new UsageError(`unknown option --${name}`);
    let value = 'true';
    if (spec.value) {
      if (eq > 0) value = arg.slice(eq + 1);
      else if (i + 1 < argv.length) value = argv[++i]!;
      else throw new UsageError(`--${name} needs a value`);
    } else if (eq > 0) throw new UsageError(`--${name} takes no value`);
    const list = flags.get(name) ?? [];
    if (list.length > 0 && !spec.repeat) throw new UsageError(`--${name} given twice`);
    list.push(value);
    flags.set(name, list);
  }
  return { flags, positional };
}
