#!/usr/bin/python3
"""A D-Bus service written with python3-dbus, for the legacy-client tests.

    service.py ADDRESS NAME

Owns NAME on the bus at ADDRESS and answers at /org/kdbuscuse/Test, interface
org.kdbuscuse.Test:
  Echo(any...)        returns its arguments with their signature unchanged
  Describe(any...)    returns one string: the signature, a space, and the arguments typed
                      (see typed()), so a test sees what arrived, whatever the caller prints
  Fail()              raises org.kdbuscuse.Test.Error.Custom "custom failure"
  Never()             never answers
  ReadFd(h)           returns what can be read from the file descriptor
  MakeFd(s)           returns a descriptor (a pipe) from which the string can be read
  Emit(s tag)         emits the signal set below, then answers
  EmitEnd()           emits End, then answers
  Digest(ay)          returns "<length> <CRC-32>": the array's length, zlib's CRC-32 in 8 hex digits
  Bytes(u n)          returns pattern(n), an array of n bytes (ay)
  Pid()               returns its process id (u)
Signals it emits for Emit(tag), interface org.kdbuscuse.Test, args (s arg0, s tag):
  Tick  at /org/kdbuscuse/Test/sub/a  arg0 "alpha"
  Tick  at /org/kdbuscuse/Test/sub/b  arg0 "beta"
  Tick  at /org/kdbuscuse/Elsewhere   arg0 "alpha"
  Tock  at /org/kdbuscuse/Test/sub    arg0 "gamma"
  Tick  at /org/kdbuscuse/Test        arg0 "/org/kdbuscuse/Test/sub/x" (for arg0path)
Prints "READY <unique name>" once NAME is owned; stops on SIGTERM or stdin closing.
"""
import json
import os
import signal
import sys
import zlib

import dbus
import dbus.lowlevel
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

IFACE = 'org.kdbuscuse.Test'
PATH = '/org/kdbuscuse/Test'



def pattern(n):
    """n bytes that differ from one position to the next, made fast enough for 64 MiB."""
    return (bytes(range(251)) * (n // 251 + 1))[:n]


TYPE_CODES = [
    (dbus.Boolean, 'b'), (dbus.Byte, 'y'), (dbus.Int16, 'n'), (dbus.UInt16, 'q'),
    (dbus.Int32, 'i'), (dbus.UInt32, 'u'), (dbus.Int64, 'x'), (dbus.UInt64, 't'),
    (dbus.Double, 'd'), (dbus.ObjectPath, 'o'), (dbus.Signature, 'g'), (dbus.String, 's'),
    (dbus.types.UnixFd, 'h'),
]


def typed(v):
    """A value as plain JSON data that keeps every D-Bus type: 'x:-5', ['...'], {'k': ...},
    {'(': [...]} for a struct, {'v': ...} around a variant's content."""
    level = getattr(v, 'variant_level', 0)
    if level:
        inner = v.__class__(v, variant_level=level - 1) if not isinstance(v, dbus.types.UnixFd) else v
        return {'v': typed(inner)}
    if isinstance(v, dbus.Struct):
        return {'(': [typed(x) for x in v]}
    if isinstance(v, dbus.Dictionary):
        return {str(typed(k)): typed(x) for k, x in v.items()}
    if isinstance(v, dbus.Array):
        return [typed(x) for x in v]
    for cls, code in TYPE_CODES:
        if isinstance(v, cls):
            if code == 'b':
                return 'b:' + ('true' if v else 'false')
            if code == 'h':
                return 'h'
            if code == 'd':
                return 'd:' + repr(float(v))
            if code in 'ynqiuxt':
                return code + ':' + str(int(v))
            return code + ':' + str(v)
    raise TypeError('unexpected value %r' % (v,))


def main():
    address, name = sys.argv[1], sys.argv[2]
    DBusGMainLoop(set_as_default=True)
    bus = dbus.bus.BusConnection(address)
    loop = GLib.MainLoop()
    pending = []  # Never()'s calls, kept so they are not answered by a collected object

    def reply(msg, *args, signature=None):
        r = dbus.lowlevel.MethodReturnMessage(msg)
        if args:
            r.append(*args, signature=signature)
        bus.send_message(r)

    def emit(path, member, *args):
        s = dbus.lowlevel.SignalMessage(path, IFACE, member)
        s.append(*args, signature='s' * len(args))
        bus.send_message(s)

    def on_message(_conn, msg):
        if msg.get_type() != dbus.lowlevel.MESSAGE_TYPE_METHOD_CALL:
            return dbus.lowlevel.HANDLER_RESULT_NOT_YET_HANDLED
        if msg.get_path() != PATH or msg.get_interface() not in (IFACE, None):
            return dbus.lowlevel.HANDLER_RESULT_NOT_YET_HANDLED
        member = msg.get_member()
        if member == 'Digest':
            # Large arrays as bytes: decoded one dbus.Byte each they would take seconds.
            data = bytes(msg.get_args_list(byte_arrays=True)[0])
            reply(msg, '%d %08x' % (len(data), zlib.crc32(data)), signature='s')
            return dbus.lowlevel.HANDLER_RESULT_HANDLED
        args = msg.get_args_list()
        sig = msg.get_signature()
        if member == 'Echo':
            reply(msg, *args, signature=sig)
        elif member == 'Describe':
            reply(msg, sig + ' ' + json.dumps([typed(a) for a in args], ensure_ascii=False, sort_keys=True), signature='s')
        elif member == 'Fail':
            bus.send_message(dbus.lowlevel.ErrorMessage(msg, IFACE + '.Error.Custom', 'custom failure'))
        elif member == 'Never':
            pending.append(msg)
        elif member == 'ReadFd':
            fd = args[0].take()
            with os.fdopen(fd, 'rb') as f:
                reply(msg, f.read().decode('utf-8'), signature='s')
        elif member == 'MakeFd':
            r, w = os.pipe()
            os.write(w, str(args[0]).encode('utf-8'))
            os.close(w)
            reply(msg, dbus.types.UnixFd(r), signature='h')
            os.close(r)
        elif member == 'Emit':
            tag = str(args[0])
            emit(PATH + '/sub/a', 'Tick', 'alpha', tag)
            emit(PATH + '/sub/b', 'Tick', 'beta', tag)
            emit('/org/kdbuscuse/Elsewhere', 'Tick', 'alpha', tag)
            emit(PATH + '/sub', 'Tock', 'gamma', tag)
            emit(PATH, 'Tick', PATH + '/sub/x', tag)
            reply(msg)
        elif member == 'EmitEnd':
            emit(PATH, 'End', 'end', 'end')
            reply(msg)
        elif member == 'Bytes':
            reply(msg, dbus.ByteArray(pattern(int(args[0]))), signature='ay')
        elif member == 'Pid':
            reply(msg, dbus.UInt32(os.getpid()), signature='u')
        else:
            bus.send_message(dbus.lowlevel.ErrorMessage(
                msg, 'org.freedesktop.DBus.Error.UnknownMethod', 'no method ' + str(member)))
        return dbus.lowlevel.HANDLER_RESULT_HANDLED

    bus.add_message_filter(on_message)
    code = bus.request_name(name, dbus.bus.NAME_FLAG_DO_NOT_QUEUE)
    if code != dbus.bus.REQUEST_NAME_REPLY_PRIMARY_OWNER:
        print('could not own %s: reply %d' % (name, code), file=sys.stderr)
        sys.exit(1)
    print('READY ' + bus.get_unique_name(), flush=True)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.io_add_watch(sys.stdin.fileno(), GLib.IO_HUP | GLib.IO_IN, lambda *_: loop.quit())
    loop.run()


if __name__ == '__main__':
    main()
