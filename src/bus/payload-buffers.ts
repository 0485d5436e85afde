/**
 * Reusable buffers for message bytes that are done with when the operation that made them
 * ends: a SEND's payload, read from the sender's data vectors and copied into the receivers'
 * pools (held until the SEND's cleanup, Staging.release), and what the dbus1 encoders write
 * for a socket or for the bus (src/dbus1/output-buffer.ts). A buffer of 4 KiB or more lives
 * outside V8's heap, and V8 answers a high rate of such allocations with full collections:
 * at 64 KiB per call the daemon ran one every 160 calls (measured with --trace-gc), and
 * profiles showed about a third of its time in the collector. An operation nested in
 * another (a SEND from within a delivery) takes a buffer of its own.
 */

/** Node serves smaller allocations from a shared slab, which costs V8 nothing extra. */
export const POOLED_PAYLOAD_MIN = 4096;
/** What the free lists may hold in all; a buffer given back beyond it is left to the GC. */
const RETAINED_MAX = 8 * 1024 * 1024;

export class PayloadBuffers {
  /** Free buffers by size class (a power of two). */
  private readonly free = new Map<number, Buffer[]>();
  private retained = 0;

  /** A buffer of at least `size` bytes, rounded up to a power of two from POOLED_PAYLOAD_MIN; give() it back when done. */
  take(size: number): Buffer {
    let c = POOLED_PAYLOAD_MIN;
    while (c < size) c *= 2;
    const b = this.free.get(c)?.pop();
    if (!b) return Buffer.allocUnsafe(c);
    this.retained -= c;
    return b;
  }

  give(b: Buffer): void {
    if (this.retained + b.length > RETAINED_MAX) return;
    let list = this.free.get(b.length);
    if (!list) this.free.set(b.length, (list = []));
    list.push(b);
    this.retained += b.length;
  }
}

/** The daemon's: one main thread, so one set of free lists. */
export const payloadBuffers = new PayloadBuffers();
