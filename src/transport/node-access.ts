/**
 * The permission check the VFS made when a client opened a kdbus node, made here for the
 * socket transport (its clients reach nodes through one socket, so the file system cannot
 * check for us). Same rules as generic_permission(): fsuid owner bits, else fsgid or a
 * supplementary group's bits, else the other bits; CAP_DAC_OVERRIDE passes everything.
 */
import type { Credentials } from '../bus/caller';

export interface NodeAttrs {
  mode: number;
  uid: number;
  gid: number;
}

export const MAY_EXEC = 1;
export const MAY_WRITE = 2;
export const MAY_READ = 4;

export function permitted(creds: Credentials, dacOverride: boolean, node: NodeAttrs, want: number): boolean {
  if (dacOverride) return true;
  let bits: number;
  if (creds.fsuid === node.uid) bits = (node.mode >> 6) & 7;
  else if (creds.fsgid === node.gid || creds.groups.includes(node.gid)) bits = (node.mode >> 3) & 7;
  else bits = node.mode & 7;
  return (bits & want) === want;
}

/** What an open(2) access mode asks for. */
export function accessFor(openFlags: number): number {
  switch (openFlags & 3) {
    case 0:
      return MAY_READ;
    case 1:
      return MAY_WRITE;
    default:
      return MAY_READ | MAY_WRITE;
  }
}
