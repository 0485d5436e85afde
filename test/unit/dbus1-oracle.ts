/**
 * Reference implementations for the codec tests: GLib (GVariant serialization, GDBus dbus1
 * messages) through python3-gi, and libdbus through dbus-python plus ctypes for the two
 * calls dbus-python does not expose (dbus_message_marshal / _demarshal). Debian ships both
 * bindings for /usr/bin/python3 only, so that interpreter is spawned explicitly, once per
 * batch of requests.
 *
 * Values cross the process boundary in a "tagged" JSON form driven by the signature:
 * x/t as decimal strings, d as the hex of its big-endian IEEE bits (NaN and -0 survive),
 * ay as hex, v as [signature, value], containers as lists.
 */
import { spawnSync } from 'node:child_process';
import { parseCompleteType, CompleteType, parseSignature } from '../../src/dbus1/signature';
import { Value, Variant } from '../../src/dbus1/value';

export const PYTHON = '/usr/bin/python3';

const SCRIPT = String.raw`
import sys, json, struct, ctypes
import gi
gi.require_version('GLib', '2.0')
gi.require_version('Gio', '2.0')
from gi.repository import GLib, Gio
import dbus, dbus.lowlevel as ll

def split(sig):
    out = []; i = 0
    while i < len(sig):
        j = i
        while sig[j] == 'a': j += 1
        if sig[j] in '({':
            depth = 0
            while True:
                if sig[j] in '({': depth += 1
                elif sig[j] in ')}': depth -= 1
                j += 1
                if depth == 0: break
        else:
            j += 1
        out.append(sig[i:j]); i = j
    return out

def dbl(x): return struct.unpack('>d', bytes.fromhex(x))[0]

def gv(t, x):
    c = t[0]
    if c == 'y': return GLib.Variant.new_byte(x)
    if c == 'b': return GLib.Variant.new_boolean(x)
    if c == 'n': return GLib.Variant.new_int16(x)
    if c == 'q': return GLib.Variant.new_uint16(x)
    if c == 'i': return GLib.Variant.new_int32(x)
    if c == 'u': return GLib.Variant.new_uint32(x)
    if c == 'x': return GLib.Variant.new_int64(int(x))
    if c == 't': return GLib.Variant.new_uint64(int(x))
    if c == 'd': return GLib.Variant.new_double(dbl(x))
    if c == 'h': return GLib.Variant.new_handle(x - (1 << 32) if x >= (1 << 31) else x)
    if c == 's': return GLib.Variant.new_string(x)
    if c == 'o': return GLib.Variant.new_object_path(x)
    if c == 'g': return GLib.Variant.new_signature(x)
    if c == 'v': return GLib.Variant.new_variant(gv(x[0], x[1]))
    if t == 'ay': return GLib.Variant.new_from_bytes(GLib.VariantType('ay'), GLib.Bytes(bytes.fromhex(x)), True)
    if c == 'a': return GLib.Variant.new_array(GLib.VariantType(t[1:]), [gv(t[1:], e) for e in x])
    if c == '{':
        k, v = split(t[1:-1])
        return GLib.Variant.new_dict_entry(gv(k, x[0]), gv(v, x[1]))
    if c == '(':
        return GLib.Variant.new_tuple(*[gv(s, e) for s, e in zip(split(t[1:-1]), x)])
    raise ValueError(t)

def tg(v, variant_types):
    t = v.get_type_string(); c = t[0]
    if c == 'y': return v.get_byte()
    if c == 'b': return v.get_boolean()
    if c == 'n': return v.get_int16()
    if c == 'q': return v.get_uint16()
    if c == 'i': return v.get_int32()
    if c == 'u': return v.get_uint32()
    if c == 'x': return str(v.get_int64())
    if c == 't': return str(v.get_uint64())
    if c == 'd': return struct.pack('>d', v.get_double()).hex()
    if c == 'h': return v.get_handle() & 0xffffffff
    if c in 'sog': return v.get_string()
    if c == 'v':
        inner = v.get_variant()
        variant_types.append(inner.get_type_string())
        return [inner.get_type_string(), tg(inner, variant_types)]
    if t == 'ay': return bytes(v.get_data_as_bytes().get_data()).hex()
    if c in 'a({m': return [tg(v.get_child_value(i), variant_types) for i in range(v.n_children())]
    raise ValueError(t)

def dp(t, x, lvl=0):
    kw = {'variant_level': lvl} if lvl else {}
    c = t[0]
    if c == 'y': return dbus.Byte(x, **kw)
    if c == 'b': return dbus.Boolean(x, **kw)
    if c == 'n': return dbus.Int16(x, **kw)
    if c == 'q': return dbus.UInt16(x, **kw)
    if c == 'i': return dbus.Int32(x, **kw)
    if c == 'u': return dbus.UInt32(x, **kw)
    if c == 'x': return dbus.Int64(int(x), **kw)
    if c == 't': return dbus.UInt64(int(x), **kw)
    if c == 'd': return dbus.Double(dbl(x), **kw)
    if c == 's': return dbus.String(x, **kw)
    if c == 'o': return dbus.ObjectPath(x, **kw)
    if c == 'g': return dbus.Signature(x, **kw)
    if c == 'v': return dp(x[0], x[1], lvl + 1)
    if t == 'ay': return dbus.ByteArray(bytes.fromhex(x), **kw)
    if t.startswith('a{'):
        k, v = split(t[2:-1])
        return dbus.Dictionary([(dp(k, e[0]), dp(v, e[1])) for e in x], signature=t[2:-1], **kw)
    if c == 'a': return dbus.Array([dp(t[1:], e) for e in x], signature=t[1:], **kw)
    if c == '(':
        return dbus.Struct([dp(s, e) for s, e in zip(split(t[1:-1]), x)], signature=t[1:-1], **kw)
    raise ValueError(t)

LIB = ctypes.CDLL('libdbus-1.so.3')
VP = ctypes.c_void_p
LIB.dbus_message_marshal.argtypes = [VP, ctypes.POINTER(VP), ctypes.POINTER(ctypes.c_int)]
LIB.dbus_message_set_serial.argtypes = [VP, ctypes.c_uint32]
LIB.dbus_message_set_destination.argtypes = [VP, ctypes.c_char_p]
LIB.dbus_message_demarshal.argtypes = [ctypes.c_char_p, ctypes.c_int, VP]
LIB.dbus_message_demarshal.restype = VP
LIB.dbus_message_demarshal_bytes_needed.argtypes = [ctypes.c_char_p, ctypes.c_int]
LIB.dbus_message_unref.argtypes = [VP]
LIB.dbus_free.argtypes = [VP]
LIB.dbus_error_init.argtypes = [VP]
LIB.dbus_error_free.argtypes = [VP]
LIB.dbus_signature_validate.argtypes = [ctypes.c_char_p, VP]
LIB.dbus_signature_validate_single.argtypes = [ctypes.c_char_p, VP]

def msgptr(m): return ctypes.c_void_p.from_address(id(m) + object.__basicsize__).value

def dbus_error():
    err = ctypes.create_string_buffer(64)
    LIB.dbus_error_init(err)
    return err

def error_text(err):
    name, message = struct.unpack('PP', err.raw[:16])
    text = (ctypes.string_at(name).decode() if name else '') + ': ' + (ctypes.string_at(message).decode() if message else '')
    LIB.dbus_error_free(err)
    return text

def libdbus_encode(r):
    call = ll.MethodCallMessage(None, '/', None, 'M')
    call.set_sender(':1.1')
    t = r['type']
    if t == 1:
        m = ll.MethodCallMessage(None, r['path'], r.get('interface'), r['member'])
    elif t == 4:
        m = ll.SignalMessage(r['path'], r['interface'], r['member'])
    else:
        LIB.dbus_message_set_serial(msgptr(call), r['replySerial'])
        m = ll.MethodReturnMessage(call) if t == 2 else ll.ErrorMessage(call, r['errorName'], None)
        # dbus-python crashes on set_destination(None); libdbus itself removes the field
        LIB.dbus_message_set_destination(msgptr(m), None)
    if 'destination' in r: m.set_destination(r['destination'])
    if 'sender' in r: m.set_sender(r['sender'])
    m.set_no_reply(bool(r['flags'] & 1))
    m.set_auto_start(not (r['flags'] & 2))
    m.set_allow_interactive_authorization(bool(r['flags'] & 4))
    if r['signature']:
        m.append(*[dp(s, x) for s, x in zip(split(r['signature']), r['body'])], signature=r['signature'])
    LIB.dbus_message_set_serial(msgptr(m), r['serial'])
    buf = VP(); n = ctypes.c_int()
    if not LIB.dbus_message_marshal(msgptr(m), ctypes.byref(buf), ctypes.byref(n)): raise RuntimeError('marshal failed')
    out = ctypes.string_at(buf, n.value).hex()
    LIB.dbus_free(buf)
    return out

def libdbus_check(r):
    data = bytes.fromhex(r['hex'])
    err = dbus_error()
    m = LIB.dbus_message_demarshal(data, len(data), err)
    if m:
        LIB.dbus_message_unref(m)
        return {'ok': True}
    return {'ok': False, 'error': error_text(err)}

def gdbus_message(r):
    m = Gio.DBusMessage.new()
    m.set_message_type(Gio.DBusMessageType(r['type']))
    m.set_flags(Gio.DBusMessageFlags(r['flags']))
    m.set_serial(r['serial'])
    for code, sig, x in r['fields']:
        m.set_header(Gio.DBusMessageHeaderField(code), gv(sig, x))
    if r['signature']:
        m.set_body(gv('(' + r['signature'] + ')', r['body']))
    if r.get('unixFds'):
        fds = Gio.UnixFDList.new()
        for _ in range(r['unixFds']): fds.append(0)
        m.set_unix_fd_list(fds)
    if r.get('bigEndian'): m.set_byte_order(Gio.DBusMessageByteOrder.BIG_ENDIAN)
    return m.to_blob(Gio.DBusCapabilityFlags.UNIX_FD_PASSING).hex()

def gdbus_decode(r):
    try:
        m = Gio.DBusMessage.new_from_blob(bytes.fromhex(r['hex']), Gio.DBusCapabilityFlags.UNIX_FD_PASSING)
    except GLib.Error as e:
        return {'ok': False, 'error': e.message}
    body = m.get_body()
    vt = []
    fds = m.get_header(Gio.DBusMessageHeaderField.NUM_UNIX_FDS)
    return {'ok': True, 'type': int(m.get_message_type()), 'flags': int(m.get_flags()), 'serial': m.get_serial(),
            'replySerial': m.get_reply_serial(), 'path': m.get_path(), 'interface': m.get_interface(),
            'member': m.get_member(), 'errorName': m.get_error_name(), 'destination': m.get_destination(),
            'sender': m.get_sender(), 'signature': m.get_signature(),
            'unixFds': fds.get_uint32() if fds is not None else None,
            'body': [tg(body.get_child_value(i), vt) for i in range(body.n_children())] if body else []}

def gv_check(r):
    v = GLib.Variant.new_from_bytes(GLib.VariantType(r['type']), GLib.Bytes(bytes.fromhex(r['hex'])), False)
    if not v.is_normal_form(): return {'normal': False}
    vt = []
    value = tg(v, vt)
    dbus_types = all(LIB.dbus_signature_validate_single(s.encode(), None) for s in vt)
    return {'normal': True, 'value': value, 'dbusTypes': dbus_types}

def run(r):
    op = r['op']
    if op == 'gv_encode': return gv(r['type'], r['value']).get_data_as_bytes().get_data().hex()
    if op == 'gv_check': return gv_check(r)
    if op == 'gdbus_encode': return gdbus_message(r)
    if op == 'gdbus_decode': return gdbus_decode(r)
    if op == 'libdbus_encode': return libdbus_encode(r)
    if op == 'libdbus_check': return libdbus_check(r)
    if op == 'libdbus_needed':
        data = bytes.fromhex(r['hex'])
        return LIB.dbus_message_demarshal_bytes_needed(data, len(data))
    if op == 'libdbus_signature': return bool(LIB.dbus_signature_validate(r['signature'].encode(), None))
    raise ValueError(op)

json.dump([run(r) for r in json.load(sys.stdin)], sys.stdout)
`;

let available: boolean | undefined;

/** Whether /usr/bin/python3 has GLib (python3-gi) and dbus-python. */
export function oracleAvailable(): boolean {
  if (available === undefined) {
    const r = spawnSync(PYTHON, ['-c', 'import gi, dbus; gi.require_version("Gio", "2.0")'], { stdio: 'ignore' });
    available = r.status === 0;
  }
  return available;
}

/** Runs a batch of oracle requests in one interpreter; answers come back in order. */
export function oracle<T = unknown>(requests: readonly object[]): T[] {
  const r = spawnSync(PYTHON, ['-c', SCRIPT], { input: JSON.stringify(requests), maxBuffer: 1 << 30, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`oracle failed (${r.status}): ${r.stderr}`);
  return JSON.parse(r.stdout) as T[];
}

function doubleHex(d: number): string {
  const b = Buffer.alloc(8);
  b.writeDoubleBE(d);
  return b.toString('hex');
}

function taggedOf(t: CompleteType, v: Value): unknown {
  switch (t.code) {
    case 'x':
    case 't':
      return String(v);
    case 'd':
      return doubleHex(v as number);
    case 'v': {
      const variant = v as Variant;
      return [variant.signature, taggedOf(parseCompleteType(variant.signature), variant.value)];
    }
    case 'a':
      if (t.element!.code === 'y') return (v as Buffer).toString('hex');
      return (v as Value[]).map((e) => taggedOf(t.element!, e));
    case '(':
    case '{':
      return (v as Value[]).map((e, i) => taggedOf(t.fields[i]!, e));
    default:
      return v;
  }
}

/** The tagged JSON form of a value of a single complete type. */
export function tagged(signature: string, v: Value): unknown {
  return taggedOf(parseCompleteType(signature), v);
}

/** The tagged JSON form of a body. */
export function taggedBody(signature: string, values: readonly Value[]): unknown[] {
  return parseSignature(signature).map((t, i) => taggedOf(t, values[i]!));
}

export function hex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}
