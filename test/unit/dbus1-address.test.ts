import assert from 'node:assert/strict';
import { AddressError, escapeValue, formatAddress, parseAddress } from '../../src/dbus1/address';

describe('D-Bus addresses', () => {
  it('reads unix path and abstract entries, in order, with their guid', () => {
    assert.deepEqual(parseAddress('unix:path=/run/dbus/system_bus_socket'), [{ kind: 'path', path: '/run/dbus/system_bus_socket' }]);
    assert.deepEqual(parseAddress('unix:abstract=/tmp/dbus-X,guid=0123456789abcdef0123456789abcdef;unix:path=/a'), [
      { kind: 'abstract', name: '/tmp/dbus-X', guid: '0123456789abcdef0123456789abcdef' },
      { kind: 'path', path: '/a' },
    ]);
    assert.deepEqual(parseAddress('unix:tmpdir=/tmp'), [{ kind: 'dir', dir: '/tmp' }]);
    assert.deepEqual(parseAddress('systemd:;unix:path=/a'), [{ kind: 'systemd' }, { kind: 'path', path: '/a' }]);
  });

  it('undoes %XX escapes, including multi-byte UTF-8', () => {
    assert.deepEqual(parseAddress('unix:path=/tmp/a%20b%2cc%3bd'), [{ kind: 'path', path: '/tmp/a b,c;d' }]);
    assert.deepEqual(parseAddress('unix:path=/tmp/%c3%a9'), [{ kind: 'path', path: '/tmp/é' }]);
  });

  it('escapes exactly the bytes outside the optionally-escaped set', () => {
    assert.equal(escapeValue('/run/user/1000/bus'), '/run/user/1000/bus');
    assert.equal(escapeValue('a b,c=d;é'), 'a%20b%2cc%3dd%3b%c3%a9');
    assert.equal(escapeValue('-_/.\\*'), '-_/.\\*');
    assert.equal(formatAddress({ kind: 'path', path: '/tmp/x y' }, 'ab'.repeat(16)), `unix:path=/tmp/x%20y,guid=${'ab'.repeat(16)}`);
    assert.deepEqual(parseAddress(formatAddress({ kind: 'abstract', name: 'n,1' })), [{ kind: 'abstract', name: 'n,1' }]);
  });

  it('says what is wrong with a bad address', () => {
    const bad: Array<[string, RegExp]> = [
      ['tcp:host=localhost,port=1', /transport "tcp" is not supported/],
      ['unix:path=/a,abstract=b', /exactly one of/],
      ['unix:guid=0123456789abcdef0123456789abcdef', /exactly one of/],
      ['unix:path=/a,path=/b', /given twice/],
      ['unix:path=/a%zz', /not a %XX escape/],
      ['unix:path=/a,foo=1', /unknown key "foo"/],
      ['unix:path=', /path= is empty/],
      ['unix:path=/a,guid=xyz', /32 hex digits/],
      ['path=/a', /no transport name/],
      ['systemd:path=/a', /systemd: takes no keys/],
      ['', /no address/],
    ];
    for (const [a, re] of bad) assert.throws(() => parseAddress(a), (e: unknown) => e instanceof AddressError && re.test(e.message), a);
  });
});
