#!/usr/bin/python3
"""GDBus (GLib's D-Bus implementation, through python3-gi) clients for the legacy-client tests.

    gio-client.py ADDRESS echo DEST          calls Echo with the standard arguments and prints
                                             "ECHO <the reply in GVariant text form>"
    gio-client.py ADDRESS subscribe RULE...  AddMatch for each rule and for End; "READY name",
                                             then "SIG member path arg0 arg1" per Tick, Tock or
                                             End signal the bus delivers, and exits after End
The subscriber looks at every message delivered (a connection filter), not at GDBus's own
signal subscriptions, which filter again on the client side and would hide a bus that
delivers too much.
"""
import sys

from gi.repository import Gio, GLib

IFACE = 'org.kdbuscuse.Test'
PATH = '/org/kdbuscuse/Test'
STANDARD = GLib.Variant('(sxaa{sv}v(sib))', (
    'héllo wörld',
    -9007199254740993,
    [{'k1': GLib.Variant('i', 7), 'k2': GLib.Variant('s', 'v')}, {}],
    GLib.Variant('au', [1, 2]),
    ('st', 3, True),
))


def out(*words):
    print(' '.join(str(w) for w in words), flush=True)


def main():
    address, command, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
    flags = Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION
    conn = Gio.DBusConnection.new_for_address_sync(address, flags, None, None)
    if command == 'echo':
        reply = conn.call_sync(rest[0], PATH, IFACE, 'Echo', STANDARD, None, Gio.DBusCallFlags.NONE, 10000, None)
        out('ECHO', reply.print_(True))
    elif command == 'subscribe':
        loop = GLib.MainLoop()

        def on_message(_conn, msg, incoming):
            if incoming and msg.get_message_type() == Gio.DBusMessageType.SIGNAL and msg.get_member() in ('Tick', 'Tock', 'End'):
                body = msg.get_body().unpack() if msg.get_body() is not None else ()
                GLib.idle_add(lambda: report(msg.get_member(), msg.get_path(), body))
            return msg

        def report(member, path, body):
            out('SIG', member, path, *[str(a) for a in body[:2]])
            if member == 'End':
                loop.quit()
            return False

        conn.add_filter(on_message)
        for rule in rest + ["type='signal',member='End'"]:
            conn.call_sync('org.freedesktop.DBus', '/org/freedesktop/DBus', 'org.freedesktop.DBus', 'AddMatch',
                           GLib.Variant('(s)', (rule,)), None, Gio.DBusCallFlags.NONE, 10000, None)
        out('READY', conn.get_unique_name())
        loop.run()
    else:
        sys.exit('unknown command ' + command)


if __name__ == '__main__':
    try:
        main()
    except GLib.Error as e:
        print('ERROR %s' % e.message, file=sys.stderr)
        sys.exit(1)
