/**
 * Build products of the VM harness (initramfs, extracted kernel) live in a cache under the
 * temporary directory, named by everything that goes into them, and are built only when
 * missing.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const CACHE_DIR = path.join(os.tmpdir(), 'kdbus-cuse-vm-cache');

/** The cached file's path; a build that yields nothing caches nothing and yields undefined. */
export function cachedFile(name: string, build: () => Buffer): string;
export function cachedFile(name: string, build: () => Buffer | undefined): string | undefined;
export function cachedFile(name: string, build: () => Buffer | undefined): string | undefined {
  const target = path.join(CACHE_DIR, name);
  if (fs.existsSync(target)) return target;
  const data = build();
  if (!data) return undefined;
  fs.mkdirSync(CACHE_DIR, { recursive: true });
  // Concurrent test runs may build the same file: write aside, then rename into place.
  const partial = `${target}.${process.pid}.tmp`;
  fs.writeFileSync(partial, data);
  fs.renameSync(partial, target);
  return target;
}
