/**
 * Values of every D-Bus type, shared by the dbus1 and GVariant codec tests: basic types at
 * their range limits, strings with multi-byte UTF-8, variants in variants, dicts (with a
 * duplicate key), empty arrays of fixed- and variable-size elements, structs that need
 * padding, nesting at the depth limits, and containers large enough for 2- and 4-byte
 * GVariant framing offsets.
 */
import { Message, MessageFlag, MessageType } from '../../src/dbus1/message';
import { Value, Variant } from '../../src/dbus1/value';

export interface ValueCase {
  signature: string;
  value: Value;
  /** dbus-python cannot express it (duplicate dict keys, fds that are only indices). */
  noLibdbus?: boolean;
}

function nest(depth: number, open: string, close: string, inner: string): string {
  return open.repeat(depth) + inner + close.repeat(depth);
}

function nestedArrays(depth: number, leaf: Value): Value {
  let v: Value = leaf;
  for (let i = 0; i < depth; i++) v = [v];
  return v;
}

export const VALUE_CASES: ValueCase[] = [
  { signature: 'y', value: 0 },
  { signature: 'y', value: 255 },
  { signature: 'b', value: true },
  { signature: 'b', value: false },
  { signature: 'n', value: -32768 },
  { signature: 'n', value: 32767 },
  { signature: 'q', value: 65535 },
  { signature: 'i', value: -2147483648 },
  { signature: 'i', value: 2147483647 },
  { signature: 'u', value: 4294967295 },
  { signature: 'x', value: -(2n ** 63n) },
  { signature: 'x', value: 2n ** 63n - 1n },
  { signature: 't', value: 2n ** 64n - 1n },
  { signature: 'd', value: 3.25 },
  { signature: 'd', value: -0 },
  { signature: 'd', value: -Infinity },
  { signature: 'd', value: NaN },
  { signature: 'h', value: 3, noLibdbus: true },
  { signature: 's', value: '' },
  { signature: 's', value: 'grüße, 世界 😀' },
  { signature: 'o', value: '/' },
  { signature: 'o', value: '/org/freedesktop/DBus_1' },
  { signature: 'g', value: '' },
  { signature: 'g', value: 'a{sv}(ii)v' },
  { signature: 'v', value: new Variant('s', 'x') },
  { signature: 'v', value: new Variant('y', 7) },
  { signature: 'v', value: new Variant('v', new Variant('v', new Variant('t', 1n))) },
  { signature: 'v', value: new Variant('a{sv}', [['a', new Variant('u', 1)]]) },
  { signature: 'v', value: new Variant('(yt)', [1, 2n]) },
  { signature: 'v', value: new Variant('ay', Buffer.from('abc')) },
  { signature: 'ay', value: Buffer.alloc(0) },
  { signature: 'ay', value: Buffer.from([0, 1, 2, 255]) },
  { signature: 'ai', value: [] },
  { signature: 'ai', value: [1, -2, 3] },
  { signature: 'ax', value: [] },
  { signature: 'ax', value: [1n, -1n] },
  { signature: 'ab', value: [true, false, true] },
  { signature: 'ad', value: [1.5, -2] },
  { signature: 'aq', value: [1, 2, 3] },
  { signature: 'as', value: [] },
  { signature: 'as', value: ['a', '', 'bcd'] },
  { signature: 'ao', value: ['/a', '/b/c'] },
  { signature: 'ag', value: ['', 'i'] },
  { signature: 'av', value: [new Variant('i', 1), new Variant('s', 'x'), new Variant('ax', [])] },
  { signature: 'a{sv}', value: [] },
  {
    signature: 'a{sv}',
    value: [
      ['k1', new Variant('s', 'v')],
      ['k2', new Variant('ay', Buffer.from('xy'))],
      ['k3', new Variant('a{sv}', [])],
    ],
  },
  { signature: 'a{sv}', value: [['k', new Variant('i', 1)], ['k', new Variant('i', 2)]], noLibdbus: true },
  { signature: 'a{ys}', value: [[1, 'a'], [2, 'b']] },
  { signature: 'a{ii}', value: [[1, 2], [3, 4]] },
  { signature: 'a{ty}', value: [[1n, 2]] },
  { signature: 'a{oas}', value: [['/x', ['a', 'b']], ['/y', []]] },
  { signature: 'a{sa{sv}}', value: [['if', [['p', new Variant('b', true)]]]] },
  { signature: '(y)', value: [1] },
  { signature: '(iy)', value: [-1, 2] },
  { signature: '(yi)', value: [2, -1] },
  { signature: '(ybnqiuxtd)', value: [1, true, -3, 4, -5, 6, -7n, 8n, 9.5] },
  { signature: '(sogv)', value: ['s', '/o', 'g', new Variant('s', 'v')] },
  { signature: '(sas)', value: ['a', ['b', 'c']] },
  { signature: '(asy)', value: [['b'], 3] },
  { signature: '(ass)', value: [[], 'x'] },
  { signature: '(yax)', value: [1, []] },
  { signature: '(axy)', value: [[5n], 1] },
  { signature: '(ayay)', value: [Buffer.alloc(0), Buffer.alloc(0)] },
  { signature: '(vvv)', value: [new Variant('y', 1), new Variant('s', ''), new Variant('(yy)', [1, 2])] },
  { signature: 'a(yi)', value: [] },
  { signature: 'a(yi)', value: [[1, 2], [3, 4]] },
  { signature: 'a(sy)', value: [['a', 1], ['bc', 2]] },
  { signature: 'a(ai)', value: [[[]], [[1]]] },
  { signature: 'aas', value: [[], ['a'], []] },
  { signature: 'aay', value: [Buffer.alloc(0), Buffer.from('ab')] },
  { signature: 'aai', value: [[], [1, 2]] },
  { signature: 'a{s(ai)}', value: [['k', [[1, 2]]]] },
  { signature: 'aa{sv}', value: [[], [['a', new Variant('as', ['z'])]]] },
  { signature: 'ah', value: [0, 1], noLibdbus: true },
  // nesting at the limits: 32 arrays, 32 structs
  { signature: nest(32, 'a', '', 'y'), value: nestedArrays(31, Buffer.from([7])) },
  { signature: nest(32, '(', ')', 'y'), value: nestedArrays(32, 9) },
  // big enough for 2-byte and 4-byte GVariant framing offsets
  { signature: 'as', value: Array.from({ length: 300 }, (_, i) => `s${i}`) },
  { signature: '(ays)', value: [Buffer.alloc(70000, 0x61), 'tail'] },
  { signature: 'as', value: Array.from({ length: 70 }, (_, i) => 'x'.repeat(1000 + i)) },
];

/** Messages of every type with every header field, unusual flags and serials at the 32-bit limit. */
export const MESSAGES: Message[] = [
  {
    type: MessageType.MethodCall,
    flags: 0,
    serial: 1n,
    path: '/org/example/Obj',
    interface: 'org.example.Iface',
    member: 'Frob',
    destination: 'org.example.Service',
    sender: ':1.42',
    signature: 'sa{sv}ay',
    body: ['arg', [['k', new Variant('(ii)', [1, 2])]], Buffer.from([1, 2, 3])],
  },
  { type: MessageType.MethodCall, flags: MessageFlag.NoAutoStart | MessageFlag.AllowInteractiveAuthorization, serial: 0xffff_ffffn, path: '/', member: 'Ping', signature: '', body: [] },
  { type: MessageType.MethodCall, flags: MessageFlag.NoReplyExpected, serial: 9n, path: '/a', member: 'M', signature: 'v', body: [new Variant('v', new Variant('s', 'deep'))] },
  { type: MessageType.Signal, flags: MessageFlag.NoReplyExpected, serial: 2n, path: '/a', interface: 'b.c', member: 'D', signature: 's', body: ['x'] },
  {
    type: MessageType.Signal,
    flags: MessageFlag.NoReplyExpected,
    serial: 3n,
    path: '/org/freedesktop/DBus',
    interface: 'org.freedesktop.DBus',
    member: 'NameOwnerChanged',
    destination: ':1.7',
    sender: 'org.freedesktop.DBus',
    signature: 'sss',
    body: ['org.example.Name', '', ':1.7'],
  },
  { type: MessageType.MethodReturn, flags: MessageFlag.NoReplyExpected, serial: 5n, replySerial: 4n, destination: ':1.7', sender: ':1.1', signature: 'as', body: [['a', 'b']] },
  { type: MessageType.MethodReturn, flags: MessageFlag.NoReplyExpected, serial: 6n, replySerial: 0xffff_ffffn, signature: '', body: [] },
  {
    type: MessageType.Error,
    flags: MessageFlag.NoReplyExpected,
    serial: 7n,
    replySerial: 6n,
    errorName: 'org.freedesktop.DBus.Error.UnknownMethod',
    destination: ':1.9',
    signature: 's',
    body: ['no such method'],
  },
];
