/** The scenarios of the C test client (test/c/kdbus-client.c), in the order `all` runs them. */
export const C_CLIENT_SCENARIOS = ['hello', 'name', 'call', 'signal', 'fds', 'notify', 'timeout', 'dead', 'shared', 'readiness', 'interrupt', 'large'] as const;
