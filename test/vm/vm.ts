/**
 * A qemu VM running a distribution kernel that has CUSE, for tests that need a real
 * /dev/cuse. One boot serves a whole test run: the guest (test/vm/guest-init.ts) runs a
 * command loop over a shared directory, and the host submits jobs there and polls for their
 * results. The guest sees the host's root file system read-only (with a writable tmpfs
 * overlay), so it runs the host's node and the built project at the same paths.
 *
 * Everything runs under TCG (nested KVM hangs on these machines): fine for correctness and
 * for ratios measured inside the guest, meaningless for absolute speed.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { HOSTROOT_TAG, JOBS_DIR, JobFile, READY_FILE, SHARE_PARAM, SHARE_TAG } from './guest-init';
import { ensureInitramfs, findStaticBusybox } from './initramfs';
import { bootImage, findGuestKernel } from './kernel';

const QEMU = 'qemu-system-x86_64';
const POLL_MS = 20;
/** How long the host waits beyond a job's own limit before it declares the guest stuck. */
const HOST_BACKSTOP_MS = 20_000;
const POWEROFF_MS = 15_000;
const LOG_TAIL_LINES = 40;
const GUEST_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export interface VmBootOptions {
  memoryMb?: number;
  cpus?: number;
  bootTimeoutMs?: number;
  /** Keep the work directory (console log, job files) even after a clean run. */
  keep?: boolean;
}

export interface RunOptions {
  /** Enforced inside the guest (the job's process group is killed); default 60 s. */
  timeoutMs?: number;
  /** Added to a minimal environment (PATH, HOME, LANG); the host's environment is not passed. */
  env?: Record<string, string>;
  /** Default: the host's current directory, which the guest sees too. */
  cwd?: string;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** A job running in the guest; `result` settles when it ends. */
export interface VmJob {
  readonly id: number;
  readonly result: Promise<RunResult>;
  /** Sends `signal` to the job's process group (SIGKILL 3 s later) and waits for the end. */
  stop(signal?: 'TERM' | 'INT' | 'KILL'): Promise<RunResult>;
}

interface Pending {
  dir: string;
  label: string;
  deadline: number;
  stopping: boolean;
  resolve(r: RunResult): void;
  reject(e: Error): void;
}

export class Vm {
  /** Why no VM can run here, or undefined when it can. */
  static unavailableReason(): string | undefined {
    if (spawnSync(QEMU, ['--version'], { stdio: 'ignore' }).status !== 0) return `${QEMU} (install qemu-system-x86)`;
    const busybox = findStaticBusybox();
    if (typeof busybox !== 'string') return busybox.missing;
    const kernel = findGuestKernel();
    return typeof kernel === 'string' ? kernel : undefined;
  }

  static async boot(opts: VmBootOptions = {}): Promise<Vm> {
    const kernel = findGuestKernel();
    if (typeof kernel === 'string') throw new Error(`cannot boot the VM: ${kernel}`);
    const initrd = ensureInitramfs(kernel);
    if (/[\s,]/.test(os.tmpdir())) {
      throw new Error(
        `the temporary directory ${os.tmpdir()} has a space or comma, which the kernel command line ` +
          `and qemu's -virtfs cannot carry: set TMPDIR`,
      );
    }
    const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kdbus-cuse-vm-'));
    const vm = new Vm(workDir, opts.keep ?? process.env['KDBUS_VM_KEEP'] === '1');
    fs.mkdirSync(path.join(vm.shareDir, JOBS_DIR), { recursive: true });
    const args = [
      '-accel', 'tcg',
      '-cpu', 'max',
      '-m', String(opts.memoryMb ?? 2048),
      '-smp', String(opts.cpus ?? 2),
      '-nodefaults', '-nographic', '-no-reboot',
      '-serial', `file:${vm.consoleLog}`,
      '-kernel', bootImage(kernel),
      '-initrd', initrd,
      '-append', `console=ttyS0 loglevel=4 panic=-1 mitigations=off ${SHARE_PARAM}=${vm.shareDir}`,
      '-virtfs', `local,path=/,mount_tag=${HOSTROOT_TAG},security_model=none,readonly=on,multidevs=remap`,
      '-virtfs', `local,path=${vm.shareDir},mount_tag=${SHARE_TAG},security_model=none,multidevs=remap`,
    ];
    vm.spawnQemu(args);
    await vm.waitReady(opts.bootTimeoutMs ?? 90_000);
    return vm;
  }

  /** Host path of the writable share; the guest sees it at the same path. */
  readonly shareDir: string;
  readonly consoleLog: string;
  /** The guest's `uname -r`, once booted. */
  kernelRelease = '';
  private qemu: ChildProcess | undefined;
  private qemuOutput = '';
  private exited: string | undefined;
  private readonly exitWaiters: Array<() => void> = [];
  private readonly pending = new Map<number, Pending>();
  private poller: NodeJS.Timeout | undefined;
  private nextJob = 1;
  private failed = false;
  private halting = false;
  /** For a test run that ends without shutdown(): leave no qemu and no files behind. */
  private readonly killOnExit = (): void => {
    this.qemu?.kill('SIGKILL');
    this.removeWorkFiles();
  };

  private constructor(
    readonly workDir: string,
    private readonly keep: boolean,
  ) {
    this.shareDir = path.join(workDir, 'share');
    this.consoleLog = path.join(workDir, 'console.log');
  }

  /** Runs `command` with /bin/sh in the guest and waits for it; rejects if it times out. */
  run(command: string, opts: RunOptions = {}): Promise<RunResult> {
    return this.start(command, opts).result;
  }

  /** Starts `command` in the guest without waiting; jobs run concurrently. */
  start(command: string, opts: RunOptions = {}): VmJob {
    const timeoutMs = opts.timeoutMs ?? 60_000;
    const env: Record<string, string> = { PATH: GUEST_PATH, HOME: '/root', LANG: 'C.UTF-8', ...opts.env };
    const script = [
      `cd ${shellQuote(opts.cwd ?? process.cwd())} || exit 125`,
      ...Object.entries(env).map(([k, v]) => {
        if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new Error(`not an environment variable name: ${k}`);
        return `export ${k}=${shellQuote(v)}`;
      }),
      command,
      '',
    ].join('\n');
    if (this.exited) {
      const result = Promise.reject(this.error(`qemu has ended (${this.exited}); cannot run ${command}`));
      return { id: 0, result, stop: () => result };
    }
    const { id, dir } = this.publish({
      [JobFile.script]: script,
      [JobFile.timeout]: String(Math.max(1, Math.ceil(timeoutMs / 100))),
    });
    const label = `job ${id} (${command.length > 80 ? `${command.slice(0, 77)}...` : command})`;
    const deadline = Date.now() + timeoutMs + HOST_BACKSTOP_MS;
    let pending!: Pending;
    const result = new Promise<RunResult>((resolve, reject) => {
      pending = { dir, label, deadline, stopping: false, resolve, reject };
    });
    this.pending.set(id, pending);
    this.startPolling();
    return {
      id,
      result,
      stop: (signal = 'TERM') => {
        if (this.pending.has(id)) {
          pending.stopping = true;
          fs.writeFileSync(path.join(dir, JobFile.kill), signal);
        }
        return result;
      },
    };
  }

  /** Powers the guest off (killing qemu if it does not stop) and removes the work files. */
  async shutdown(): Promise<void> {
    if (!this.exited) {
      this.halting = true;
      this.publish({ [JobFile.halt]: '' });
      if (!(await this.waitExit(POWEROFF_MS))) {
        this.qemu?.kill('SIGKILL');
        await this.waitExit(POWEROFF_MS);
      }
    }
    this.removeWorkFiles();
  }

  private removeWorkFiles(): void {
    if (this.failed || this.keep) {
      console.error(`VM work files kept in ${this.workDir} (console log: ${this.consoleLog})`);
    } else {
      fs.rmSync(this.workDir, { recursive: true, force: true });
    }
  }

  private spawnQemu(args: string[]): void {
    // setpriv's parent-death signal takes qemu down even if this process is killed outright.
    const [file, argv] = fs.existsSync('/usr/bin/setpriv')
      ? ['/usr/bin/setpriv', ['--pdeathsig', 'KILL', '--', QEMU, ...args]]
      : [QEMU, args];
    const qemu = spawn(file, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.qemu = qemu;
    process.on('exit', this.killOnExit);
    const collect = (d: Buffer): void => {
      this.qemuOutput += d.toString();
    };
    qemu.stdout?.on('data', collect);
    qemu.stderr?.on('data', collect);
    qemu.on('error', (e) => this.onExit(`could not start ${QEMU}: ${e.message}`));
    qemu.on('exit', (code, signal) => this.onExit(signal ? `killed by ${signal}` : `exit code ${code}`));
  }

  private onExit(how: string): void {
    if (this.exited) return;
    this.exited = how;
    process.off('exit', this.killOnExit);
    for (const p of this.pending.values()) {
      p.reject(
        this.halting ? new Error(`${p.label} still ran at shutdown`) : this.error(`qemu ended (${how}) while ${p.label} ran`),
      );
    }
    this.pending.clear();
    this.stopPolling();
    for (const w of this.exitWaiters.splice(0)) w();
  }

  private async waitReady(timeoutMs: number): Promise<void> {
    const ready = path.join(this.shareDir, READY_FILE);
    const until = Date.now() + timeoutMs;
    while (!fs.existsSync(ready)) {
      if (this.exited) throw this.error(`the VM stopped during boot (qemu: ${this.exited})`);
      if (Date.now() > until) {
        this.qemu?.kill('SIGKILL');
        await this.waitExit(POWEROFF_MS);
        throw this.error(`the VM did not come up within ${timeoutMs} ms`);
      }
      await sleep(POLL_MS);
    }
    this.kernelRelease = fs.readFileSync(ready, 'utf8').trim();
  }

  /** Writes a job directory aside and renames it into place, so the guest sees it whole. */
  private publish(files: Record<string, string>): { id: number; dir: string } {
    const id = this.nextJob++;
    const jobs = path.join(this.shareDir, JOBS_DIR);
    const partial = path.join(jobs, `.${id}.tmp`);
    fs.mkdirSync(partial);
    for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(partial, name), text);
    const dir = path.join(jobs, String(id));
    fs.renameSync(partial, dir);
    return { id, dir };
  }

  private startPolling(): void {
    this.poller ??= setInterval(() => this.poll(), POLL_MS);
  }

  private stopPolling(): void {
    if (this.poller) clearInterval(this.poller);
    this.poller = undefined;
  }

  private poll(): void {
    const now = Date.now();
    for (const [id, p] of this.pending) {
      const codeFile = path.join(p.dir, JobFile.exitCode);
      if (fs.existsSync(codeFile)) {
        this.pending.delete(id);
        const result: RunResult = {
          code: Number.parseInt(fs.readFileSync(codeFile, 'utf8'), 10),
          stdout: readText(path.join(p.dir, JobFile.stdout)),
          stderr: readText(path.join(p.dir, JobFile.stderr)),
        };
        if (fs.existsSync(path.join(p.dir, JobFile.timedOut)) && !p.stopping) {
          p.reject(jobError(`${p.label} timed out and was killed`, result));
        } else {
          p.resolve(result);
        }
      } else if (now > p.deadline) {
        this.pending.delete(id);
        p.reject(this.error(`${p.label}: no result from the guest ${HOST_BACKSTOP_MS} ms past its time limit`));
      }
    }
    if (this.pending.size === 0) this.stopPolling();
  }

  private waitExit(ms: number): Promise<boolean> {
    if (this.exited) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), ms);
      this.exitWaiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  /**
   * A failure of the VM itself: it carries the qemu output and the console log's tail and
   * path, and keeps the work files for a look afterwards.
   */
  private error(message: string): Error {
    this.failed = true;
    const parts = [message];
    if (this.qemuOutput) parts.push(`--- qemu ---\n${tail(this.qemuOutput)}`);
    parts.push(`--- guest console (${this.consoleLog}) ---\n${tail(readText(this.consoleLog))}`);
    return new Error(parts.join('\n'));
  }
}

/** A job's own failure (the VM is fine): its output says why. */
function jobError(message: string, result: RunResult): Error {
  return new Error(`${message}\n--- stdout ---\n${tail(result.stdout)}\n--- stderr ---\n${tail(result.stderr)}`);
}

function readText(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

function tail(text: string): string {
  return text.split('\n').slice(-LOG_TAIL_LINES).join('\n');
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
