/**
 * NAME_ACQUIRE + NAME_RELEASE of one name, on an empty registry and with 10,000 names held
 * by other connections. Each step also stages a NAME_ADD / NAME_REMOVE notification (no
 * connection matches it here).
 */
import { Cmd, ItemType, Limits } from '../src/abi/constants';
import { TestBus } from '../test/helpers/kdbus-client';
import { measure } from './harness';
import { HotConn } from './hot-conn';
import { timing, type TimingRow } from './report';

const OTHERS = 10_000;
/** Names per holder, under the per-connection limit. */
const PER_HOLDER = Limits.CONN_MAX_NAMES - 6;

async function acquireRelease(others: number): Promise<TimingRow> {
  const tb = await TestBus.create();
  const conns: HotConn[] = [];
  const connect = async (): Promise<HotConn> => {
    const c = new HotConn(await tb.conn({ attachSend: 0n, attachRecv: 0n }), 1024);
    conns.push(c);
    return c;
  };
  let holder: HotConn | undefined;
  for (let i = 0; i < others; i++) {
    if (i % PER_HOLDER === 0) holder = await connect();
    holder!.command(Cmd.NAME_ACQUIRE, (w) => w.u64(0).u64(0).u64(0).string(ItemType.NAME, `org.bench.other.N${i}`));
  }
  if (tb.bus.names.ownerOf(`org.bench.other.N${others - 1}`) === undefined && others > 0) throw new Error('benchmark setup: names not registered');

  const me = await connect();
  const acquire = me.place((w) => w.u64(0).u64(0).u64(0).string(ItemType.NAME, 'org.bench.Mine'));
  const release = me.place((w) => w.u64(0).u64(0).u64(0).string(ItemType.NAME, 'org.bench.Mine'));
  me.run(Cmd.NAME_ACQUIRE, acquire);
  if (tb.bus.names.ownerOf('org.bench.Mine') !== me.conn) throw new Error('benchmark setup: NAME_ACQUIRE did not make us the owner');
  me.run(Cmd.NAME_RELEASE, release);

  const m = await measure((n) => {
    for (let i = 0; i < n; i++) {
      me.run(Cmd.NAME_ACQUIRE, acquire);
      me.run(Cmd.NAME_RELEASE, release);
    }
  });
  for (const c of conns) c.client.close();
  tb.destroy();
  const label = `name acquire + release, ${others.toLocaleString('en-US')} other names`;
  return timing(label, m, `one op = the pair; ${Math.round(2e9 / m.nsPerOp[0]).toLocaleString('en-US')} name ops/s`);
}

export async function nameCases(): Promise<TimingRow[]> {
  return [await acquireRelease(0), await acquireRelease(OTHERS)];
}
