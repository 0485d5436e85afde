/**
 * The guest kernel: an installed distribution kernel (Debian's linux-image-amd64) whose
 * module tree has CUSE, and the modules the guest must load, in dependency order.
 */
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { cachedFile } from './cache';
import { hasNote } from './elf';

export interface GuestKernel {
  version: string;
  image: string;
  modulesDir: string;
}

/** What the guest init needs: virtio PCI transport, 9p over virtio, overlayfs, fuse and cuse. */
export const GUEST_MODULES = ['virtio_pci', '9pnet_virtio', '9p', 'overlay', 'cuse'];

const KERNEL_ENV = 'KDBUS_VM_KERNEL';

/**
 * The newest kernel that has both an image under /boot and a module tree with cuse, or the
 * version named by $KDBUS_VM_KERNEL. Returns a reason string when there is none.
 */
export function findGuestKernel(): GuestKernel | string {
  const wanted = process.env[KERNEL_ENV];
  let versions: string[];
  try {
    versions = wanted ? [wanted] : fs.readdirSync('/lib/modules');
  } catch {
    return 'no /lib/modules (install linux-image-amd64)';
  }
  const usable = versions
    .map((version) => ({
      version,
      image: `/boot/vmlinuz-${version}`,
      modulesDir: path.join('/lib/modules', version),
    }))
    .filter((k) => fs.existsSync(k.image) && moduleIndex(k.modulesDir).has('cuse'))
    .sort((a, b) => compareVersions(b.version, a.version));
  const best = usable[0];
  if (!best) {
    return wanted
      ? `${KERNEL_ENV}=${wanted} has no /boot image or no cuse module`
      : 'no installed kernel with cuse (install linux-image-amd64)';
  }
  try {
    fs.accessSync(best.image, fs.constants.R_OK);
  } catch {
    return `${best.image} is not readable by this user`;
  }
  return best;
}

/** Changes whenever the installed kernel package does, even under the same version string. */
export function kernelStamp(kernel: GuestKernel): string {
  const st = fs.statSync(kernel.image);
  return crypto.createHash('sha256').update(`${st.size}:${st.mtimeMs}`).digest('hex').slice(0, 8);
}

/**
 * What qemu's -kernel gets. Booting the bzImage makes the guest decompress the kernel under
 * TCG, which costs about 3 s per boot; the uncompressed vmlinux inside it starts through its
 * PVH entry point instead, so it is extracted once into the cache. Kernels whose payload is
 * not xz (Debian's choice) or that lack the PVH note boot the slow way.
 */
export function bootImage(kernel: GuestKernel): string {
  const name = `vmlinux-${kernel.version}-${kernelStamp(kernel)}`;
  return cachedFile(name, () => extractVmlinux(fs.readFileSync(kernel.image))) ?? kernel.image;
}

const XEN_ELFNOTE_PHYS32_ENTRY = 18;
const XZ_MAGIC = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);

function extractVmlinux(bzImage: Buffer): Buffer | undefined {
  // x86 boot protocol (Documentation/arch/x86/boot.rst): the setup code takes setup_sects+1
  // sectors, and payload_offset/payload_length locate the compressed kernel after it.
  if (bzImage.length < 0x250 || bzImage.toString('latin1', 0x202, 0x206) !== 'HdrS') return undefined;
  const setupSects = bzImage[0x1f1] || 4;
  const start = (setupSects + 1) * 512 + bzImage.readUInt32LE(0x248);
  const payload = bzImage.subarray(start, start + bzImage.readUInt32LE(0x24c));
  if (!payload.subarray(0, XZ_MAGIC.length).equals(XZ_MAGIC)) return undefined;
  // --single-stream: the payload ends with the 4-byte uncompressed size, not another stream.
  const r = spawnSync('xz', ['-dc', '--single-stream'], { input: payload, maxBuffer: 512 << 20 });
  // qemu boots an ELF kernel only through its XEN_ELFNOTE_PHYS32_ENTRY note.
  if (r.status !== 0 || !hasNote(r.stdout, 'Xen', XEN_ELFNOTE_PHYS32_ENTRY)) return undefined;
  return r.stdout;
}

/** Module name (dashes as underscores, like modprobe) → path relative to the module tree. */
function moduleIndex(modulesDir: string): Map<string, { file: string; deps: string[] }> {
  const index = new Map<string, { file: string; deps: string[] }>();
  let dep: string;
  try {
    dep = fs.readFileSync(path.join(modulesDir, 'modules.dep'), 'utf8');
  } catch {
    return index;
  }
  for (const line of dep.split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const file = line.slice(0, colon);
    const deps = line.slice(colon + 1).trim().split(/\s+/).filter(Boolean);
    index.set(moduleName(file), { file, deps: deps.map(moduleName) });
  }
  return index;
}

function moduleName(file: string): string {
  return path.basename(file).replace(/\.ko(\.(xz|gz|zst))?$/, '').replace(/-/g, '_');
}

export interface ModuleFile {
  name: string;
  /** Path relative to the module tree, as modules.dep names it. */
  file: string;
}

/**
 * The modules to insmod, each after everything it depends on. modules.dep lists a module's
 * full dependency closure, so a depth-first walk that emits a module after its dependencies
 * gives a valid order. Modules built into the kernel (modules.builtin) need no loading.
 */
export function moduleLoadOrder(modulesDir: string, wanted: string[]): ModuleFile[] {
  const index = moduleIndex(modulesDir);
  const builtin = readBuiltin(modulesDir);
  const order: ModuleFile[] = [];
  const seen = new Set<string>();
  const visit = (name: string, neededBy: string): void => {
    if (seen.has(name)) return;
    seen.add(name);
    const entry = index.get(name);
    if (!entry) {
      if (builtin.has(name)) return;
      throw new Error(`module ${name} (needed by ${neededBy}) is neither in ${modulesDir}/modules.dep nor built in`);
    }
    for (const dep of entry.deps) visit(dep, name);
    order.push({ name, file: entry.file });
  };
  for (const name of wanted) visit(name, 'the guest init');
  return order;
}

function readBuiltin(modulesDir: string): Set<string> {
  try {
    const text = fs.readFileSync(path.join(modulesDir, 'modules.builtin'), 'utf8');
    return new Set(text.split('\n').filter(Boolean).map(moduleName));
  } catch {
    return new Set();
  }
}

/** The module's ELF image; busybox insmod wants it uncompressed. */
export function readModule(modulesDir: string, file: string): Buffer {
  const full = path.join(modulesDir, file);
  if (file.endsWith('.ko')) return fs.readFileSync(full);
  if (file.endsWith('.ko.gz')) return zlib.gunzipSync(fs.readFileSync(full));
  const tool = file.endsWith('.ko.xz') ? 'xz' : file.endsWith('.ko.zst') ? 'zstd' : undefined;
  if (!tool) throw new Error(`unknown module format: ${full}`);
  const r = spawnSync(tool, ['-dc', full], { maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${tool} -dc ${full} failed: ${r.error?.message ?? r.stderr.toString()}`);
  return r.stdout;
}

function compareVersions(a: string, b: string): number {
  const pa = a.split(/[.-]/).map((p) => Number.parseInt(p, 10));
  const pb = b.split(/[.-]/).map((p) => Number.parseInt(p, 10));
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? -1) - (pb[i] ?? -1);
    if (d !== 0 && !Number.isNaN(d)) return d;
  }
  return a.localeCompare(b);
}
