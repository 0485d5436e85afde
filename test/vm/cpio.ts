/**
 * A writer for the cpio "newc" archive format, the format the kernel unpacks as an initramfs
 * (Documentation/driver-api/early-userspace/buffer-format.rst). Writing it here rather than
 * running cpio(1) lets the archive hold device nodes and root-owned files without privileges.
 */

const MAGIC = '070701';
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

export class CpioWriter {
  private readonly parts: Buffer[] = [];
  private size = 0;
  private nextInode = 1;

  dir(name: string, mode = 0o755): void {
    this.entry(name, S_IFDIR | mode, Buffer.alloc(0), 0, 0);
  }

  file(name: string, data: Buffer, mode = 0o644): void {
    this.entry(name, S_IFREG | mode, data, 0, 0);
  }

  symlink(name: string, target: string): void {
    this.entry(name, S_IFLNK | 0o777, Buffer.from(target), 0, 0);
  }

  charDevice(name: string, major: number, minor: number, mode = 0o600): void {
    this.entry(name, S_IFCHR | mode, Buffer.alloc(0), major, minor);
  }

  /** Appends the trailer and returns the archive; the writer is spent afterwards. */
  finish(): Buffer {
    this.entry('TRAILER!!!', 0, Buffer.alloc(0), 0, 0);
    return Buffer.concat(this.parts, this.size);
  }

  private entry(name: string, mode: number, data: Buffer, rdevMajor: number, rdevMinor: number): void {
    const nameBytes = Buffer.from(`${name}\0`);
    const fields = [
      name === 'TRAILER!!!' ? 0 : this.nextInode++,
      mode,
      0, // uid
      0, // gid
      (mode & S_IFDIR) === S_IFDIR ? 2 : 1,
      0, // mtime: fixed, so the same inputs give the same archive
      data.length,
      0, // devmajor
      0, // devminor
      rdevMajor,
      rdevMinor,
      nameBytes.length,
      0, // check
    ];
    const header = MAGIC + fields.map((v) => v.toString(16).padStart(8, '0')).join('');
    this.push(Buffer.from(header, 'ascii'));
    this.push(nameBytes);
    this.pad();
    this.push(data);
    this.pad();
  }

  private push(b: Buffer): void {
    this.parts.push(b);
    this.size += b.length;
  }

  /** Header+name and data each end on a 4-byte boundary. */
  private pad(): void {
    const rest = this.size % 4;
    if (rest !== 0) this.push(Buffer.alloc(4 - rest));
  }
}
