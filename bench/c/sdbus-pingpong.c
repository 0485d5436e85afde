/*
 * D-Bus 1 side of the transport benchmark: the same work as kdbus-pingpong.c, done by
 * sd-bus clients of a dbus-daemon or dbus-broker.
 *
 *   sdbus-pingpong rtt    <address> <iterations>
 *   sdbus-pingpong call   <address> <payload-bytes> <iterations>
 *   sdbus-pingpong serve  <address>
 *   sdbus-pingpong caller <address> <payload-bytes> <iterations>
 *   sdbus-pingpong fanout <address> <receivers> <iterations>
 *
 * rtt: org.freedesktop.DBus.Peer.Ping to the bus itself, the smallest round trip.
 * call: a forked callee owns a well-known name and exports a method taking "ay"; the caller
 *   calls it with sd_bus_call(); the callee touches every page of the array and returns
 *   nothing.
 * serve: only the callee of call, until killed; prints "ready" once it owns the name.
 * caller: only the caller of call, to a callee that is already there (serve elsewhere).
 * fanout: forked receivers add a match for the signal; the time per round runs from just
 *   before sending until the last receiver's handler ran.
 *
 * Prints one JSON line of latency statistics (stats.h); warm-up rounds are not counted.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-bus.h>

#include "peers.h"
#include "stats.h"

#define BENCH_NAME "org.kdbuscuse.Bench"
#define BENCH_PATH "/org/kdbuscuse/Bench"
#define BENCH_IFACE "org.kdbuscuse.Bench"
#define CALL_TIMEOUT_US (5ULL * 1000 * 1000)

static const char *g_address;
static int g_index;
static uint64_t g_sink;

#define TRY_SD(expr) do { int r_ = (expr); if (r_ < 0) { errno = -r_; die("%s", #expr); } } while (0)

static sd_bus *bus_open(void)
{
	sd_bus *bus = NULL;
	TRY_SD(sd_bus_new(&bus));
	TRY_SD(sd_bus_set_address(bus, g_address));
	TRY_SD(sd_bus_set_bus_client(bus, 1));
	TRY_SD(sd_bus_start(bus));
	return bus;
}

static void serve_forever(sd_bus *bus)
{
	for (;;) {
		int r = sd_bus_process(bus, NULL);
		if (r < 0) {
			errno = -r;
			die("sd_bus_process");
		}
		if (r > 0)
			continue;
		r = sd_bus_wait(bus, UINT64_MAX);
		if (r < 0 && r != -EINTR) {
			errno = -r;
			die("sd_bus_wait");
		}
	}
}

/* ---- rtt -------------------------------------------------------------------------------- */

static void run_rtt(long iterations)
{
	sd_bus *bus = bus_open();
	struct samples s;
	samples_init(&s, (size_t)iterations);
	long warm = iterations / 10 + 10;
	for (long i = 0; i < warm + iterations; i++) {
		sd_bus_error err = SD_BUS_ERROR_NULL;
		sd_bus_message *reply = NULL;
		uint64_t t0 = now_ns();
		int r = sd_bus_call_method(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus",
					   "org.freedesktop.DBus.Peer", "Ping", &err, &reply, "");
		uint64_t t1 = now_ns();
		if (r < 0) {
			errno = -r;
			die("Peer.Ping: %s", err.message ? err.message : "");
		}
		sd_bus_message_unref(reply);
		if (i >= warm)
			samples_add(&s, t1 - t0);
	}
	samples_print(&s, NULL);
}

/* ---- call ------------------------------------------------------------------------------- */

static int on_call(sd_bus_message *m, void *userdata, sd_bus_error *err)
{
	(void)userdata;
	(void)err;
	const void *data;
	size_t len;
	int r = sd_bus_message_read_array(m, 'y', &data, &len);
	if (r < 0)
		return r;
	g_sink += touch_pages(data, len);
	return sd_bus_reply_method_return(m, NULL);
}

static const sd_bus_vtable g_vtable[] = {
	SD_BUS_VTABLE_START(0),
	SD_BUS_METHOD("Call", "ay", "", on_call, 0),
	SD_BUS_VTABLE_END,
};

/* A connection that exports Call and owns BENCH_NAME. */
static sd_bus *callee_open(void)
{
	sd_bus *bus = bus_open();
	TRY_SD(sd_bus_add_object_vtable(bus, NULL, BENCH_PATH, BENCH_IFACE, g_vtable, NULL));
	TRY_SD(sd_bus_request_name(bus, BENCH_NAME, 0));
	return bus;
}

static void callee(int index)
{
	(void)index;
	sd_bus *bus = callee_open();
	peer_ready();
	serve_forever(bus);
}

static void run_serve(void)
{
	sd_bus *bus = callee_open();
	printf("ready\n");
	serve_forever(bus);
}

/* Calls the callee, which is already there; prints the statistics. */
static void call_loop(size_t size, long iterations)
{
	sd_bus *bus = bus_open();
	uint8_t *payload = call_payload(size);

	struct samples s;
	samples_init(&s, (size_t)iterations);
	long warm = iterations / 10 + 5;
	for (long i = 0; i < warm + iterations; i++) {
		sd_bus_error err = SD_BUS_ERROR_NULL;
		sd_bus_message *m = NULL, *reply = NULL;
		uint64_t t0 = now_ns();
		TRY_SD(sd_bus_message_new_method_call(bus, &m, BENCH_NAME, BENCH_PATH, BENCH_IFACE, "Call"));
		TRY_SD(sd_bus_message_append_array(m, 'y', payload, size));
		int r = sd_bus_call(bus, m, CALL_TIMEOUT_US, &err, &reply);
		if (r < 0) {
			errno = -r;
			die("sd_bus_call: %s", err.message ? err.message : "");
		}
		sd_bus_message_unref(reply);
		sd_bus_message_unref(m);
		uint64_t t1 = now_ns();
		if (i >= warm)
			samples_add(&s, t1 - t0);
	}
	samples_print(&s, "\"path\":\"socket\"");
}

static void run_call(size_t size, long iterations)
{
	shared_init(1);
	spawn_peer(callee, 0);
	wait_peers_ready();
	call_loop(size, iterations);
	stop_peers();
}

/* ---- fanout ----------------------------------------------------------------------------- */

static int on_signal(sd_bus_message *m, void *userdata, sd_bus_error *err)
{
	(void)m;
	(void)userdata;
	(void)err;
	fanout_received(g_index);
	return 0;
}

static void receiver(int index)
{
	g_index = index;
	sd_bus *bus = bus_open();
	/* Synchronous AddMatch: the rule is in place when this returns. */
	TRY_SD(sd_bus_match_signal(bus, NULL, NULL, BENCH_PATH, BENCH_IFACE, "Tick", on_signal, NULL));
	peer_ready();
	serve_forever(bus);
}

static void run_fanout(int receivers, long iterations)
{
	if (receivers < 1 || receivers > MAX_PEERS)
		die("receivers must be 1..%d", MAX_PEERS);
	shared_init(receivers);
	for (int i = 0; i < receivers; i++)
		spawn_peer(receiver, i);
	wait_peers_ready();

	sd_bus *bus = bus_open();
	struct samples s;
	samples_init(&s, (size_t)iterations);
	long warm = iterations / 10 + 3;
	for (long i = 0; i < warm + iterations; i++) {
		fanout_round_start();
		uint64_t t0 = now_ns();
		TRY_SD(sd_bus_emit_signal(bus, BENCH_PATH, BENCH_IFACE, "Tick", "t", (uint64_t)i));
		/* sd_bus_send writes at once when it can; make sure nothing stays queued. */
		TRY_SD(sd_bus_flush(bus));
		uint64_t dt = fanout_round_wait(t0);
		if (i >= warm)
			samples_add(&s, dt);
	}
	stop_peers();
	samples_print(&s, NULL);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 4 && strcmp(argv[1], "rtt") == 0) {
		g_address = argv[2];
		run_rtt(atol(argv[3]));
	} else if (argc >= 5 && strcmp(argv[1], "call") == 0) {
		g_address = argv[2];
		run_call((size_t)atol(argv[3]), atol(argv[4]));
	} else if (argc >= 3 && strcmp(argv[1], "serve") == 0) {
		g_address = argv[2];
		run_serve();
	} else if (argc >= 5 && strcmp(argv[1], "caller") == 0) {
		g_address = argv[2];
		call_loop((size_t)atol(argv[3]), atol(argv[4]));
	} else if (argc >= 5 && strcmp(argv[1], "fanout") == 0) {
		g_address = argv[2];
		run_fanout(atoi(argv[3]), atol(argv[4]));
	} else {
		fprintf(stderr,
			"usage: %s rtt <address> <iterations>\n"
			"       %s call <address> <payload-bytes> <iterations>\n"
			"       %s serve <address>\n"
			"       %s caller <address> <payload-bytes> <iterations>\n"
			"       %s fanout <address> <receivers> <iterations>\n", argv[0], argv[0], argv[0], argv[0], argv[0]);
		return 2;
	}
	(void)g_sink;
	return 0;
}
