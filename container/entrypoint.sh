#!/bin/sh
# The sidecar's entrypoint: publish the preload libraries on the shared volume, so an
# application container needs nothing installed to load them, then become the daemon.
# Arguments are extra `kdbus-cuse serve` flags; they override the configuration file.
set -eu

home=${KDBUS_CUSE_HOME:-/opt/kdbus-cuse}
config=${KDBUS_CUSE_CONFIG:-/etc/kdbus-cuse/sidecar.json}
shared=${KDBUS_CUSE_SHARED:-/run/kdbus-cuse}

for libc in musl glibc; do
	lib=$home/shim/build/$libc/libkdbus-cuse-shim.so
	[ -f "$lib" ] || continue
	mkdir -p "$shared/lib/$libc"
	# Copy then rename: a client starting meanwhile never maps a half-written library, and
	# clients still running keep the old one.
	cp "$lib" "$shared/lib/$libc/.libkdbus-cuse-shim.so.new"
	chmod 0644 "$shared/lib/$libc/.libkdbus-cuse-shim.so.new"
	mv -f "$shared/lib/$libc/.libkdbus-cuse-shim.so.new" "$shared/lib/$libc/libkdbus-cuse-shim.so"
done

exec node "$home/bin/kdbus-cuse" serve --config "$config" "$@"
