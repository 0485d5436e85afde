import assert from 'node:assert/strict';
import {
  ioctlResultReply, openReply, parseInHeader, parseIoctlIn, pollNotify, pollReply, readCounter, reply,
} from '../../src/cuse/fuse-abi';

// Layouts from include/uapi/linux/fuse.h (all little-endian on the targets):
//   fuse_in_header  { u32 len; u32 opcode; u64 unique; u64 nodeid; u32 uid; u32 gid; u32 pid; u32 padding; }
//   fuse_out_header { u32 len; s32 error; u64 unique; }
//   fuse_ioctl_in   { u64 fh; u32 flags; u32 cmd; u64 arg; u32 in_size; u32 out_size; }
//   fuse_ioctl_out  { s32 result; u32 flags; u32 in_iovs; u32 out_iovs; }
//   fuse_poll_out   { u32 revents; u32 padding; }
//   fuse_open_out   { u64 fh; u32 open_flags; u32 padding; }
//   fuse_notify_poll_wakeup_out { u64 kh; }   sent with error = FUSE_NOTIFY_POLL (1), unique 0

/** A request id above 2^32, so both halves of the u64 matter. */
const UNIQUE = 0x1_2345_6789;

function outHeader(b: Buffer): { len: number; error: number; unique: bigint } {
  return { len: b.readUInt32LE(0), error: b.readInt32LE(4), unique: b.readBigUInt64LE(8) };
}

describe('fuse-abi: the FUSE/CUSE wire format', () => {
  it('reads a request header, its u64 request id exactly', () => {
    const b = Buffer.alloc(40);
    b.writeUInt32LE(72, 0);
    b.writeUInt32LE(39, 4);
    b.writeBigUInt64LE(BigInt(UNIQUE), 8);
    b.writeBigUInt64LE(7n, 16);
    b.writeUInt32LE(1000, 24);
    b.writeUInt32LE(100, 28);
    b.writeUInt32LE(4242, 32);
    assert.deepEqual(parseInHeader(b), { len: 72, opcode: 39, unique: UNIQUE, uid: 1000, gid: 100, pid: 4242 });
  });

  it('reads fuse_ioctl_in, with a view of the data that follows it', () => {
    const p = Buffer.alloc(32 + 4);
    p.writeBigUInt64LE(0x2_0000_0003n, 0);
    p.writeUInt32LE(2, 8);
    p.writeUInt32LE(0xc0189503, 12);
    p.writeBigUInt64LE(0x7fff_1234_5678n, 16);
    p.writeUInt32LE(4, 24);
    p.writeUInt32LE(8, 28);
    p.write('abcd', 32, 'latin1');
    const io = parseIoctlIn(p);
    assert.equal(io.fh, 0x2_0000_0003);
    assert.equal(io.flags, 2);
    assert.equal(io.cmd, 0xc0189503);
    assert.equal(io.arg, 0x7fff_1234_5678n);
    assert.equal(io.inSize, 4);
    assert.equal(io.outSize, 8);
    assert.equal(io.data.toString('latin1'), 'abcd');
  });

  it('reads u64 counters across the 32-bit boundary', () => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(0xffff_ffffn, 0);
    assert.equal(readCounter(b, 0), 0xffff_ffff);
    b.writeBigUInt64LE(0x1_0000_0000n, 0);
    assert.equal(readCounter(b, 0), 0x1_0000_0000);
  });

  it('writes an error reply as a bare header with the negative errno', () => {
    const b = reply(UNIQUE, 38);
    assert.deepEqual(outHeader(b), { len: 16, error: -38, unique: BigInt(UNIQUE) });
    assert.equal(b.length, 16);
  });

  it('writes an ioctl result with no iovecs, and its out data after fuse_ioctl_out', () => {
    const b = ioctlResultReply(UNIQUE, -11);
    assert.deepEqual(outHeader(b), { len: 32, error: 0, unique: BigInt(UNIQUE) });
    assert.deepEqual([b.readInt32LE(16), b.readUInt32LE(20), b.readUInt32LE(24), b.readUInt32LE(28)], [-11, 0, 0, 0]);
    const withData = ioctlResultReply(5, 0, Buffer.from('xyz'));
    assert.equal(outHeader(withData).len, 35);
    assert.equal(withData.subarray(32).toString('latin1'), 'xyz');
  });

  it('leaves nothing of an earlier reply in a later one', () => {
    // The retry-style flags word of an ioctl reply, then a poll reply in the same bytes.
    const first = ioctlResultReply(1, 0, Buffer.alloc(16, 0xff));
    assert.equal(first.length, 48);
    const poll = pollReply(UNIQUE, 0x41);
    assert.deepEqual(outHeader(poll), { len: 24, error: 0, unique: BigInt(UNIQUE) });
    assert.deepEqual([poll.readUInt32LE(16), poll.readUInt32LE(20)], [0x41, 0]);
    const result = ioctlResultReply(2, 0);
    assert.deepEqual([result.readUInt32LE(20), result.readUInt32LE(24), result.readUInt32LE(28)], [0, 0, 0]);
  });

  it('writes fuse_open_out with direct I/O and no seeking', () => {
    const b = openReply(UNIQUE, 0x1_0000_0002);
    assert.deepEqual(outHeader(b), { len: 32, error: 0, unique: BigInt(UNIQUE) });
    assert.equal(b.readBigUInt64LE(16), 0x1_0000_0002n);
    // FOPEN_DIRECT_IO (1) | FOPEN_NONSEEKABLE (4)
    assert.equal(b.readUInt32LE(24), 5);
  });

  it('writes a poll wake-up as notification 1 with unique 0 and the kh', () => {
    const b = pollNotify(0x3_0000_0001);
    assert.deepEqual(outHeader(b), { len: 24, error: 1, unique: 0n });
    assert.equal(b.readBigUInt64LE(16), 0x3_0000_0001n);
  });
});
