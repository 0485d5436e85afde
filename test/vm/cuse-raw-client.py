"""A kdbus client with raw ioctls and no preload library, for the CUSE devices in the VM.

It checks what CUSE itself must carry: node creation by BUS_MAKE with kdbus's mode, HELLO,
reading the pool with read(2) (CUSE has no mmap; a read of N bytes returns pool bytes
[0, N)), EBADFD for a second HELLO, poll readiness, SEND and RECV between two connections,
ID_REMOVE queued before close() returns, and the bus node vanishing with its owner.
Exits 0 on success; prints the failed check otherwise.
"""
import ctypes
import os
import select
import struct
import sys

from kdbus_raw import BUS_MAKE, EAGAIN, EBADFD, FREE, HELLO, MATCH_ADD, RECV, SEND, Struct, check, item

ROOT = sys.argv[1] if len(sys.argv) > 1 else '/dev/kdbus'


def hello(fd):
    h = Struct(struct.pack('<10Q', 96, 1, 0, 0x3fff, 0x3fff, 0, 0, 16 << 20, 0, 0) + b'\0' * 16)
    check(h.ioctl(fd, HELLO) == 0, 'HELLO succeeds')
    return h


def pool(fd, offset, size):
    data = os.read(fd, offset + size)
    check(len(data) == offset + size, f'read(2) returns {offset + size} pool bytes')
    return data[offset:]


def free(fd, offset):
    check(Struct(struct.pack('<4Q', 32, 0, 0, offset)).ioctl(fd, FREE) == 0, 'FREE succeeds')


def recv(fd):
    r = Struct(struct.pack('<QQQqQQQQ', 64, 0, 0, 0, 0, 0, 0, 0))
    err = r.ioctl(fd, RECV)
    return err, r.u64(40), r.u64(48)


uid = os.getuid()
busname = f'{uid}-rawcuse'
ctl = os.open(f'{ROOT}/control', os.O_RDWR)
make = Struct(struct.pack('<3Q', 0, 2, 0) + item(7, struct.pack('<QQ', 64, 1)) + item(11, busname.encode() + b'\0'))
ctypes.memmove(make.c, struct.pack('<Q', len(make.c.raw)), 8)
check(make.ioctl(ctl, BUS_MAKE) == 0, 'BUS_MAKE succeeds')
node = f'{ROOT}/{busname}/bus'
check(os.path.exists(node), 'the bus node exists when BUS_MAKE returns')
check(os.stat(node).st_mode & 0o777 == 0o666, 'a world bus node has mode 0666')

a = os.open(node, os.O_RDWR | os.O_CLOEXEC)
ha = hello(a)
ida = ha.u64(48)
bloom = pool(a, ha.u64(64), ha.u64(72))
check(struct.unpack('<4Q', bloom) == (32, 7, 64, 1), 'HELLO leaves one BLOOM_PARAMETER item in the pool')
free(a, ha.u64(64))
check(Struct(struct.pack('<10Q', 96, 1, 0, 0x3fff, 0x3fff, 0, 0, 16 << 20, 0, 0) + b'\0' * 16).ioctl(a, HELLO) == EBADFD,
      'a second HELLO on the same file is EBADFD')
check(recv(a)[0] == EAGAIN, 'RECV on an empty queue is EAGAIN')

b = os.open(node, os.O_RDWR | os.O_CLOEXEC)
hb = hello(b)
idb = hb.u64(48)
free(b, hb.u64(64))
match = Struct(struct.pack('<4Q', 0, 0, 0, 1) + item(0x8004, struct.pack('<QQ', idb, 0)))
ctypes.memmove(match.c, struct.pack('<Q', len(match.c.raw)), 8)
check(match.ioctl(a, MATCH_ADD) == 0, 'MATCH_ADD for ID_REMOVE of the peer')

p = select.poll()
p.register(a, select.POLLIN)
check(p.poll(0) == [], 'an idle connection does not poll readable')

payload = ctypes.create_string_buffer(b'carried by CUSE', 15)
msg = ctypes.create_string_buffer(struct.pack('<QQqQQQQQ', 64 + 32, 0, 0, ida, 0, 0x4442757344427573, 7, 0)
                                  + item(2, struct.pack('<QQ', 15, ctypes.addressof(payload))))
send = Struct(struct.pack('<7Q', 56, 0, 0, ctypes.addressof(msg), 0, 0, 0))
check(send.ioctl(b, SEND) == 0, 'SEND by id succeeds')
check(p.poll(2000) != [], 'the receiver polls readable after the SEND')
err, off, size = recv(a)
check(err == 0, 'RECV returns the message')
m = pool(a, off, size)
check(struct.unpack_from('<Q', m, 32)[0] == idb, 'src_id is the sender')
check(b'carried by CUSE' in m, 'the payload arrived')
free(a, off)

os.close(b)
err, off, size = recv(a)
check(err == 0, 'ID_REMOVE of the closed peer is queued before close() returned')
m = pool(a, off, size)
check(struct.unpack_from('<Q', m, 64 + 8)[0] == 0x8004 and struct.unpack_from('<Q', m, 64 + 16)[0] == idb,
      'the notification is ID_REMOVE for the peer')

os.close(a)
os.close(ctl)
check(not os.path.exists(node), 'the bus node is gone once its owner closed the control file')
print('ok')
