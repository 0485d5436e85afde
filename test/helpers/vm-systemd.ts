/**
 * A test VM run that installs the project as a package would (under /usr/lib/kdbus-cuse: a
 * checkout under /tmp is not visible to services under systemd there), then boots systemd as
 * PID 1 of a PID namespace with a check unit that reports what it saw in sections: lines
 * "=== name" in check.out of the share directory, each followed by its text. The VM is shut
 * down before the sections are looked at.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { requireOrSkip } from './require';
import { Vm } from '../vm/vm';

const PROJECT = path.resolve(__dirname, '../../..');

/** Shell text, given the VM's share directory and the project's directory. */
export type Script = (share: string, project: string) => string;

export interface SystemdRun {
  /** Lines that write the test's units and files, run as root before systemd boots. */
  setup: Script;
  /** The check unit's script; it ends with `systemctl poweroff`. */
  check: Script;
  /** The unit the check unit wants and waits for. */
  after: string;
}

const job = (run: SystemdRun, share: string): string => `set -e
mkdir -p /usr/lib/kdbus-cuse
cp -a ${PROJECT}/bin ${PROJECT}/dist ${PROJECT}/node_modules ${PROJECT}/package.json /usr/lib/kdbus-cuse/
ln -sf /usr/lib/kdbus-cuse/bin/kdbus-cuse /usr/bin/kdbus-cuse
${run.setup(share, PROJECT)}
cat > /etc/systemd/system/test-check.service <<'UNIT'
[Unit]
Wants=${run.after}
After=${run.after}
[Service]
Type=oneshot
ExecStart=/bin/sh ${share}/check.sh
UNIT
cat > /etc/systemd/system/test.target <<'UNIT'
[Unit]
Wants=test-check.service
UNIT
set +e
unshare --pid --fork --mount-proc env container=kdbus-cuse-test /lib/systemd/systemd systemd.unit=test.target systemd.show_status=0 >${share}/systemd.log 2>&1
echo "systemd exited with $?"
`;

/** Skips (fails in CI) where there is no test VM or no systemd to boot in it. */
export function requireSystemdVm(ctx: Mocha.Context): void {
  const missing = Vm.unavailableReason();
  requireOrSkip(ctx, missing === undefined, `the test VM: ${missing}`);
  requireOrSkip(ctx, fs.existsSync('/lib/systemd/systemd'), 'systemd (Debian package systemd)');
}

/** Runs the test under systemd in a fresh VM; returns check.out's sections. */
export async function runUnderSystemd(run: SystemdRun): Promise<Map<string, string>> {
  const vm = await Vm.boot();
  try {
    fs.writeFileSync(path.join(vm.shareDir, 'check.sh'), run.check(vm.shareDir, PROJECT));
    fs.writeFileSync(path.join(vm.shareDir, 'job.sh'), job(run, vm.shareDir));
    const r = await vm.run(`sh ${vm.shareDir}/job.sh`, { timeoutMs: 540_000 });
    const out = path.join(vm.shareDir, 'check.out');
    const systemdLog = path.join(vm.shareDir, 'systemd.log');
    assert.ok(fs.existsSync(out), `the check service did not run:\n${r.stdout}${r.stderr}\n${fs.existsSync(systemdLog) ? fs.readFileSync(systemdLog, 'utf8').slice(-4000) : ''}`);
    const sections = new Map<string, string>();
    for (const part of fs.readFileSync(out, 'utf8').split(/^=== /m).slice(1)) {
      const nl = part.indexOf('\n');
      sections.set(part.slice(0, nl), part.slice(nl + 1));
    }
    return sections;
  } finally {
    await vm.shutdown();
  }
}

/** The named section; fails the test, listing those there are, when it is missing. */
export function sectionOf(sections: Map<string, string>, name: string): string {
  return sections.get(name) ?? assert.fail(`no section ${name}; got ${[...sections.keys()].join(', ')}`);
}
