/**
 * Tests that need something of the machine (root, a tool, a kernel feature) call this.
 * On a developer's machine a missing requirement skips the test with the reason; in CI
 * (CI=true) it fails, because CI installs everything the tests need and a skip there would
 * hide a missing install step.
 */
export function requireOrSkip(ctx: Mocha.Context, available: boolean, what: string): void {
  if (available) return;
  if (process.env['CI'] === 'true') throw new Error(`missing in CI: ${what}`);
  ctx.skip();
}
