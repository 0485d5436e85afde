/*
 * Finding a connection's fd channel again after exec. The program's kdbus descriptor may
 * survive exec (without O_CLOEXEC, or through dup2 before exec), and the daemon needs the
 * channel for every IOCTL, but the new program image knows nothing of the old one's state.
 * So at open the shim names its end of the channel after the connection's socket (an
 * abstract unix address, which costs nothing and vanishes with the socket), and after exec
 * looks among its open descriptors for the socket with that name.
 */
#ifndef KC_CHANNEL_H
#define KC_CHANNEL_H

/* Names channel after the socket sock; failure only means it cannot be found after exec. */
void kc_channel_name(int channel, int sock);

/* The open descriptor that is sock's channel, or -1. */
int kc_channel_find(int sock);

#endif
