/**
 * Sockets systemd passed at start (socket activation, sd_listen_fds(3)): LISTEN_FDS
 * descriptors from 3 on, meant for this process when LISTEN_PID names it. They are taken
 * once, made close-on-exec, and the variables removed, so that services the daemon starts
 * do not take them for their own.
 */
import { F_GETFD, F_SETFD, FD_CLOEXEC, fcntl } from './libc';

const SD_LISTEN_FDS_START = 3;

let taken = false;

/** The descriptors systemd passed, the first time; none on later calls or when there were none. */
export function takeListenFds(): number[] {
  if (taken) return [];
  taken = true;
  const fds: number[] = [];
  const env = process.env;
  const pid = Number(env['LISTEN_PID']);
  const count = Number(env['LISTEN_FDS']);
  delete env['LISTEN_PID'];
  delete env['LISTEN_FDS'];
  delete env['LISTEN_FDNAMES'];
  if (pid !== process.pid || !Number.isInteger(count) || count <= 0) return fds;
  for (let fd = SD_LISTEN_FDS_START; fd < SD_LISTEN_FDS_START + count; fd++) {
    const flags = fcntl(fd, F_GETFD, 0);
    if (flags < 0) continue;
    fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
    fds.push(fd);
  }
  return fds;
}
