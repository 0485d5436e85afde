#!/bin/sh
# Runs common programs with and without the (glibc) shim preloaded and checks that their
# output and exit status are the same: the shim must not change anything for programs
# that do not use kdbus. Usage: run-programs.sh SHIM.so
# Prints "ok - NAME", "not ok - NAME" or "skip - NAME (why)"; exits 1 if anything failed.

shim=$1
[ -f "$shim" ] || { echo "usage: $0 path/to/libkdbus-cuse-shim.so" >&2; exit 2; }
tmp=$(mktemp -d /tmp/kdbus-shim-programs-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
failed=0

# compare NAME COMMAND...: runs COMMAND twice (plain, preloaded) in the same scratch directory.
compare() {
	name=$1
	shift
	if ! command -v "$1" >/dev/null 2>&1; then
		echo "skip - $name ($1 is not installed)"
		return
	fi
	mkdir -p "$tmp/plain" "$tmp/shim"
	(cd "$tmp/plain" && "$@" >"$tmp/plain.out" 2>&1)
	plain=$?
	(cd "$tmp/shim" && LD_PRELOAD="$shim" "$@" >"$tmp/shim.out" 2>&1)
	preloaded=$?
	if [ "$plain" -eq "$preloaded" ] && cmp -s "$tmp/plain.out" "$tmp/shim.out" && [ -s "$tmp/plain.out" ]; then
		echo "ok - $name"
	else
		echo "not ok - $name (exit $plain vs $preloaded)"
		diff "$tmp/plain.out" "$tmp/shim.out" | head -20 | sed 's/^/#   /'
		failed=1
	fi
	rm -rf "$tmp/plain" "$tmp/shim"
}

compare "sh pipelines" sh -c '
	printf "b\na\nc\nb\n" | sort | uniq -c | tr -s " "
	echo $((6 * 7))
	seq 1 2000 | awk "{ s += \$1 } END { print s }"
	echo data > bus && cat bus && ls
	exec 3>control; echo via-fd3 >&3; exec 3>&-; cat control
	(echo sub; false) ; echo "status $?"
	find . -type f | sort | xargs wc -c | tail -1
	head -c 100000 /dev/zero | od -An -c | head -2
'

compare "python3" python3 -c '
import mmap, os, socket, subprocess, tempfile, threading
with open("bus", "w") as f:
    f.write("x" * 5000)
with open("bus", "r+b") as f:
    m = mmap.mmap(f.fileno(), 0)
    print(len(m), m[:3])
    m.close()
a, b = socket.socketpair()
a.sendall(b"ping")
print(b.recv(4))
r, w = os.pipe()
def writer():
    for i in range(100):
        os.write(w, b"%d\n" % i)
    os.close(w)
t = threading.Thread(target=writer)
t.start()
data = b""
while True:
    chunk = os.read(r, 65536)
    if not chunk:
        break
    data += chunk
t.join()
print(sum(int(x) for x in data.split()))
print(subprocess.run(["sh", "-c", "echo child; exit 3"], capture_output=True).returncode)
fd = os.open("1000-ep", os.O_CREAT | os.O_WRONLY, 0o600)
os.dup2(fd, 10)
os.close(fd)
os.write(10, b"dup2")
os.close(10)
print(open("1000-ep").read(), sorted(os.listdir(".")))
'

compare "node" node -e '
const fs = require("fs"), net = require("net"), cp = require("child_process");
const { Worker } = require("worker_threads");
fs.writeFileSync("control", "y".repeat(10000));
console.log(fs.readFileSync("control").length, fs.readdirSync(".").sort());
console.log(cp.spawnSync("sh", ["-c", "echo spawned"]).stdout.toString().trim());
console.log(require("crypto").createHash("sha256").update("kdbus").digest("hex").slice(0, 16));
const server = net.createServer((s) => s.end("pong")).listen("sock", () => {
  net.connect("sock").on("data", (d) => {
    console.log(d.toString());
    server.close();
    const w = new Worker("require(\"worker_threads\").parentPort.postMessage(6 * 7)", { eval: true });
    w.on("message", (m) => console.log("worker", m));
  });
});
'

exit $failed
