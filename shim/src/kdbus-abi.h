/*
 * The parts of the kdbus ioctl ABI the shim itself must understand: which ioctl numbers are
 * kdbus's, and where SEND keeps the things the shim has to send along (the message, its
 * payload vectors and the descriptors it names). Everything else in a command is opaque to
 * the shim; the daemon interprets it. Values from the final kdbus UAPI
 * (docs/reference/kdbus-abi.md §2).
 */
#ifndef KC_KDBUS_ABI_H
#define KC_KDBUS_ABI_H

#include <stdint.h>
#include <sys/ioctl.h>

#define KDBUS_IOCTL_MAGIC 0x95u
/* The type byte of an ioctl number (bits 8-15 on every architecture). */
#define KDBUS_IOCTL_TYPE(cmd) (((uint32_t)(cmd) >> 8) & 0xffu)

/* The direction and size bits differ between architectures; _IOC produces the local values. */
#define KDBUS_CMD_HELLO ((uint32_t)_IOC(_IOC_READ | _IOC_WRITE, KDBUS_IOCTL_MAGIC, 0x80, 96))
#define KDBUS_CMD_FREE ((uint32_t)_IOC(_IOC_WRITE, KDBUS_IOCTL_MAGIC, 0x83, 32))
#define KDBUS_CMD_CONN_INFO ((uint32_t)_IOC(_IOC_READ, KDBUS_IOCTL_MAGIC, 0x84, 56))
#define KDBUS_CMD_BUS_CREATOR_INFO ((uint32_t)_IOC(_IOC_READ, KDBUS_IOCTL_MAGIC, 0x85, 56))
#define KDBUS_CMD_LIST ((uint32_t)_IOC(_IOC_READ, KDBUS_IOCTL_MAGIC, 0x86, 40))
#define KDBUS_CMD_SEND ((uint32_t)_IOC(_IOC_WRITE, KDBUS_IOCTL_MAGIC, 0x90, 56))
#define KDBUS_CMD_RECV ((uint32_t)_IOC(_IOC_READ, KDBUS_IOCTL_MAGIC, 0x91, 64))

/* Every command struct (and kdbus_msg) starts with its total size. */
#define KDBUS_CMD_SIZE_OFF 0
#define KDBUS_CMD_FLAGS_OFF 8
/* The kernel refused larger structs with EMSGSIZE, so more is never worth prefetching. */
#define KDBUS_CMD_MAX_SIZE 32768u

/* struct kdbus_cmd_send */
#define KDBUS_SEND_MSG_ADDRESS_OFF 24
#define KDBUS_SEND_ITEMS_OFF 56
#define KDBUS_SEND_SYNC_REPLY 1ull

/* struct kdbus_cmd_send, for SYNC_REPLY: where the reply was put in the pool */
#define KDBUS_SEND_SIZE 56
#define KDBUS_SEND_REPLY_OFFSET_OFF 32
#define KDBUS_SEND_REPLY_SIZE_OFF 40

/* struct kdbus_cmd_recv: where the received message is in the pool */
#define KDBUS_RECV_SIZE 64
#define KDBUS_RECV_MSG_OFFSET_OFF 40
#define KDBUS_RECV_MSG_SIZE_OFF 48
#define KDBUS_RECV_DROPPED_MSGS_OFF 32
/* PEEK installs nothing (the fd numbers in the message are undefined); DROP receives nothing. */
#define KDBUS_RECV_PEEK 1ull
#define KDBUS_RECV_DROP 2ull
#define KDBUS_RECV_USE_PRIORITY 4ull

/* struct kdbus_cmd_hello flags: a policy holder neither sends nor receives. */
#define KDBUS_HELLO_POLICY_HOLDER 4ull

/* Every command struct's return_flags word. */
#define KDBUS_CMD_RETURN_FLAGS_OFF 16

/* Where a command that publishes a pool slice puts the slice's offset. */
#define KDBUS_HELLO_OFFSET_OFF 64
#define KDBUS_INFO_OFFSET_OFF 40 /* struct kdbus_cmd_info: CONN_INFO, BUS_CREATOR_INFO */
#define KDBUS_LIST_OFFSET_OFF 24

/* struct kdbus_cmd_free: {u64 size, u64 flags, u64 return_flags, u64 offset} */
#define KDBUS_FREE_SIZE 32
#define KDBUS_FREE_OFFSET_OFF 24

/* struct kdbus_msg */
#define KDBUS_MSG_ITEMS_OFF 64

/* struct kdbus_item: {u64 size, u64 type} then the payload; items follow at 8-byte steps. */
#define KDBUS_ITEM_HEADER 16
#define KDBUS_ITEM_PAYLOAD_VEC 2  /* {u64 size, u64 address} */
#define KDBUS_ITEM_PAYLOAD_MEMFD 4 /* {u64 start, u64 size, int fd, u32 pad} */
#define KDBUS_ITEM_FDS 5          /* int fds[] */
#define KDBUS_ITEM_CANCEL_FD 6    /* int fd */
#define KDBUS_VEC_SIZE_OFF 0
#define KDBUS_VEC_ADDRESS_OFF 8
#define KDBUS_MEMFD_FD_OFF 16

/* The sum of a message's payload vectors may not exceed this (EMSGSIZE otherwise). */
#define KDBUS_MSG_MAX_PAYLOAD_VEC_SIZE (2u << 20)

/* A message carries at most 16 fds and 16 memfds; RECV installs that many at most. */
#define KDBUS_MAX_INSTALLED_FDS 32

/*
 * The daemon's private ioctl on its CUSE devices (docs/socket-protocol.md, CUSE clients):
 * struct {u64 size = 24; u8 token[16]}, the token filled in by the daemon. Real kdbus and
 * other devices answer ENOTTY.
 */
#define KDBUS_CUSE_CMD_ATTACH ((uint32_t)_IOC(_IOC_READ | _IOC_WRITE, KDBUS_IOCTL_MAGIC, 0xF0, 24))
#define KDBUS_CUSE_ATTACH_SIZE 24
#define KDBUS_CUSE_TOKEN_OFF 8
#define KDBUS_CUSE_TOKEN_SIZE 16

#endif
