/**
 * Readiness of any descriptor on the main event loop. Node only watches sockets and pipes;
 * a /dev/cuse channel or a SEQPACKET socket it cannot wrap. libuv, which Node exports to
 * addons, can: a uv_poll_t on the default loop calls back on the main thread when the
 * descriptor is readable, with no thread or descriptor of its own. A thread waiting in
 * epoll for the main thread costs a hop per request, which under emulation is milliseconds.
 */
import * as koffi from 'koffi';
import { logger } from '../log/logger';

const libc = koffi.load(null);
const uvDefaultLoop = libc.func('void *uv_default_loop()');
const uvHandleSize = libc.func('size_t uv_handle_size(int type)');
const PollCallback = koffi.proto('void kdbus_cuse_uv_poll_cb(void *handle, int status, int events)');
const CloseCallback = koffi.proto('void kdbus_cuse_uv_close_cb(void *handle)');
const uvPollInit = libc.func('int uv_poll_init(void *loop, void *handle, int fd)');
const uvPollStart = libc.func('int uv_poll_start(void *handle, int events, kdbus_cuse_uv_poll_cb *cb)');
const uvClose = libc.func('void uv_close(void *handle, kdbus_cuse_uv_close_cb *cb)');
const uvRef = libc.func('void uv_ref(void *handle)');
const uvUnref = libc.func('void uv_unref(void *handle)');
const uvStrerror = libc.func('const char *uv_strerror(int err)');

/** uv_handle_type's UV_POLL. */
const UV_POLL = 8;
/** uv_poll_event bits, as the callback reports them and as watch() takes them. */
export const UV_READABLE = 1;
export const UV_WRITABLE = 2;
const POLL_SIZE = Number(uvHandleSize(UV_POLL));

export class FdWatchError extends Error {}

const UV_EBADF = -9;

/**
 * What a negative status of a readiness callback means, for a log line. libuv reports the
 * descriptor's POLLERR as UV_EBADF; on a unix socket that is a peer that closed its end with
 * data unread (the kernel resets the connection then).
 */
export function pollFailure(status: number): string {
  if (status === UV_EBADF) return 'the descriptor reports an error (POLLERR; a socket whose peer closed it with data unread)';
  return `polling it failed: ${uvStrerror(status) as string}`;
}

/**
 * Readiness callbacks come from libuv outside Node's callback scope, so promise
 * continuations, queueMicrotask and nextTick callbacks queued in them would wait for some
 * unrelated event. Node's own drain of both queues runs them right after each callback:
 * process._tickCallback, never documented but kept for embedders (DEP0134 deprecates it in
 * the documentation only). A Node without it gets an immediate per loop turn instead, which
 * runs them after the poll phase but costs more: a relay of 64-byte messages between two
 * processes through two FdWatches took 75–82 µs per round trip that way and 51–80 µs with
 * the drain (six runs each); a 0-byte call over CUSE in the VM 6031 µs against 5558 (means
 * of twelve runs each).
 */
type Drain = () => void;
const tickDrain = (process as unknown as { _tickCallback?: Drain })._tickCallback;
let checkpointQueued = false;
const checkpoint = (): void => {
  checkpointQueued = false;
};

/** Whether continuations queued in a readiness callback run before it returns (see above). */
export const drainsAfterEachCallback = typeof tickDrain === 'function';

/** Work that waits for the continuations of the callback running now (afterContinuations). */
let afterQueue: Array<() => void> = [];
let inCallback = false;

/**
 * Runs `fn` once the promise continuations queued so far have run: at the end of the
 * readiness callback running now, after its drain, or on an immediate outside one.
 */
export function afterContinuations(fn: () => void): void {
  if (inCallback && drainsAfterEachCallback) afterQueue.push(fn);
  else setImmediate(fn);
}

function drainAfterCallback(): void {
  if (!drainsAfterEachCallback) {
    if (!checkpointQueued) {
      checkpointQueued = true;
      setImmediate(checkpoint);
    }
    return;
  }
  tickDrain!.call(process);
  // What waited for the continuations may queue more; each round runs what the last queued.
  while (afterQueue.length > 0) {
    const run = afterQueue;
    afterQueue = [];
    for (const fn of run) {
      try {
        fn();
      } catch (e) {
        bug('work after a readiness callback', e);
      }
    }
    tickDrain!.call(process);
  }
}

/** An exception must not unwind through libuv's C frames, nor one client's trouble end the daemon. */
function bug(what: string, e: unknown): void {
  logger.error(`${what} failed: ${(e as Error).stack ?? String(e)}`);
}

/**
 * One callback each for every watch (koffi has a bounded number of trampolines, and a
 * daemon may watch thousands of descriptors): libuv passes the handle, its address finds
 * the watch.
 */
const watches = new Map<bigint, FdWatch>();
let pollTrampoline: bigint | undefined;
let closeTrampoline: bigint | undefined;

function trampolines(): { poll: bigint; close: bigint } {
  pollTrampoline ??= koffi.register((h: unknown, status: number, events: number) => {
    watches.get(koffi.address(h))?.ready(status, events);
  }, koffi.pointer(PollCallback));
  // libuv owns a handle's memory until its close callback, on a later loop turn.
  closeTrampoline ??= koffi.register((h: unknown) => koffi.free(h), koffi.pointer(CloseCallback));
  return { poll: pollTrampoline, close: closeTrampoline };
}

/**
 * Calls `onReady` on the main thread while `fd` is readable (level-triggered: a handler that
 * leaves data unread is called again), and while writable once asked with watch(). The
 * status is a negative libuv error when the descriptor cannot be polled any more; events
 * says which of UV_READABLE and UV_WRITABLE hold.
 */
export class FdWatch {
  private handle: unknown;
  private address = 0n;
  private events = UV_READABLE;

  constructor(readonly fd: number, private readonly onReady: (status: number, events: number) => void) {
    const { poll } = trampolines();
    const handle = koffi.alloc('uint8_t', POLL_SIZE);
    const rc = uvPollInit(uvDefaultLoop(), handle, fd) as number;
    if (rc < 0) {
      koffi.free(handle);
      throw new FdWatchError(`cannot watch descriptor ${fd}: ${uvStrerror(rc) as string}`);
    }
    this.handle = handle;
    this.address = koffi.address(handle);
    watches.set(this.address, this);
    const started = uvPollStart(handle, UV_READABLE, poll) as number;
    if (started < 0) {
      this.close();
      throw new FdWatchError(`cannot watch descriptor ${fd}: ${uvStrerror(started) as string}`);
    }
  }

  /** @internal called from libuv through the shared trampoline. */
  ready(status: number, events: number): void {
    inCallback = true;
    try {
      this.onReady(status, events);
    } catch (e) {
      bug(`handler of descriptor ${this.fd}`, e);
    }
    try {
      drainAfterCallback();
    } catch (e) {
      bug(`continuations after the handler of descriptor ${this.fd}`, e);
    } finally {
      inCallback = false;
    }
    // Left by a continuation that threw: it still runs, a turn later.
    if (afterQueue.length > 0) {
      const rest = afterQueue;
      afterQueue = [];
      for (const fn of rest) setImmediate(fn);
    }
  }

  /** Which of UV_READABLE and UV_WRITABLE to watch for from now on. */
  watch(events: number): void {
    if (this.handle === undefined || events === this.events) return;
    this.events = events;
    const rc = uvPollStart(this.handle, events, trampolines().poll) as number;
    if (rc < 0) throw new FdWatchError(`cannot watch descriptor ${this.fd}: ${uvStrerror(rc) as string}`);
  }

  /** Whether the watch alone keeps the process running (it does by default). */
  setRef(keepsAlive: boolean): void {
    if (this.handle === undefined) return;
    if (keepsAlive) uvRef(this.handle);
    else uvUnref(this.handle);
  }

  /** Stops watching; the descriptor stays open and is the caller's to close, after this. */
  close(): void {
    const handle = this.handle;
    if (handle === undefined) return;
    this.handle = undefined;
    watches.delete(this.address);
    uvClose(handle, trampolines().close);
  }
}
