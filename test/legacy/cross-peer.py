#!/usr/bin/python3
"""The dbus1 side of the cross tests (test/integration/legacy-cross.test.ts), with python3-dbus.
Its kdbus counterpart is test/c/kdbus-dbus-peer.c; the two answer the same interface.

    cross-peer.py ADDRESS serve NAME
        Owns NAME, answers org.example.Peer at any path:
          Echo(s) -> s + "?"            EchoFd(h) -> what the descriptor holds
          Fail(s) -> error org.example.Peer.Error.Failed, message s
          EmitPing(s) -> emits Ping(s) at /org/example/Peer, then answers ()
          Digest(ay) -> "<length> <CRC-32>" (zlib's, 8 hex digits)
          Bytes(u n) -> pattern(n) of service.py (ay)
          Quit() -> answers (), then exits
        Prints "ready <unique name>" once NAME is owned, and "call sender=<unique>
        member=<member> arg=<argument>" for every call.
    cross-peer.py ADDRESS listen N RULE...
        Adds the match rules, prints "ready <unique name>", then the first N signals the bus
        delivers (the driver's NameAcquired and NameLost for this connection excepted), as
        "signal sender=<name> path=<path> interface=<iface> member=<member> args=<a|b|c>".
    cross-peer.py ADDRESS emit MEMBER STRING [--without-no-reply-flag]
        Emits the signal org.example.Peer.MEMBER(STRING) at /org/example/Peer, then makes a
        call to the driver, so the bus has taken the signal before the program exits; prints
        "sent <unique name>". The option clears the header flag NO_REPLY_EXPECTED, which
        libdbus sets on signals but dbus1 does not require.
    cross-peer.py ADDRESS call-big DEST N
        Digest(pattern(N)) and Bytes(N) on DEST; prints "big n=N sent=match|MISMATCH
        received=match|MISMATCH".
    cross-peer.py ADDRESS call-fd DEST STRING
        Calls DEST's org.example.Peer.EchoFd at /org/example/Peer with the read end of a pipe
        holding STRING; prints "reply <string>" or "error <name> <message>".

Exits 3 when nothing happens for 30 s (serve: 300 s).
"""
import os
import signal
import sys
import zlib

import dbus
import dbus.lowlevel
import dbus.service
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from service import pattern  # noqa: E402

IFACE = 'org.example.Peer'
PATH = '/org/example/Peer'


def out(line):
    print(line, flush=True)


def connect(address):
    DBusGMainLoop(set_as_default=True)
    return dbus.bus.BusConnection(address)


def watchdog(seconds):
    def fire(*_):
        sys.stderr.write('cross-peer.py: the watchdog fired: no result in time\n')
        os._exit(3)
    signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)


class Peer(dbus.service.Object):
    def __init__(self, bus, loop):
        super().__init__(bus, PATH)
        self.loop = loop

    @dbus.service.method(IFACE, in_signature='s', out_signature='s', sender_keyword='sender')
    def Echo(self, s, sender=None):
        out(f'call sender={sender} member=Echo arg={s}')
        return s + '?'

    @dbus.service.method(IFACE, in_signature='h', out_signature='s', sender_keyword='sender')
    def EchoFd(self, fd, sender=None):
        n = fd.take()
        with os.fdopen(n, 'rb') as f:
            data = f.read().decode()
        out(f'call sender={sender} member=EchoFd arg={data}')
        return data

    @dbus.service.method(IFACE, in_signature='s', out_signature='', sender_keyword='sender')
    def Fail(self, s, sender=None):
        out(f'call sender={sender} member=Fail arg={s}')
        raise dbus.exceptions.DBusException(s, name='org.example.Peer.Error.Failed')

    @dbus.service.signal(IFACE, signature='s')
    def Ping(self, s):
        pass

    @dbus.service.method(IFACE, in_signature='s', out_signature='', sender_keyword='sender')
    def EmitPing(self, s, sender=None):
        out(f'call sender={sender} member=EmitPing arg={s}')
        self.Ping(s)

    @dbus.service.method(IFACE, in_signature='ay', out_signature='s', sender_keyword='sender', byte_arrays=True)
    def Digest(self, data, sender=None):
        out(f'call sender={sender} member=Digest arg=<{len(data)} bytes>')
        return '%d %08x' % (len(data), zlib.crc32(bytes(data)))

    @dbus.service.method(IFACE, in_signature='u', out_signature='ay', sender_keyword='sender')
    def Bytes(self, n, sender=None):
        out(f'call sender={sender} member=Bytes arg={n}')
        return dbus.ByteArray(pattern(int(n)))

    @dbus.service.method(IFACE, in_signature='', out_signature='', sender_keyword='sender')
    def Quit(self, sender=None):
        out(f'call sender={sender} member=Quit arg=')
        GLib.idle_add(self.loop.quit)


def serve(address, name):
    watchdog(300)
    bus = connect(address)
    loop = GLib.MainLoop()
    Peer(bus, loop)
    reply = bus.request_name(name, dbus.bus.NAME_FLAG_DO_NOT_QUEUE)
    if reply != dbus.bus.REQUEST_NAME_REPLY_PRIMARY_OWNER:
        sys.exit(f'cross-peer.py: RequestName({name}) answered {reply}, not PRIMARY_OWNER')
    out(f'ready {bus.get_unique_name()}')
    loop.run()


def listen(address, want, rules):
    watchdog(30)
    bus = connect(address)
    loop = GLib.MainLoop()
    me = bus.get_unique_name()
    got = [0]

    def on_message(_bus, m):
        if m.get_type() != 4:  # signals only
            return
        if m.get_sender() == 'org.freedesktop.DBus' and m.get_member() in ('NameAcquired', 'NameLost') \
                and m.get_destination() == me:
            return
        args = '|'.join(str(a) for a in m.get_args_list())
        out(f'signal sender={m.get_sender()} path={m.get_path()} interface={m.get_interface()} '
            f'member={m.get_member()} args={args}')
        got[0] += 1
        if got[0] >= want:
            loop.quit()

    bus.add_message_filter(on_message)
    for rule in rules:
        bus.add_match_string(rule)  # blocking: the driver has the rule when this returns
    out(f'ready {me}')
    loop.run()


def emit(address, member, text, options):
    watchdog(30)
    bus = connect(address)
    m = dbus.lowlevel.SignalMessage(PATH, IFACE, member)
    m.append(text, signature='s')
    if '--without-no-reply-flag' in options:
        m.set_no_reply(False)
    bus.send_message(m)
    bus.get_name_owner('org.freedesktop.DBus')  # answered after the signal was read
    out(f'sent {bus.get_unique_name()}')


def call_fd(address, dest, text):
    watchdog(30)
    bus = connect(address)
    r, w = os.pipe()
    os.write(w, text.encode())
    os.close(w)
    proxy = bus.get_object(dest, PATH, introspect=False)
    try:
        answer = proxy.EchoFd(dbus.types.UnixFd(r), dbus_interface=IFACE, timeout=20)
        out(f'reply {answer}')
    except dbus.exceptions.DBusException as e:
        out(f'error {e.get_dbus_name()} {e.get_dbus_message()}')
    finally:
        os.close(r)


def call_big(address, dest, n):
    watchdog(60)
    bus = connect(address)
    proxy = bus.get_object(dest, PATH, introspect=False)
    data = pattern(n)
    digest = proxy.Digest(dbus.ByteArray(data), dbus_interface=IFACE, timeout=50)
    got = bytes(proxy.Bytes(dbus.UInt32(n), dbus_interface=IFACE, timeout=50, byte_arrays=True))
    sent = 'match' if str(digest) == '%d %08x' % (n, zlib.crc32(data)) else 'MISMATCH'
    out(f'big n={n} sent={sent} received={"match" if got == data else "MISMATCH"}')


def main(argv):
    if len(argv) >= 4 and argv[2] == 'serve':
        serve(argv[1], argv[3])
    elif len(argv) >= 4 and argv[2] == 'listen':
        listen(argv[1], int(argv[3]), argv[4:])
    elif len(argv) >= 5 and argv[2] == 'emit':
        emit(argv[1], argv[3], argv[4], argv[5:])
    elif len(argv) == 5 and argv[2] == 'call-big':
        call_big(argv[1], argv[3], int(argv[4]))
    elif len(argv) == 5 and argv[2] == 'call-fd':
        call_fd(argv[1], argv[3], argv[4])
    else:
        sys.exit(__doc__)


if __name__ == '__main__':
    main(sys.argv)
