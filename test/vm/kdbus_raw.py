"""Raw kdbus ioctls from Python for the VM's CUSE tests: no preload library, no sd-bus."""
import ctypes
import struct
import sys

LIBC = ctypes.CDLL(None, use_errno=True)

BUS_MAKE, HELLO, SEND, RECV, FREE, MATCH_ADD = 0x40189500, 0xC0609580, 0x40389590, 0x80409591, 0x40209583, 0x402095B0
EAGAIN, EBADFD = 11, 77


class Struct:
    """A command struct in C memory (8-aligned, as kdbus requires), passed by address."""

    def __init__(self, data):
        self.c = ctypes.create_string_buffer(bytes(data), len(data))

    def ioctl(self, fd, req):
        if LIBC.ioctl(fd, ctypes.c_ulong(req), ctypes.c_void_p(ctypes.addressof(self.c))) < 0:
            return ctypes.get_errno()
        return 0

    def u64(self, off):
        return struct.unpack_from('<Q', self.c.raw, off)[0]


def check(cond, what):
    if not cond:
        print(f'FAILED: {what}', file=sys.stderr)
        sys.exit(1)


def item(t, payload):
    size = 16 + len(payload)
    return struct.pack('<QQ', size, t) + payload + b'\0' * ((8 - size % 8) % 8)
