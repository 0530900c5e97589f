/* systemd's readiness protocol (sd_notify) without libsystemd: one datagram per state change
 * to the AF_UNIX socket named by $NOTIFY_SOCKET. Without that variable nothing happens. */
#ifndef DDUCT_CLI_NOTIFY_H
#define DDUCT_CLI_NOTIFY_H

/* Send state ("READY=1", "STOPPING=1", ...). Returns 1 sent, 0 no $NOTIFY_SOCKET, -1 error
 * (logged once by the caller if it cares; the service manager then times out by itself). */
int notify_systemd(const char *state);

#endif
