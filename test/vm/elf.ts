/** Just enough ELF64 (little-endian) reading for the VM harness's checks on binaries. */

export const PT_INTERP = 3;
export const PT_NOTE = 4;

export interface ProgramHeader {
  type: number;
  offset: number;
  fileSize: number;
}

/** The program headers, or undefined when `elf` is not a 64-bit ELF file. */
export function programHeaders(elf: Buffer): ProgramHeader[] | undefined {
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2) return undefined;
  const phoff = Number(elf.readBigUInt64LE(32));
  const phentsize = elf.readUInt16LE(54);
  const headers: ProgramHeader[] = [];
  for (let i = 0; i < elf.readUInt16LE(56); i++) {
    const ph = phoff + i * phentsize;
    headers.push({
      type: elf.readUInt32LE(ph),
      offset: Number(elf.readBigUInt64LE(ph + 8)),
      fileSize: Number(elf.readBigUInt64LE(ph + 32)),
    });
  }
  return headers;
}

/** Whether a PT_NOTE segment holds a note with this owner and type. */
export function hasNote(elf: Buffer, owner: string, type: number): boolean {
  for (const ph of programHeaders(elf) ?? []) {
    if (ph.type !== PT_NOTE) continue;
    const end = ph.offset + ph.fileSize;
    for (let at = ph.offset; at + 12 <= end; ) {
      const namesz = elf.readUInt32LE(at);
      const descsz = elf.readUInt32LE(at + 4);
      if (elf.readUInt32LE(at + 8) === type && elf.toString('latin1', at + 12, at + 12 + namesz) === `${owner}\0`) {
        return true;
      }
      at += 12 + align4(namesz) + align4(descsz);
    }
  }
  return false;
}

function align4(n: number): number {
  return (n + 3) & ~3;
}
