import assert from 'node:assert/strict';
import {
  isValidBusName,
  isValidErrorName,
  isValidInterfaceName,
  isValidMemberName,
  isValidObjectPath,
  isValidUniqueName,
  isValidWellKnownName,
} from '../../src/dbus1/names';

// Cases from the D-Bus specification's "Valid Names" and "Valid Object Paths" rules.
describe('dbus1/names', function () {
  it('object paths', function () {
    for (const p of ['/', '/a', '/a/b_C/9', '/org/freedesktop/DBus']) assert.ok(isValidObjectPath(p), p);
    for (const p of ['', 'a', '//', '/a/', '/a//b', '/a-b', '/a.b', '/é']) assert.ok(!isValidObjectPath(p), p);
  });

  it('interface and error names', function () {
    for (const n of ['a.b', 'org.freedesktop.DBus', '_a.b_9', 'A.B.C']) {
      assert.ok(isValidInterfaceName(n), n);
      assert.ok(isValidErrorName(n), n);
    }
    for (const n of ['a', '', '.a.b', 'a.b.', 'a..b', 'a.9b', '9a.b', 'a-b.c', 'a.b:c', `a.${'b'.repeat(254)}`]) {
      assert.ok(!isValidInterfaceName(n), n);
    }
    assert.ok(isValidInterfaceName(`a.${'b'.repeat(253)}`)); // exactly 255
  });

  it('member names', function () {
    for (const n of ['M', 'Get_All9', '_x']) assert.ok(isValidMemberName(n), n);
    for (const n of ['', '9a', 'a.b', 'a-b', 'x'.repeat(256)]) assert.ok(!isValidMemberName(n), n);
  });

  it('bus names, unique and well-known', function () {
    for (const n of [':1.5', ':1.0', ':a-b.9', ':9.9']) assert.ok(isValidUniqueName(n) && isValidBusName(n), n);
    for (const n of [':1', ':', ':1.', ':.1', ':1..2']) assert.ok(!isValidUniqueName(n) && !isValidBusName(n), n);
    for (const n of ['a.b', 'org.freedesktop.DBus', 'a-b.c_d', 'com.example.x-9']) assert.ok(isValidWellKnownName(n) && isValidBusName(n), n);
    for (const n of ['a', 'a.9b', '9a.b', '.a.b', 'a..b', 'a.b.']) assert.ok(!isValidWellKnownName(n) && !isValidBusName(n), n);
  });
});
