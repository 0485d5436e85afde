/**
 * The daemon's own caller memory (src/dbus1/local-caller.ts): buffers mapped in slots of
 * their own, read as copies, lent as views only where mapped lendable.
 */
import assert from 'node:assert/strict';
import { KdbusError } from '../../src/abi/errno';
import { LocalCaller } from '../../src/dbus1/local-caller';

describe('LocalCaller memory', () => {
  it('lends a lendable buffer\'s bytes as a view of them, and nothing else', () => {
    const c = new LocalCaller();
    const payload = Buffer.from('0123456789');
    const struct = Buffer.from('abcdefgh');
    const p = c.map(payload, true);
    const s = c.map(struct, false);
    const lent = c.lend(p + 2n, 5)!;
    assert.equal(lent.toString(), '23456');
    payload[3] = 0x58;
    assert.equal(lent.toString(), '2X456', 'the same memory, not a copy');
    assert.equal(c.lend(s, 4), undefined, 'a struct slot is not lent');
    assert.equal(c.lend(p + 8n, 3), undefined, 'past the end of the buffer');
    assert.equal(c.lend(0x10n, 1), undefined, 'below every slot');
  });

  it('reads copies, readInto copies in place, both EFAULT outside a mapping', () => {
    const c = new LocalCaller();
    const payload = Buffer.from('0123456789');
    const p = c.map(payload, true);
    const copy = c.read(p + 1n, 3);
    payload[1] = 0x58;
    assert.equal(copy.toString(), '123', 'a copy even of a lendable buffer');
    const target = Buffer.from('........');
    c.readInto(p + 4n, 3, target, 2);
    assert.equal(target.toString(), '..456...');
    const efault = (e: unknown): boolean => e instanceof KdbusError && e.errno === 14;
    assert.throws(() => c.read(p + 8n, 3), efault);
    assert.throws(() => c.readInto(p + 8n, 3, target, 0), efault);
    c.unmap(p);
    assert.throws(() => c.read(p, 1), efault);
    assert.equal(c.lend(p, 1), undefined, 'an unmapped slot lends nothing');
  });
});
