/**
 * kdbus-cuse as the system bus of a machine run by systemd, in the test VM (this machine's
 * PID 1 is not systemd): systemd 252 as PID 1 of a PID namespace, with kdbus-cuse in the
 * place dbus-daemon has on Debian — started by dbus.socket (`--listen systemd:`) as
 * dbus.service, with `--systemd-activation`. systemd connects to it as it connects to
 * dbus-daemon and takes org.freedesktop.systemd1; a client's call to a service whose file
 * names a SystemdService makes systemd start that unit (Type=dbus) and is answered; a unit
 * that does not exist fails the call with the error systemd sends back (ActivationFailure).
 */
import assert from 'node:assert/strict';
import { requireSystemdVm, runUnderSystemd, sectionOf } from '../helpers/vm-systemd';

/** Runs in the check unit; one section per step. */
const CHECK = (share: string): string => `exec > ${share}/check.out 2>&1
section() { echo "=== $1"; }
call() { dbus-send --system --print-reply --reply-timeout=60000 --dest=$1 / org.freedesktop.DBus.Peer.Ping; echo "exit $?"; }

section systemd
# systemd connects once dbus.service is active, on its own schedule.
for i in $(seq 1 150); do
  dbus-send --system --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.GetNameOwner string:org.freedesktop.systemd1 >/dev/null 2>&1 && break
  sleep 0.2
done
busctl --system --no-pager --acquired list | awk '{print $1}' | grep -x org.freedesktop.systemd1
dbus-send --system --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus.Properties.Get string:org.freedesktop.DBus string:Features | grep -o SystemdActivation

section activated
systemctl show example-sd.service -p ActiveState
call com.example.Sd
systemctl show example-sd.service -p ActiveState -p SubState

section missing
call com.example.Missing

section bus-log
journalctl -u dbus.service -o cat --no-pager
section end
systemctl poweroff
`;

/** kdbus-cuse as dbus.socket and dbus.service, two D-Bus services, the unit of one. */
const SETUP = (): string => `mkdir -p /usr/share/dbus-1/system-services
# Where dbus-broker is installed, /etc/systemd/system/dbus.service is a link to its unit.
rm -f /etc/systemd/system/dbus.service /etc/systemd/system/dbus.socket
cat > /etc/systemd/system/dbus.socket <<'EOF'
[Unit]
Description=D-Bus system bus socket, served by kdbus-cuse
[Socket]
ListenStream=/run/dbus/system_bus_socket
EOF
cat > /etc/systemd/system/dbus.service <<'EOF'
[Unit]
Description=kdbus-cuse as the D-Bus system bus
Requires=dbus.socket
[Service]
Type=notify
ExecStart=/usr/bin/kdbus-cuse serve --transport socket --bus 0-system --listen systemd: --systemd-activation
EOF
cat > /usr/share/dbus-1/system-services/com.example.Sd.service <<'EOF'
[D-BUS Service]
Name=com.example.Sd
Exec=/bin/false
User=root
SystemdService=example-sd.service
EOF
cat > /usr/share/dbus-1/system-services/com.example.Missing.service <<'EOF'
[D-BUS Service]
Name=com.example.Missing
Exec=/bin/false
User=root
SystemdService=example-missing.service
EOF
cat > /usr/lib/kdbus-cuse/take-name.py <<'EOF'
import sys, dbus, dbus.mainloop.glib
from gi.repository import GLib
dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
bus = dbus.SystemBus()
bus.request_name(sys.argv[1])
GLib.MainLoop().run()
EOF
cat > /etc/systemd/system/example-sd.service <<'EOF'
[Service]
Type=dbus
BusName=com.example.Sd
ExecStart=/usr/bin/python3 /usr/lib/kdbus-cuse/take-name.py com.example.Sd
EOF`;

describe('systemd activation with systemd as PID 1 (in the test VM)', function () {
  this.timeout(600_000);
  let sections: Map<string, string>;

  before(async function () {
    requireSystemdVm(this);
    sections = await runUnderSystemd({ setup: SETUP, check: CHECK, after: 'dbus.service' });
  });

  const section = (name: string): string => sectionOf(sections, name);

  it('has systemd on the bus as org.freedesktop.systemd1, the bus saying it does systemd activation', () => {
    const s = section('systemd');
    assert.match(s, /^org\.freedesktop\.systemd1$/m, `${s}\n${sections.get('bus-log') ?? ''}`);
    assert.match(s, /^SystemdActivation$/m, s);
  });

  it("starts a service's unit through systemd when a client calls it, and the call is answered", () => {
    const s = section('activated');
    assert.match(s, /^ActiveState=inactive\nmethod return/m, `${s}\n${sections.get('bus-log') ?? ''}`);
    assert.match(s, /^exit 0$/m, s);
    assert.match(s, /^ActiveState=active\nSubState=running$/m, s);
    assert.match(section('bus-log'), /Activating via systemd: service name='com\.example\.Sd' unit='example-sd\.service'/);
  });

  it("fails the call with systemd's error when the unit does not exist", () => {
    const s = section('missing');
    assert.match(s, /^Error org\.freedesktop\.systemd1\.NoSuchUnit: Unit example-missing\.service not found\.$/m, `${s}\n${sections.get('bus-log') ?? ''}`);
    assert.match(s, /^exit 1$/m, s);
    assert.match(section('bus-log'), /Activation via systemd failed for unit 'example-missing\.service'/);
  });
});
