#!/usr/bin/python3
"""python3-dbus clients for the legacy-client tests; each prints what it saw, one line each.

    client.py ADDRESS echo DEST           Echo and Describe with the standard arguments:
                                          "UNIQUE name", "LISTED true|false", "ECHO json",
                                          "DESCRIBE text"
    client.py ADDRESS send-fd DEST TEXT   passes a pipe holding TEXT to ReadFd: "READ text"
    client.py ADDRESS recv-fd DEST TEXT   reads the descriptor MakeFd(TEXT) returns: "GOT text"
    client.py ADDRESS big DEST N...       for each N: Digest of pattern(N), then Bytes(N):
                                          "BIG n sent=match|MISMATCH received=match|MISMATCH"
    client.py ADDRESS big-at DEST PATH IFACE N...
                                          the same at another object and interface
    client.py ADDRESS subscribe RULE...   AddMatch for each rule and for End; "READY name",
                                          then "SIG member path arg0 arg1" per Tick, Tock or
                                          End signal, and exits after End
    client.py ADDRESS monitor RULE...     BecomeMonitor(rules); "MONITORING", then
                                          "MSG type sender destination path interface member"
                                          per message, until killed
    client.py ADDRESS eavesdrop RULE...   AddMatch for each rule; "EAVESDROPPING name", then
                                          "MSG ..." as monitor does, until killed
The standard arguments (signature sxaa{sv}v(sib)) are those of the tests: STANDARD below.
"""
import json
import os
import sys
import zlib

import dbus
import dbus.lowlevel
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from service import IFACE, PATH, pattern, typed  # noqa: E402

STANDARD = [
    dbus.String('héllo wörld'),
    dbus.Int64(-9007199254740993),
    dbus.Array([
        dbus.Dictionary({'k1': dbus.Int32(7, variant_level=1), 'k2': dbus.String('v', variant_level=1)}, signature='sv'),
        dbus.Dictionary({}, signature='sv'),
    ], signature='a{sv}'),
    dbus.Array([dbus.UInt32(1), dbus.UInt32(2)], signature='u', variant_level=1),
    dbus.Struct([dbus.String('st'), dbus.Int32(3), dbus.Boolean(True)], signature='sib'),
]
SIGNATURE = 'sxaa{sv}v(sib)'
TYPE_NAMES = {
    dbus.lowlevel.MESSAGE_TYPE_METHOD_CALL: 'method_call',
    dbus.lowlevel.MESSAGE_TYPE_METHOD_RETURN: 'method_return',
    dbus.lowlevel.MESSAGE_TYPE_ERROR: 'error',
    dbus.lowlevel.MESSAGE_TYPE_SIGNAL: 'signal',
}


def out(*words):
    print(' '.join(str(w) for w in words), flush=True)


def call(bus, dest, member, args, signature, timeout=10, at=(PATH, IFACE)):
    m = dbus.lowlevel.MethodCallMessage(dest, at[0], at[1], member)
    if args:
        m.append(*args, signature=signature)
    return bus.send_message_with_reply_and_block(m, timeout)


def main():
    address, command, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
    DBusGMainLoop(set_as_default=True)
    bus = dbus.bus.BusConnection(address)
    if command == 'echo':
        dest = rest[0]
        unique = bus.get_unique_name()
        out('UNIQUE', unique)
        names = bus.list_names()
        out('LISTED', 'true' if unique in names else 'false')
        reply = call(bus, dest, 'Echo', STANDARD, SIGNATURE)
        out('ECHO', reply.get_signature(), json.dumps([typed(a) for a in reply.get_args_list()], ensure_ascii=False, sort_keys=True))
        reply = call(bus, dest, 'Describe', STANDARD, SIGNATURE)
        out('DESCRIBE', reply.get_args_list()[0])
    elif command == 'send-fd':
        dest, text = rest
        r, w = os.pipe()
        os.write(w, text.encode('utf-8'))
        os.close(w)
        reply = call(bus, dest, 'ReadFd', [dbus.types.UnixFd(r)], 'h')
        os.close(r)
        out('READ', reply.get_args_list()[0])
    elif command == 'recv-fd':
        dest, text = rest
        reply = call(bus, dest, 'MakeFd', [text], 's')
        fd = reply.get_args_list()[0].take()
        with os.fdopen(fd, 'rb') as f:
            out('GOT', f.read().decode('utf-8'))
    elif command in ('big', 'big-at'):
        dest = rest[0]
        at, sizes = ((rest[1], rest[2]), rest[3:]) if command == 'big-at' else ((PATH, IFACE), rest[1:])
        for n in map(int, sizes):
            data = pattern(n)
            digest = call(bus, dest, 'Digest', [dbus.ByteArray(data)], 'ay', 120, at).get_args_list()[0]
            sent = 'match' if str(digest) == '%d %08x' % (n, zlib.crc32(data)) else 'MISMATCH'
            got = bytes(call(bus, dest, 'Bytes', [dbus.UInt32(n)], 'u', 120, at).get_args_list(byte_arrays=True)[0])
            out('BIG', n, 'sent=' + sent, 'received=' + ('match' if got == data else 'MISMATCH'))
    elif command == 'subscribe':
        loop = GLib.MainLoop()

        def on_message(_conn, msg):
            if msg.get_type() == dbus.lowlevel.MESSAGE_TYPE_SIGNAL and msg.get_member() in ('Tick', 'Tock', 'End'):
                args = msg.get_args_list()
                out('SIG', msg.get_member(), msg.get_path(), *[str(a) for a in args[:2]])
                if msg.get_member() == 'End':
                    loop.quit()
            return dbus.lowlevel.HANDLER_RESULT_NOT_YET_HANDLED

        bus.add_message_filter(on_message)
        for rule in rest + ["type='signal',member='End'"]:
            bus.add_match_string(rule)
        out('READY', bus.get_unique_name())
        loop.run()
    elif command in ('monitor', 'eavesdrop'):
        loop = GLib.MainLoop()

        def on_monitored(_conn, msg):
            out('MSG', TYPE_NAMES.get(msg.get_type(), msg.get_type()), msg.get_sender(), msg.get_destination(),
                msg.get_path(), msg.get_interface(), msg.get_member())
            # A listener must never answer what was addressed to others: handled, so libdbus
            # sends no error reply either.
            return dbus.lowlevel.HANDLER_RESULT_HANDLED

        if command == 'monitor':
            m = dbus.lowlevel.MethodCallMessage('org.freedesktop.DBus', '/org/freedesktop/DBus',
                                                'org.freedesktop.DBus.Monitoring', 'BecomeMonitor')
            m.append(dbus.Array(rest, signature='s'), dbus.UInt32(0), signature='asu')
            bus.send_message_with_reply_and_block(m, 10)
            bus.add_message_filter(on_monitored)
            out('MONITORING')
        else:
            bus.add_message_filter(on_monitored)
            for rule in rest:
                bus.add_match_string(rule)
            out('EAVESDROPPING', bus.get_unique_name())
        loop.run()
    else:
        sys.exit('unknown command ' + command)


if __name__ == '__main__':
    try:
        main()
    except dbus.exceptions.DBusException as e:
        print('ERROR %s: %s' % (e.get_dbus_name(), e.get_dbus_message()), file=sys.stderr)
        sys.exit(1)
