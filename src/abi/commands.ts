/**
 * What each kdbus ioctl struct (and the kdbus_msg of SEND) accepts: flags and item types,
 * with repeat/mandatory rules, exactly as the kernel's command handlers declare them.
 */
import {
  type CmdName,
  HelloFlags,
  ItemType,
  KDBUS_FLAG_NEGOTIATE,
  ListFlags,
  MakeFlags,
  MatchFlags,
  MsgFlags,
  NameFlags,
  RecvFlags,
  SendFlags,
  StructSize,
} from './constants';
import type { CommandSpec, ItemRule } from './command';

// Every rule gets all three fields so that the parser's loops see one object shape.
const one = (type: number): ItemRule => ({ type, multiple: false, mandatory: false });
const many = (type: number): ItemRule => ({ type, multiple: true, mandatory: false });
const required = (type: number): ItemRule => ({ type, multiple: false, mandatory: true });
const NEGOTIATE = one(ItemType.NEGOTIATE);

function cmd(name: string, fixedSize: number, flags: bigint, ...items: ItemRule[]): CommandSpec {
  return { name, fixedSize, isCmd: true, allowedFlags: KDBUS_FLAG_NEGOTIATE | flags, items: [NEGOTIATE, ...items] };
}

const make = MakeFlags.ACCESS_GROUP | MakeFlags.ACCESS_WORLD;

export const Specs: Readonly<Record<CmdName | 'MSG', CommandSpec>> = {
  BUS_MAKE: cmd('BUS_MAKE', StructSize.cmd, make,
    required(ItemType.MAKE_NAME), required(ItemType.BLOOM_PARAMETER), one(ItemType.ATTACH_FLAGS_SEND)),
  ENDPOINT_MAKE: cmd('ENDPOINT_MAKE', StructSize.cmd, make, required(ItemType.MAKE_NAME)),
  ENDPOINT_UPDATE: cmd('ENDPOINT_UPDATE', StructSize.cmd, 0n, many(ItemType.NAME), many(ItemType.POLICY_ACCESS)),
  HELLO: cmd('HELLO', StructSize.cmd_hello,
    HelloFlags.ACCEPT_FD | HelloFlags.ACTIVATOR | HelloFlags.POLICY_HOLDER | HelloFlags.MONITOR,
    one(ItemType.NAME), one(ItemType.CREDS), one(ItemType.PIDS), one(ItemType.SECLABEL),
    one(ItemType.CONN_DESCRIPTION), many(ItemType.POLICY_ACCESS)),
  UPDATE: cmd('UPDATE', StructSize.cmd, 0n,
    one(ItemType.ATTACH_FLAGS_SEND), one(ItemType.ATTACH_FLAGS_RECV), many(ItemType.NAME), many(ItemType.POLICY_ACCESS)),
  BYEBYE: cmd('BYEBYE', StructSize.cmd, 0n),
  FREE: cmd('FREE', StructSize.cmd_free, 0n),
  CONN_INFO: cmd('CONN_INFO', StructSize.cmd_info, 0n, one(ItemType.NAME)),
  BUS_CREATOR_INFO: cmd('BUS_CREATOR_INFO', StructSize.cmd_info, 0n),
  LIST: cmd('LIST', StructSize.cmd_list, ListFlags.UNIQUE | ListFlags.NAMES | ListFlags.ACTIVATORS | ListFlags.QUEUED),
  SEND: cmd('SEND', StructSize.cmd_send, SendFlags.SYNC_REPLY, one(ItemType.CANCEL_FD)),
  RECV: cmd('RECV', StructSize.cmd_recv, RecvFlags.PEEK | RecvFlags.DROP | RecvFlags.USE_PRIORITY),
  NAME_ACQUIRE: cmd('NAME_ACQUIRE', StructSize.cmd,
    NameFlags.REPLACE_EXISTING | NameFlags.ALLOW_REPLACEMENT | NameFlags.QUEUE, required(ItemType.NAME)),
  NAME_RELEASE: cmd('NAME_RELEASE', StructSize.cmd, 0n, required(ItemType.NAME)),
  MATCH_ADD: cmd('MATCH_ADD', StructSize.cmd_match, MatchFlags.REPLACE,
    many(ItemType.BLOOM_MASK), many(ItemType.NAME), many(ItemType.ID), many(ItemType.DST_ID),
    many(ItemType.NAME_ADD), many(ItemType.NAME_REMOVE), many(ItemType.NAME_CHANGE),
    many(ItemType.ID_ADD), many(ItemType.ID_REMOVE)),
  MATCH_REMOVE: cmd('MATCH_REMOVE', StructSize.cmd_match, 0n),
  /**
   * The message of SEND. The walk accepts a NEGOTIATE item here like everywhere else; it is
   * message examination (kdbus_msg_examine, after its header checks) that rejects it, as it
   * rejects every item type it does not handle, with EINVAL.
   */
  MSG: {
    name: 'kdbus_msg',
    fixedSize: StructSize.msg,
    isCmd: false,
    allowedFlags: KDBUS_FLAG_NEGOTIATE | MsgFlags.EXPECT_REPLY | MsgFlags.NO_AUTO_START | MsgFlags.SIGNAL,
    items: [NEGOTIATE, many(ItemType.PAYLOAD_VEC), many(ItemType.PAYLOAD_MEMFD),
      one(ItemType.FDS), one(ItemType.BLOOM_FILTER), one(ItemType.DST_NAME)],
  },
};
