/**
 * Caller memory: how a command reaches the client's address space. CUSE backs it with
 * process_vm_readv/writev (or the FUSE ioctl retry protocol), the socket transport with
 * bytes the shim sent along, tests with an arena of Buffers. Addresses are u64 values
 * exactly as the client wrote them.
 *
 * Contract: read() and write() are synchronous and throw KdbusError EFAULT for memory the
 * client cannot access. Commands read everything they need before they change any state,
 * so a transport may abort a command half-way (for example to fetch more memory through
 * another retry round) and run it again from the start.
 */
export interface CallerMemory {
  read(address: bigint, length: number): Buffer;
  /** Reads into target[offset, offset + length) instead of a buffer of its own, as read() would. */
  readInto(address: bigint, length: number, target: Buffer, offset: number): void;
  /**
   * The bytes themselves, not a copy, where this memory can lend them unchanged until the
   * command ends; undefined where it cannot (read them instead, which also reports faults).
   */
  lend?(address: bigint, length: number): Buffer | undefined;
  write(address: bigint, data: Buffer): void;
}
