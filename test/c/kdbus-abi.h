/*
 * The parts of the kdbus ioctl ABI (final 2015 version) this test client uses, written
 * from the layout tables of docs/reference/kdbus-abi.md §2. Fixed sizes are checked at
 * compile time against those tables, so a typo here cannot silently shift a field.
 */
#ifndef KDBUS_CLIENT_ABI_H
#define KDBUS_CLIENT_ABI_H

#include <stdint.h>
#include <sys/ioctl.h>

#define KD_ALIGNED __attribute__((aligned(8)))
#define KD_ALIGN8(x) (((x) + 7) & ~(uint64_t)7)

#define KD_IOCTL_MAGIC 0x95
#define KD_DST_ID_NAME 0ULL
#define KD_DST_ID_BROADCAST (~0ULL)
#define KD_MATCH_ID_ANY (~0ULL)
#define KD_SRC_ID_KERNEL 0ULL
#define KD_PAYLOAD_KERNEL 0ULL
#define KD_PAYLOAD_DBUS 0x4442757344427573ULL
/* A received PAYLOAD_OFF with this offset stands for zero bytes (a sent zero-VEC). */
#define KD_OFFSET_ZEROES (~0ULL)

/* Item types */
enum {
	KD_ITEM_PAYLOAD_VEC = 2,
	KD_ITEM_PAYLOAD_OFF = 3,
	KD_ITEM_PAYLOAD_MEMFD = 4,
	KD_ITEM_FDS = 5,
	KD_ITEM_BLOOM_PARAMETER = 7,
	KD_ITEM_BLOOM_FILTER = 8,
	KD_ITEM_BLOOM_MASK = 9,
	KD_ITEM_DST_NAME = 10,
	KD_ITEM_NAME = 15,
	KD_ITEM_TIMESTAMP = 0x1000,
	KD_ITEM_CREDS = 0x1001,
	KD_ITEM_PIDS = 0x1002,
	KD_ITEM_OWNED_NAME = 0x1004,
	KD_ITEM_CONN_DESCRIPTION = 0x100d,
	KD_ITEM_NAME_ADD = 0x8000,
	KD_ITEM_NAME_REMOVE = 0x8001,
	KD_ITEM_NAME_CHANGE = 0x8002,
	KD_ITEM_ID_ADD = 0x8003,
	KD_ITEM_ID_REMOVE = 0x8004,
	KD_ITEM_REPLY_TIMEOUT = 0x8005,
	KD_ITEM_REPLY_DEAD = 0x8006,
};

/* Attach flags (bit n <-> item type 0x1000 + n) */
#define KD_ATTACH_TIMESTAMP (1ULL << 0)
#define KD_ATTACH_CREDS (1ULL << 1)
#define KD_ATTACH_PIDS (1ULL << 2)
#define KD_ATTACH_NAMES (1ULL << 4)
#define KD_ATTACH_ANY (~0ULL)

#define KD_HELLO_ACCEPT_FD (1ULL << 0)

#define KD_MSG_EXPECT_REPLY (1ULL << 0)
#define KD_MSG_SIGNAL (1ULL << 2)

#define KD_SEND_SYNC_REPLY (1ULL << 0)

#define KD_LIST_NAMES (1ULL << 1)

#define KD_NAME_QUEUE (1ULL << 2)
#define KD_NAME_IN_QUEUE (1ULL << 3)
#define KD_NAME_PRIMARY (1ULL << 5)
#define KD_NAME_ACQUIRED (1ULL << 6)

/* Item header; the payload follows immediately and is padded to 8 in a list. */
struct kd_item {
	uint64_t size;
	uint64_t type;
	uint8_t data[];
} KD_ALIGNED;
#define KD_ITEM_HEADER 16u

struct kd_vec {
	uint64_t size;
	uint64_t address_or_offset;
} KD_ALIGNED;

struct kd_memfd {
	uint64_t start;
	uint64_t size;
	int32_t fd;
	uint32_t pad;
} KD_ALIGNED;

struct kd_bloom_parameter {
	uint64_t size;
	uint64_t n_hash;
} KD_ALIGNED;

struct kd_creds {
	uint64_t uid, euid, suid, fsuid;
	uint64_t gid, egid, sgid, fsgid;
} KD_ALIGNED;

struct kd_pids {
	uint64_t pid;
	uint64_t tid;
	uint64_t ppid;
} KD_ALIGNED;

struct kd_timestamp {
	uint64_t seqnum;
	uint64_t monotonic_ns;
	uint64_t realtime_ns;
} KD_ALIGNED;

/* OWNED_NAME / NAME payload: flags, then a NUL-terminated name. */
struct kd_name {
	uint64_t flags;
	char name[];
} KD_ALIGNED;

struct kd_id_change {
	uint64_t id;
	uint64_t flags;
} KD_ALIGNED;

/* NAME_ADD / NAME_REMOVE / NAME_CHANGE payload (also a match rule), name optional. */
struct kd_name_change {
	struct kd_id_change old_id;
	struct kd_id_change new_id;
	char name[];
} KD_ALIGNED;

struct kd_cmd {
	uint64_t size;
	uint64_t flags;
	uint64_t return_flags;
} KD_ALIGNED;

struct kd_cmd_hello {
	uint64_t size;
	uint64_t flags;
	uint64_t return_flags;
	uint64_t attach_flags_send;
	uint64_t attach_flags_recv;
	uint64_t bus_flags;
	uint64_t id;
	uint64_t pool_size;
	uint64_t offset;
	uint64_t items_size;
	uint8_t id128[16];
} KD_ALIGNED;

struct kd_cmd_free {
	uint64_t size;
	uint64_t flags;
	uint64_t return_flags;
	uint64_t offset;
} KD_ALIGNED;

struct kd_cmd_info {
	uint64_t size;
	uint64_t flags;
	uint64_t return_flags;
	uint64_t id;
	uint64_t attach_flags;
	uint64_t offset;
	uint64_t info_size;
} KD_ALIGNED;

struct kd_cmd_list {
	uint64_t size;
	uint64_t flags;
	uint64_t return_flags;
	uint64_t offset;
	uint64_t list_size;
} KD_ALIGNED;

/* One record of a LIST or CONN_INFO result. */
struct kd_info {
	uint64_t size;
	uint64_t id;
	uint64_t flags;
} KD_ALIGNED;

struct kd_msg_info {
	uint64_t offset;
	uint64_t msg_size;
	uint64_t return_flags;
} KD_ALIGNED;

struct kd_cmd_send {
	uint64_t size;
	uint64_t flags;
	uint64_t return_flags;
	uint64_t msg_address;
	struct kd_msg_info reply;
} KD_ALIGNED;

struct kd_cmd_recv {
	uint64_t size;
	uint64_t flags;
	uint64_t return_flags;
	int64_t priority;
	uint64_t dropped_msgs;
	struct kd_msg_info msg;
} KD_ALIGNED;

struct kd_cmd_match {
	uint64_t size;
	uint64_t flags;
	uint64_t return_flags;
	uint64_t cookie;
} KD_ALIGNED;

struct kd_msg {
	uint64_t size;
	uint64_t flags;
	int64_t priority;
	uint64_t dst_id;
	uint64_t src_id;
	uint64_t payload_type;
	uint64_t cookie;
	/* timeout_ns (absolute CLOCK_MONOTONIC) on calls, cookie_reply on replies */
	uint64_t timeout_or_reply;
} KD_ALIGNED;

_Static_assert(sizeof(struct kd_item) == 16, "item header");
_Static_assert(sizeof(struct kd_vec) == 16, "kdbus_vec");
_Static_assert(sizeof(struct kd_memfd) == 24, "kdbus_memfd");
_Static_assert(sizeof(struct kd_creds) == 64, "kdbus_creds");
_Static_assert(sizeof(struct kd_pids) == 24, "kdbus_pids");
_Static_assert(sizeof(struct kd_timestamp) == 24, "kdbus_timestamp");
_Static_assert(sizeof(struct kd_name_change) == 32, "kdbus_notify_name_change");
_Static_assert(sizeof(struct kd_cmd) == 24, "kdbus_cmd");
_Static_assert(sizeof(struct kd_cmd_hello) == 96, "kdbus_cmd_hello");
_Static_assert(sizeof(struct kd_cmd_free) == 32, "kdbus_cmd_free");
_Static_assert(sizeof(struct kd_cmd_info) == 56, "kdbus_cmd_info");
_Static_assert(sizeof(struct kd_cmd_list) == 40, "kdbus_cmd_list");
_Static_assert(sizeof(struct kd_info) == 24, "kdbus_info");
_Static_assert(sizeof(struct kd_cmd_send) == 56, "kdbus_cmd_send");
_Static_assert(sizeof(struct kd_cmd_recv) == 64, "kdbus_cmd_recv");
_Static_assert(sizeof(struct kd_cmd_match) == 32, "kdbus_cmd_match");
_Static_assert(sizeof(struct kd_msg) == 64, "kdbus_msg");

/* The direction and size bits follow the kdbus declarations (they are meaningless to the
 * kernel but part of the number); the libc macros give each architecture its encoding. */
#define KD_CMD_HELLO _IOWR(KD_IOCTL_MAGIC, 0x80, struct kd_cmd_hello)
#define KD_CMD_BYEBYE _IOW(KD_IOCTL_MAGIC, 0x82, struct kd_cmd)
#define KD_CMD_FREE _IOW(KD_IOCTL_MAGIC, 0x83, struct kd_cmd_free)
#define KD_CMD_CONN_INFO _IOR(KD_IOCTL_MAGIC, 0x84, struct kd_cmd_info)
#define KD_CMD_LIST _IOR(KD_IOCTL_MAGIC, 0x86, struct kd_cmd_list)
#define KD_CMD_SEND _IOW(KD_IOCTL_MAGIC, 0x90, struct kd_cmd_send)
#define KD_CMD_RECV _IOR(KD_IOCTL_MAGIC, 0x91, struct kd_cmd_recv)
#define KD_CMD_NAME_ACQUIRE _IOW(KD_IOCTL_MAGIC, 0xa0, struct kd_cmd)
#define KD_CMD_NAME_RELEASE _IOW(KD_IOCTL_MAGIC, 0xa1, struct kd_cmd)
#define KD_CMD_MATCH_ADD _IOW(KD_IOCTL_MAGIC, 0xb0, struct kd_cmd_match)

#if defined(__x86_64__) || defined(__i386__) || defined(__aarch64__) || defined(__arm__)
_Static_assert(KD_CMD_HELLO == 0xC0609580u, "HELLO number");
_Static_assert(KD_CMD_BYEBYE == 0x40189582u, "BYEBYE number");
_Static_assert(KD_CMD_FREE == 0x40209583u, "FREE number");
_Static_assert(KD_CMD_CONN_INFO == 0x80389584u, "CONN_INFO number");
_Static_assert(KD_CMD_LIST == 0x80289586u, "LIST number");
_Static_assert(KD_CMD_SEND == 0x40389590u, "SEND number");
_Static_assert(KD_CMD_RECV == 0x80409591u, "RECV number");
_Static_assert(KD_CMD_NAME_ACQUIRE == 0x401895A0u, "NAME_ACQUIRE number");
_Static_assert(KD_CMD_NAME_RELEASE == 0x401895A1u, "NAME_RELEASE number");
_Static_assert(KD_CMD_MATCH_ADD == 0x402095B0u, "MATCH_ADD number");
#endif

#endif
