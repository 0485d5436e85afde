/**
 * The interruption of one waiting command: the transports end a synchronous SEND's wait
 * with it when the caller's file or socket goes away. Only such a SEND waits, and it
 * registers one listener; an AbortController would do the same at a cost of microseconds
 * per call (several per cent of the daemon's time under emulation).
 */
import type { Interruptible } from './caller';

export class Interruption implements Interruptible {
  aborted = false;
  private listeners: Array<() => void> = [];

  addEventListener(_type: 'abort', listener: () => void): void {
    this.listeners.push(listener);
  }

  removeEventListener(_type: 'abort', listener: () => void): void {
    const i = this.listeners.indexOf(listener);
    if (i >= 0) this.listeners.splice(i, 1);
  }

  abort(): void {
    if (this.aborted) return;
    this.aborted = true;
    const listeners = this.listeners;
    this.listeners = [];
    for (const l of listeners) l();
  }
}
