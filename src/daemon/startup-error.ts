/**
 * Why the daemon cannot start on this machine, in words a person can act on (no /dev/cuse,
 * another daemon on the socket): reported in one line without a stack, exit status 1. A
 * restart may help once the cause is gone, unlike a usage or configuration error (status 2).
 */
export class StartupError extends Error {}
