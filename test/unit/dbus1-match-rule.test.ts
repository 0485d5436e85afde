/**
 * D-Bus match rules. Expected outcomes come from the D-Bus specification ("Match Rules",
 * "Valid Names") and from dbus-daemon's own rule tests (bus/signals.c: parsing, equality,
 * matching, argNpath and path_namespace cases), and for the kdbus side from sd-bus v229's
 * bus_add_match_internal_kernel.
 */
import assert from 'node:assert/strict';
import {
  kdbusIdOfUniqueName, kdbusMatchOf, MatchRule, MatchRuleInvalid, type MatchMessage, type NameOwners,
} from '../../src/dbus1/match-rule';
import {
  isValidBusName, isValidBusNamespace, isValidInterfaceName, isValidMemberName, isValidObjectPath,
} from '../../src/dbus1/names';

const INVALID = 'org.freedesktop.DBus.Error.MatchRuleInvalid';
const LIMITS = 'org.freedesktop.DBus.Error.LimitsExceeded';

function invalid(text: string, errorName = INVALID): MatchRuleInvalid {
  try {
    MatchRule.parse(text);
  } catch (e) {
    assert.ok(e instanceof MatchRuleInvalid, `expected MatchRuleInvalid for ${JSON.stringify(text)}, got ${String(e)}`);
    assert.equal(e.errorName, errorName);
    assert.ok(e.message.length > 0);
    return e;
  }
  assert.fail(`${JSON.stringify(text)} should not parse`);
}

const NOBODY: NameOwners = { primaryOwner: (name) => (name.startsWith(':') ? name : undefined) };

function owners(map: Record<string, string>): NameOwners {
  return { primaryOwner: (name) => (name.startsWith(':') ? name : map[name]) };
}

function signal(over: Partial<MatchMessage> = {}): MatchMessage {
  return { type: 'signal', args: [], argTypes: [], ...over };
}

describe('dbus1 match rules: parsing', () => {
  it('reads every key of a full rule', () => {
    const r = MatchRule.parse("type='signal',sender='org.freedesktop.DBusSender',interface='org.freedesktop.DBusInterface',member='Foo',path='/bar/foo',destination=':452345.34'");
    assert.equal(r.type, 'signal');
    assert.equal(r.sender, 'org.freedesktop.DBusSender');
    assert.equal(r.interface, 'org.freedesktop.DBusInterface');
    assert.equal(r.member, 'Foo');
    assert.equal(r.path, '/bar/foo');
    assert.equal(r.pathNamespace, undefined);
    assert.equal(r.destination, ':452345.34');
    assert.equal(r.eavesdrop, false);
    assert.deepEqual(r.args, []);
  });

  it('skips whitespace around keys and joins quoted pieces of a value', () => {
    const r = MatchRule.parse("    type='signal',  \tsender='org.freedes''ktop.DBusSender',   interface='org.freedesktop.DBusInterface''''', \tmember='Foo',path='/bar/foo',destination=':452345.34'''''");
    assert.equal(r.sender, 'org.freedesktop.DBusSender');
    assert.equal(r.interface, 'org.freedesktop.DBusInterface');
    assert.equal(r.destination, ':452345.34');
  });

  it('keeps whitespace inside values (so a spaced value fails validation)', () => {
    assert.equal(MatchRule.parse("arg0=' a b '").args[0]!.value, ' a b ');
    assert.equal(MatchRule.parse('arg0=a b').args[0]!.value, 'a b');
    invalid("type = 'signal'");
  });

  it('reads argN, argNpath and arg0namespace', () => {
    assert.deepEqual(MatchRule.parse("arg0='foo'").args, [{ index: 0, kind: 'string', value: 'foo' }]);
    assert.deepEqual(MatchRule.parse("arg40='foo'").args, [{ index: 40, kind: 'string', value: 'foo' }]);
    assert.deepEqual(MatchRule.parse("arg63='foo'").args, [{ index: 63, kind: 'string', value: 'foo' }]);
    assert.deepEqual(MatchRule.parse("arg7path='/foo'").args, [{ index: 7, kind: 'path', value: '/foo' }]);
    assert.deepEqual(MatchRule.parse("arg0namespace='foo'").args, [{ index: 0, kind: 'namespace', value: 'foo' }]);
    assert.deepEqual(MatchRule.parse("arg0namespace='foo.bar'").args, [{ index: 0, kind: 'namespace', value: 'foo.bar' }]);
    // argNpath values are not validated: any string may be compared.
    assert.equal(MatchRule.parse("arg1path='not a path'").args[0]!.value, 'not a path');
    // Arguments come out by index whatever order they were given in.
    assert.deepEqual(MatchRule.parse("arg3='c',arg1='a',arg2path='/b'").args.map((a) => a.index), [1, 2, 3]);
  });

  it('reads path_namespace', () => {
    const r = MatchRule.parse("path_namespace='/foo/bar'");
    assert.equal(r.pathNamespace, '/foo/bar');
    assert.equal(r.path, undefined);
  });

  it('accepts the empty and the all-whitespace rule', () => {
    for (const text of ['', '    \t', '\r\n']) {
      const r = MatchRule.parse(text);
      assert.equal(r.toString(), '');
      assert.ok(r.matches(signal(), NOBODY));
    }
  });

  it('rejects what dbus-daemon rejects', () => {
    const bad = [
      "arg1namespace='foo'", // only arg0 has a namespace form
      "arg0namespace=''",
      "arg0namespace='foo.'", // trailing periods are not allowed
      "arg0namespace='foo.bar.'",
      "arg0namespace='foo..'",
      "arg0namespace='foo.bar..'",
      "arg300='foo'",
      "arg64='foo'",
      "arg='foo'",
      "argv='foo'",
      "arg3junk='foo'",
      "argument='foo'",
      "type='signal',type='method_call'",
      "path='/foo',path_namespace='/foo'",
      "path_namespace='/foo',path='/foo'",
      "path_namespace='/foo',path_namespace='/bar'",
      "path_namespace='/foo/'", // a trailing slash is no path
      "arg0='foo',arg0='bar'",
      "arg3='foo',arg3='bar'",
      "arg30='foo',arg30='bar'",
      "arg0='foo',arg0path='/bar'", // one condition per argument
      "arg0namespace='foo',arg0='bar'",
      "blah='signal'",
      "type='chouin'",
      "interface='abc@def++'",
      "service='youpi'",
      'type', // a key without '='
      "type='signal",  // an open quote
      "sender=':1.1',sender=':1.2'",
      "interface='a.b',interface='a.b'",
      "member='A',member='A'",
      "destination=':1.1',destination=':1.1'",
      "eavesdrop='yes'",
      "eavesdrop=''",
      "='signal'", // dbus-daemon would silently ignore the rest here
      "type='signal',='x'",
    ];
    for (const text of bad) invalid(text);
  });

  it('validates each value as the name it stands for', () => {
    invalid("sender='org'"); // one element
    invalid("sender='1org.foo'"); // element starting with a digit
    invalid("sender=':1'"); // unique names have two elements too
    invalid("sender=''");
    invalid("destination='a..b'");
    invalid("interface='org.foo-bar'"); // '-' only in bus names
    invalid("interface='Foo'");
    invalid("member='Foo.Bar'");
    invalid("member='9Foo'");
    invalid("member=''");
    invalid("path='foo'");
    invalid("path='/foo/'");
    invalid("path='/foo//bar'");
    invalid("path='/foo-bar'");
    invalid("path=''");
    assert.equal(MatchRule.parse("sender='org.foo-bar._baz'").sender, 'org.foo-bar._baz');
    assert.equal(MatchRule.parse("sender=':1.42'").sender, ':1.42');
    assert.equal(MatchRule.parse("path='/'").path, '/');
    assert.equal(MatchRule.parse("member='_Foo9'").member, '_Foo9');
  });

  it('limits rules to 1024 bytes, counted as UTF-8, with LimitsExceeded', () => {
    const pad = (n: number): string => `arg0='${'x'.repeat(n - 7)}'`;
    assert.equal(Buffer.byteLength(pad(1024)), 1024);
    MatchRule.parse(pad(1024));
    const e = invalid(pad(1025), LIMITS);
    assert.match(e.message, /1025/);
    // 512 two-byte characters are 1024 bytes but only 512 UTF-16 units plus the key.
    invalid(`arg0='${'é'.repeat(510)}'`, LIMITS);
  });

  it('accepts eavesdrop true or false, repeated, the last one counting', () => {
    assert.equal(MatchRule.parse("eavesdrop='true'").eavesdrop, true);
    assert.equal(MatchRule.parse("eavesdrop='false'").eavesdrop, false);
    assert.equal(MatchRule.parse("eavesdrop='true',eavesdrop='false'").eavesdrop, false);
    assert.equal(MatchRule.parse("eavesdrop=false,type=signal,eavesdrop=true").eavesdrop, true);
  });

  it('reads quoting as the specification and dbus-daemon do', () => {
    const arg0 = (text: string): string => MatchRule.parse(text).args[0]!.value;
    assert.equal(arg0('arg0=escap\\e'), 'escap\\e'); // a backslash before anything but ' is itself
    assert.equal(arg0("arg0='escap\\e'"), 'escap\\e');
    assert.equal(arg0("arg0=Time: 8 o\\'clock"), "Time: 8 o'clock"); // \' outside quotes
    assert.equal(arg0("arg0='Time: 8 o'\\''clock'"), "Time: 8 o'clock");
    assert.equal(arg0("arg0='a\\'"), 'a\\'); // inside quotes the backslash is literal
    assert.equal(arg0("arg0='comma,inside',type=signal"), 'comma,inside');
    assert.equal(arg0('arg0=trailing\\'), 'trailing\\');
    // The backslash takes the next character with it, a comma too: the value goes on.
    assert.equal(arg0("arg0='/ab'\\,arg0path=''"), '/ab\\,arg0path=');
    assert.equal(MatchRule.parse("arg0=a\\,type='bogus'").type, undefined);
    assert.equal(arg0("arg0=ice'cream'"), 'icecream');
    assert.equal(arg0("arg0=''"), '');
    assert.equal(arg0('arg0='), '');
  });

  it('throws an Error subclass named MatchRuleInvalid', () => {
    const e = invalid("type='bogus'");
    assert.ok(e instanceof Error);
    assert.equal(e.name, 'MatchRuleInvalid');
    assert.match(e.message, /bogus/);
  });
});

describe('dbus1 match rules: canonical text and equality', () => {
  // dbus-daemon's equality pairs (signals.c): each pair is equal, and unequal to all others.
  const pairs: Array<[string, string]> = [
    ["type='signal'", "type='signal'"],
    ["type='signal',interface='foo.bar'", "interface='foo.bar',type='signal'"],
    ["type='signal',member='bar'", "member='bar',type='signal'"],
    ["type='method_call',sender=':1.0'", "sender=':1.0',type='method_call'"],
    ["type='method_call',destination=':1.0'", "destination=':1.0',type='method_call'"],
    ["type='method_call',path='/foo/bar'", "path='/foo/bar',type='method_call'"],
    ["type='method_call',arg0='blah'", "arg0='blah',type='method_call'"],
    ["type='method_call',arg0='boo'", "arg0='boo',type='method_call'"],
    ["type='method_call',arg0='blah',arg1='baz'", "arg0='blah',arg1='baz',type='method_call'"],
    ["type='method_call',arg3='foosh'", "arg3='foosh',type='method_call'"],
    ["arg3='fool'", "arg3='fool'"],
    ["arg0namespace='fool'", "arg0namespace='fool'"],
    ["member='food'", "member='food'"],
    ['member=escape', "member='escape'"],
    ['member=icecream', "member=ice'cream'"],
    ["arg0='comma,type=comma',type=signal", "type=signal,arg0='comma,type=comma'"],
    ['arg0=escap\\e', "arg0='escap\\e'"],
    ["arg0=Time: 8 o\\'clock", "arg0='Time: 8 o'\\''clock'"],
  ];

  it('equal pairs are equal, have the same text, and survive a reparse', () => {
    for (const [a, b] of pairs) {
      const ra = MatchRule.parse(a);
      const rb = MatchRule.parse(b);
      assert.ok(ra.equals(rb), `${a} == ${b}`);
      assert.equal(ra.toString(), rb.toString());
      assert.ok(MatchRule.parse(ra.toString()).equals(ra), `reparse of ${ra.toString()}`);
    }
  });

  it('each rule differs from every other pair', () => {
    pairs.forEach(([a], i) => {
      pairs.forEach(([, b], j) => {
        if (i !== j) assert.ok(!MatchRule.parse(a).equals(MatchRule.parse(b)), `${a} != ${b}`);
      });
    });
  });

  it('writes keys in dbus-daemon order with quoted values', () => {
    const r = MatchRule.parse("arg2path='/p',arg0namespace='a.b',eavesdrop=true,destination=':1.7',sender='org.S',path_namespace='/ns',member='M',interface='i.f',type='error',arg1='x'");
    assert.equal(r.toString(), "type='error',interface='i.f',member='M',path_namespace='/ns',sender='org.S',destination=':1.7',eavesdrop='true',arg0namespace='a.b',arg1='x',arg2path='/p'");
    assert.equal(MatchRule.parse("arg0=Time: 8 o\\'clock").toString(), "arg0='Time: 8 o'\\''clock'");
    assert.equal(MatchRule.parse("path='/a'").toString(), "path='/a'");
  });

  it('eavesdrop=false is the same rule as no eavesdrop key; eavesdrop=true is not', () => {
    const plain = MatchRule.parse("type='signal'");
    assert.ok(plain.equals(MatchRule.parse("type='signal',eavesdrop='false'")));
    assert.ok(!plain.equals(MatchRule.parse("type='signal',eavesdrop='true'")));
  });

  it('path and path_namespace with the same value differ, as do argN kinds', () => {
    assert.ok(!MatchRule.parse("path='/a'").equals(MatchRule.parse("path_namespace='/a'")));
    assert.ok(!MatchRule.parse("arg0='a'").equals(MatchRule.parse("arg0path='a'")));
    assert.ok(!MatchRule.parse("arg0='a'").equals(MatchRule.parse("arg0namespace='a'")));
    assert.ok(!MatchRule.parse("arg0='a'").equals(MatchRule.parse("arg1='a'")));
  });
});

describe('dbus1 match rules: matching', () => {
  // dbus-daemon's message 1: signal member Frobated, body (s "foobar", i 3).
  const message1 = signal({ member: 'Frobated', args: ['foobar', 3], argTypes: ['s', 'i'] });

  it("matches dbus-daemon's message 1 as its tests expect", () => {
    const yes = [
      "type='signal'", "member='Frobated'", "arg0='foobar'", "type='signal',member='Frobated'",
      "type='signal',member='Frobated',arg0='foobar'", "member='Frobated',arg0='foobar'", "type='signal',arg0='foobar'",
      "arg0path='foobar'", // equal strings match even when not paths
      "arg0namespace='foobar'",
    ];
    const no = [
      "type='method_call'", "type='error'", "type='method_return'", "type='signal',member='Oopsed'", "arg0='blah'",
      "arg1='foobar'", "arg2='foobar'", "arg3='foobar'", "arg0='3'", "arg1='3'", "arg0='foobar',arg1='abcdef'",
      "arg0='foobar',arg1='abcdef',arg2='abcdefghi',arg3='abcdefghi',arg4='abcdefghi'",
      "arg0='foobar',arg1='abcdef',arg4='abcdefghi',arg3='abcdefghi',arg2='abcdefghi'",
      "arg0path='foo'", "arg0path='foobar/'", "arg1path='3'", "arg0namespace='foo'", "arg0namespace='foo',arg1='abcdef'",
      "arg0namespace='moo'",
    ];
    for (const r of yes) assert.ok(MatchRule.parse(r).matches(message1, NOBODY), `${r} should match`);
    for (const r of no) assert.ok(!MatchRule.parse(r).matches(message1, NOBODY), `${r} should not match`);
  });

  it('arg0namespace holds the name and names below it, not mere prefixes', () => {
    const m = signal({ member: 'NameOwnerChanged', args: ['com.example.backend.foo'], argTypes: ['s'] });
    for (const ns of ['com.example.backend', 'com.example', 'com', 'com.example.backend.foo']) {
      assert.ok(MatchRule.parse(`arg0namespace='${ns}'`).matches(m, NOBODY), ns);
    }
    for (const ns of ['com.example.backend.foo.bar', 'com.example.backend.foobar', 'com.example.backend.fo', 'com.example.backen', 'com.exampl', 'co']) {
      assert.ok(!MatchRule.parse(`arg0namespace='${ns}'`).matches(m, NOBODY), ns);
    }
  });

  it("argNpath: either side ending in '/' is a prefix of the other, or both are equal", () => {
    const rule = MatchRule.parse("arg0path='/aa/bb/'");
    const test = (value: string, type: string): boolean => rule.matches(signal({ member: 'Foo', args: [value], argTypes: [type] }), NOBODY);
    // The specification's examples; the first three are strings only (not valid paths).
    for (const p of ['/aa/', '/aa/bb/', '/aa/bb/cc/', '/', '/aa/bb/cc']) assert.ok(test(p, 's'), `string ${p}`);
    for (const p of ['/', '/aa/bb/cc']) assert.ok(test(p, 'o'), `path ${p}`);
    for (const p of ['/aa/b', '/aa', '/aa/bb']) {
      assert.ok(!test(p, 's'), `string ${p}`);
      assert.ok(!test(p, 'o'), `path ${p}`);
    }
    // Other argument types never match.
    assert.ok(!test('/aa/bb/', 'g'));
  });

  it('argN and arg0namespace look at string arguments only, argNpath also at object paths', () => {
    const m = signal({ args: ['/a', '/a', 'a.b'], argTypes: ['o', 'g', 's'] });
    assert.ok(!MatchRule.parse("arg0='/a'").matches(m, NOBODY));
    assert.ok(MatchRule.parse("arg0path='/a'").matches(m, NOBODY));
    assert.ok(!MatchRule.parse("arg1='/a'").matches(m, NOBODY));
    assert.ok(!MatchRule.parse("arg1path='/a'").matches(m, NOBODY));
    assert.ok(MatchRule.parse("arg2='a.b'").matches(m, NOBODY));
    const objectArg0 = signal({ args: ['a.b'], argTypes: ['o'] });
    assert.ok(!MatchRule.parse("arg0namespace='a'").matches(objectArg0, NOBODY));
  });

  it('path_namespace holds the path and paths below it; "/" holds all', () => {
    const cases: Array<[string, string[], string[]]> = [
      ['/foo/TheObjectManager', ['/', '/foo', '/foo/TheObjectManager'], ['/bar', '/bar/TheObjectManager']],
      ['/foo/TheObjectManager/child_object', ['/', '/foo/TheObjectManager'], []],
      ['/foo/TheObjectManagerOther', ['/'], ['/foo/TheObjectManager']],
      ['/', ['/'], ['/foo/TheObjectManager']],
    ];
    for (const [path, yes, no] of cases) {
      const m = signal({ path });
      for (const ns of yes) assert.ok(MatchRule.parse(`type='signal',path_namespace='${ns}'`).matches(m, NOBODY), `${ns} holds ${path}`);
      for (const ns of no) assert.ok(!MatchRule.parse(`type='signal',path_namespace='${ns}'`).matches(m, NOBODY), `${ns} lacks ${path}`);
    }
    assert.ok(!MatchRule.parse("path_namespace='/'").matches(signal(), NOBODY), 'no path at all');
  });

  it('path, interface and member compare exactly and need the field', () => {
    const m = signal({ path: '/a/b', interface: 'org.x.Y', member: 'Z' });
    assert.ok(MatchRule.parse("path='/a/b',interface='org.x.Y',member='Z'").matches(m, NOBODY));
    assert.ok(!MatchRule.parse("path='/a'").matches(m, NOBODY));
    assert.ok(!MatchRule.parse("interface='org.x.y'").matches(m, NOBODY));
    assert.ok(!MatchRule.parse("member='z'").matches(m, NOBODY));
    assert.ok(!MatchRule.parse("interface='org.x.Y'").matches(signal(), NOBODY));
    assert.ok(!MatchRule.parse("member='Z'").matches(signal(), NOBODY));
  });

  it('sender: unique names compare directly, well-known names by current primary owner', () => {
    const names = owners({ 'org.example.Svc': ':1.5' });
    const from5 = signal({ sender: ':1.5' });
    const from6 = signal({ sender: ':1.6' });
    assert.ok(MatchRule.parse("sender=':1.5'").matches(from5, names));
    assert.ok(!MatchRule.parse("sender=':1.5'").matches(from6, names));
    assert.ok(MatchRule.parse("sender='org.example.Svc'").matches(from5, names));
    assert.ok(!MatchRule.parse("sender='org.example.Svc'").matches(from6, names));
    assert.ok(!MatchRule.parse("sender='org.example.Other'").matches(from5, names));
  });

  it("sender='org.freedesktop.DBus' matches the driver's messages and only them", () => {
    const rule = MatchRule.parse("sender='org.freedesktop.DBus'");
    const names = owners({ 'org.example.Svc': ':1.5' });
    assert.ok(rule.matches(signal({ sender: 'org.freedesktop.DBus' }), names));
    assert.ok(rule.matches(signal(), names), 'no sender is the driver');
    assert.ok(!rule.matches(signal({ sender: ':1.5' }), names));
    assert.ok(!MatchRule.parse("sender='org.example.Svc'").matches(signal({ sender: 'org.freedesktop.DBus' }), names));
  });

  it('without eavesdrop only broadcasts match; a destination key needs eavesdrop', () => {
    const unicast = signal({ sender: ':1.5', destination: ':1.9' });
    const broadcast = signal({ sender: ':1.5' });
    assert.ok(MatchRule.parse("type='signal'").matches(broadcast, NOBODY));
    assert.ok(!MatchRule.parse("type='signal'").matches(unicast, NOBODY));
    assert.ok(MatchRule.parse("type='signal',eavesdrop='true'").matches(unicast, NOBODY));
    assert.ok(!MatchRule.parse("destination=':1.9'").matches(unicast, NOBODY), 'addressed messages need no rule');
    assert.ok(MatchRule.parse("destination=':1.9',eavesdrop='true'").matches(unicast, NOBODY));
    assert.ok(!MatchRule.parse("destination=':1.8',eavesdrop='true'").matches(unicast, NOBODY));
    assert.ok(!MatchRule.parse("destination=':1.9',eavesdrop='true'").matches(broadcast, NOBODY));
    assert.ok(!MatchRule.parse("type='method_call'").matches({ type: 'method_call', destination: ':1.9', args: [], argTypes: [] }, NOBODY));
  });

  it('a destination compares by who owns the names on both sides', () => {
    const names = owners({ 'org.example.Svc': ':1.9' });
    const toName = signal({ destination: 'org.example.Svc' });
    const toId = signal({ destination: ':1.9' });
    assert.ok(MatchRule.parse("destination=':1.9',eavesdrop=true").matches(toName, names));
    assert.ok(MatchRule.parse("destination='org.example.Svc',eavesdrop=true").matches(toId, names));
    // A recipient that does not exist (yet): the names themselves are compared.
    const toNobody = signal({ destination: 'org.example.Absent' });
    assert.ok(MatchRule.parse("destination='org.example.Absent',eavesdrop=true").matches(toNobody, names));
    assert.ok(!MatchRule.parse("destination=':1.9',eavesdrop=true").matches(toNobody, names));
  });
});

describe('dbus1 match rules: kdbus narrowing (sd-bus bus_add_match_internal_kernel)', () => {
  it('parses only ":1.<decimal u64>" as a kdbus id', () => {
    assert.equal(kdbusIdOfUniqueName(':1.0'), 0n);
    assert.equal(kdbusIdOfUniqueName(':1.42'), 42n);
    assert.equal(kdbusIdOfUniqueName(':1.18446744073709551615'), (1n << 64n) - 1n);
    for (const n of [':1.18446744073709551616', ':2.5', ':1.abc', ':1.042', ':1.', 'org.x.Y', ':1.5.6']) {
      assert.equal(kdbusIdOfUniqueName(n), undefined, n);
    }
  });

  it('sender becomes an ID item for ":1.N", a NAME item for a well-known name, nothing otherwise', () => {
    assert.deepEqual(kdbusMatchOf(MatchRule.parse("sender=':1.7'"), 'sd-bus'), { bloomKeys: [], senderId: 7n });
    assert.deepEqual(kdbusMatchOf(MatchRule.parse("sender='org.example.Svc'"), 'sd-bus'), { bloomKeys: [], senderName: 'org.example.Svc' });
    assert.deepEqual(kdbusMatchOf(MatchRule.parse("sender=':2.7'"), 'sd-bus'), { bloomKeys: [] });
  });

  it('destination becomes a DST_ID item only for ":1.N"', () => {
    assert.deepEqual(kdbusMatchOf(MatchRule.parse("destination=':1.9'"), 'sd-bus'), { bloomKeys: [], destinationId: 9n });
    assert.deepEqual(kdbusMatchOf(MatchRule.parse("destination='org.example.Svc'"), 'sd-bus'), { bloomKeys: [] });
  });

  it('type, interface, member, path, path_namespace, argN and arg0namespace become bloom keys; argNpath does not', () => {
    const r = MatchRule.parse("type='signal',interface='org.x.Y',member='Changed',path='/org/x',arg0='a',arg2='c',arg3path='/p'");
    assert.deepEqual(kdbusMatchOf(r, 'sd-bus').bloomKeys.sort(), [
      'arg0:a', 'arg2:c', 'interface:org.x.Y', 'member:Changed', 'message-type:signal', 'path:/org/x',
    ]);
    assert.deepEqual(kdbusMatchOf(MatchRule.parse("path_namespace='/org/x',arg0namespace='org.y'"), 'sd-bus').bloomKeys.sort(), [
      'arg0-dot-prefix:org.y', 'path-slash-prefix:/org/x',
    ]);
    assert.deepEqual(kdbusMatchOf(MatchRule.parse("arg0path='/a/'"), 'sd-bus').bloomKeys, []);
    assert.deepEqual(kdbusMatchOf(MatchRule.parse("type='method_call'"), 'sd-bus').bloomKeys, ['message-type:method_call']);
    assert.deepEqual(kdbusMatchOf(MatchRule.parse("eavesdrop='true'"), 'sd-bus'), { bloomKeys: [], nameOwnerChanged: {} });
  });

  it("'safe' leaves out argN keys for N > 0, which sd-bus senders may not have hashed", () => {
    const r = MatchRule.parse("member='M',arg0='a',arg1='b',arg5='f'");
    assert.deepEqual(kdbusMatchOf(r, 'safe').bloomKeys.sort(), ['arg0:a', 'member:M']);
    assert.deepEqual(kdbusMatchOf(r, 'sd-bus').bloomKeys.sort(), ['arg0:a', 'arg1:b', 'arg5:f', 'member:M']);
  });

  it('marks rules that could match NameOwnerChanged and hands over arg0..arg2', () => {
    const noc = kdbusMatchOf(MatchRule.parse(
      "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged',path='/org/freedesktop/DBus',arg0='org.x.Y',arg2=':1.3'",
    ), 'sd-bus');
    assert.deepEqual(noc.nameOwnerChanged, { arg0: 'org.x.Y', arg2: ':1.3' });
    assert.equal(noc.senderName, 'org.freedesktop.DBus');
    assert.deepEqual(kdbusMatchOf(MatchRule.parse(''), 'sd-bus').nameOwnerChanged, {});
    // sd-bus does not look at path_namespace, argNpath, arg0namespace or args past 2 here.
    assert.deepEqual(kdbusMatchOf(MatchRule.parse("path_namespace='/x',arg1path='/y',arg3='z'"), 'sd-bus').nameOwnerChanged, {});
    for (const r of [
      "type='method_call'", "sender=':1.1'", "sender='org.x.Y'", "interface='org.x.Y'", "member='NameLost'",
      "path='/'", "destination=':1.1'", "destination='org.x.Y'",
    ]) {
      assert.equal(kdbusMatchOf(MatchRule.parse(r), 'sd-bus').nameOwnerChanged, undefined, r);
    }
  });
});

describe('dbus1 names (specification "Valid Names")', () => {
  it('bus names', () => {
    for (const n of ['a.b', 'org.freedesktop.DBus', 'a-b._c.d9', ':1.0', ':1.42', ':abc.9x', ':a-b.c_d']) assert.ok(isValidBusName(n), n);
    for (const n of ['', 'a', 'a.', '.a', 'a..b', '9a.b', 'a.9b', 'a.b$', ':', ':1', ':1.', ':.1', 'a.b/c', `a.${'b'.repeat(254)}`]) {
      assert.ok(!isValidBusName(n), n);
    }
    assert.ok(isValidBusName(`a.${'b'.repeat(253)}`), '255 characters');
  });

  it('bus name namespaces allow a single element', () => {
    for (const n of ['com', 'com.example', 'a-b']) assert.ok(isValidBusNamespace(n), n);
    for (const n of ['', 'com.', '.com', '9com', 'com..x']) assert.ok(!isValidBusNamespace(n), n);
  });

  it('interface and member names', () => {
    for (const n of ['a.b', 'org.freedesktop.DBus', '_a._b9']) assert.ok(isValidInterfaceName(n), n);
    for (const n of ['a', 'a-b.c', 'a.9b', 'a..b', 'a.b.', `a.${'b'.repeat(254)}`]) assert.ok(!isValidInterfaceName(n), n);
    for (const n of ['a', 'Foo_9', '_']) assert.ok(isValidMemberName(n), n);
    for (const n of ['', '9a', 'a.b', 'a-b', 'x'.repeat(256)]) assert.ok(!isValidMemberName(n), n);
  });

  it('object paths', () => {
    for (const p of ['/', '/a', '/a/b_9/C']) assert.ok(isValidObjectPath(p), p);
    for (const p of ['', 'a', '//', '/a/', '/a//b', '/a-b', '/a.b']) assert.ok(!isValidObjectPath(p), p);
  });
});
