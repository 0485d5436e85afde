/**
 * The interruption a transport hands a waiting SEND (src/bus/interruption.ts): what
 * send.ts's wait relies on of it, as it relied on an AbortSignal.
 */
import assert from 'node:assert/strict';
import { Interruption } from '../../src/bus/interruption';

describe('bus interruption', () => {
  it('abort() calls each listener once and marks it aborted; a second abort() calls none', () => {
    const i = new Interruption();
    const calls: string[] = [];
    i.addEventListener('abort', () => calls.push('a'));
    i.addEventListener('abort', () => calls.push('b'));
    assert.equal(i.aborted, false);
    i.abort();
    assert.equal(i.aborted, true);
    assert.deepEqual(calls, ['a', 'b']);
    i.abort();
    assert.deepEqual(calls, ['a', 'b']);
  });

  it('a removed listener is not called; removing one never added changes nothing', () => {
    const i = new Interruption();
    const calls: string[] = [];
    const a = (): number => calls.push('a');
    const b = (): number => calls.push('b');
    i.addEventListener('abort', a);
    i.addEventListener('abort', b);
    i.removeEventListener('abort', a);
    i.removeEventListener('abort', () => calls.push('never'));
    i.abort();
    assert.deepEqual(calls, ['b']);
  });
});
