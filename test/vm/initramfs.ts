/**
 * The guest's initramfs: static busybox with its applets, the kernel modules the init needs,
 * and the init script. Built once per kernel version and init script into a cache under the
 * temporary directory; later runs reuse the file.
 */
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { cachedFile } from './cache';
import { CpioWriter } from './cpio';
import { PT_INTERP, programHeaders } from './elf';
import { guestInitScript, moduleImagePath } from './guest-init';
import { GUEST_MODULES, kernelStamp, moduleLoadOrder, readModule, type GuestKernel } from './kernel';

const BUSYBOX_CANDIDATES = ['/bin/busybox', '/usr/bin/busybox'];

/** The statically linked busybox (Debian's busybox-static), or a reason there is none. */
export function findStaticBusybox(): string | { missing: string } {
  for (const candidate of BUSYBOX_CANDIDATES) {
    if (fs.existsSync(candidate) && isStaticElf(fs.readFileSync(candidate))) return candidate;
  }
  return { missing: 'a statically linked busybox (install busybox-static)' };
}

/** A dynamically linked ELF has a PT_INTERP program header; the initramfs has no libc for it. */
function isStaticElf(elf: Buffer): boolean {
  const headers = programHeaders(elf);
  return headers !== undefined && !headers.some((ph) => ph.type === PT_INTERP);
}

/** Path of the initramfs for this kernel, building it if the cache lacks it. */
export function ensureInitramfs(kernel: GuestKernel): string {
  const busybox = findStaticBusybox();
  if (typeof busybox !== 'string') throw new Error(`cannot build the VM initramfs: missing ${busybox.missing}`);
  const modules = moduleLoadOrder(kernel.modulesDir, GUEST_MODULES);
  const init = guestInitScript(modules);
  const bb = fs.statSync(busybox);
  const key = crypto
    .createHash('sha256')
    .update(init)
    .update(`${busybox}:${bb.size}:${bb.mtimeMs}`)
    .digest('hex')
    .slice(0, 16);
  return cachedFile(`initramfs-${kernel.version}-${kernelStamp(kernel)}-${key}.cpio`, () => {
    const cpio = new CpioWriter();
    for (const dir of ['bin', 'dev', 'proc', 'sys', 'tmp', 'modules', 'lower', 'rw', 'newroot']) cpio.dir(dir);
    // The kernel opens /dev/console for init's stdio before anything can mount devtmpfs.
    cpio.charDevice('dev/console', 5, 1);
    cpio.file('bin/busybox', fs.readFileSync(busybox), 0o755);
    for (const applet of busyboxApplets(busybox)) {
      if (applet !== 'busybox') cpio.symlink(`bin/${applet}`, 'busybox');
    }
    for (const m of modules) cpio.file(moduleImagePath(m), readModule(kernel.modulesDir, m.file));
    cpio.file('init', Buffer.from(init), 0o755);
    return cpio.finish();
  });
}

function busyboxApplets(busybox: string): string[] {
  const r = spawnSync(busybox, ['--list'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${busybox} --list failed: ${r.error?.message ?? r.stderr}`);
  return r.stdout.split('\n').filter((a) => /^[\w.[\]-]+$/.test(a));
}
