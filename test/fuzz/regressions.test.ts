/**
 * Bugs the fuzzer found, each reduced to the smallest input that showed it.
 */
import assert from 'node:assert/strict';
import { Errno } from '../../src/abi/errno';
import { ItemType } from '../../src/abi/constants';
import { ItemWriter } from '../../src/abi/items';
import { Domain } from '../../src/bus/domain';
import { TestBus, TestClient } from '../helpers/kdbus-client';

function cmdStruct(items: (w: ItemWriter) => void): Buffer {
  const w = new ItemWriter();
  w.u64(0).u64(0).u64(0);
  items(w);
  const b = Buffer.from(w.finish());
  b.writeBigUInt64LE(BigInt(b.length), 0);
  return b;
}

describe('fuzz regressions', () => {
  const uid = process.getuid!();

  // Found with a BUS_MAKE struct in read-only memory: the bus was made, the return_flags
  // write-back faulted, and the bus stayed in the domain with no handle owning it (its name
  // taken and the user's bus count charged for good). kdbus_cmd_bus_make undoes the bus when
  // kdbus_args_clear fails.
  it('BUS_MAKE whose return_flags cannot be written back leaves no bus behind', async () => {
    const domain = new Domain();
    const control = new TestClient({ kind: 'control', domain });
    const name = `${uid}-regression-bus`;
    const struct = cmdStruct((w) => {
      w.itemU64(ItemType.BLOOM_PARAMETER, 64n, 1n);
      w.string(ItemType.MAKE_NAME, name);
    });
    const r = await control.ioctlAt('BUS_MAKE', control.mem.put(struct, { readOnly: true }), struct.length);
    assert.equal(r.errno, Errno.EFAULT);
    assert.equal(control.handle.roleName, 'none');
    assert.equal(domain.buses.has(name), false);
    assert.equal(domain.user(uid).buses, 0);

    const again = new TestClient({ kind: 'control', domain });
    assert.equal((await again.ioctl('BUS_MAKE', struct)).errno, 0, 'the name is free again');
    again.close();
    control.close();
    assert.equal(domain.buses.size, 0);
  });

  // Same shape for ENDPOINT_MAKE: the custom endpoint stayed registered without an owner
  // until the bus went away, and its name could not be made again.
  it('ENDPOINT_MAKE whose return_flags cannot be written back leaves no endpoint behind', async () => {
    const tb = await TestBus.create();
    const owner = tb.client();
    const name = `${uid}-regression-ep`;
    const struct = cmdStruct((w) => w.string(ItemType.MAKE_NAME, name));
    const r = await owner.ioctlAt('ENDPOINT_MAKE', owner.mem.put(struct, { readOnly: true }), struct.length);
    assert.equal(r.errno, Errno.EFAULT);
    assert.equal(owner.handle.roleName, 'none');
    assert.equal(tb.bus.endpoints.has(name), false);

    const again = tb.client();
    assert.equal((await again.ioctl('ENDPOINT_MAKE', struct)).errno, 0, 'the name is free again');
    again.close();
    owner.close();
    tb.destroy();
  });
});
