// Linux calls whose declarations need _GNU_SOURCE.
#define _GNU_SOURCE
#include <stdlib.h>
#include <sys/socket.h>
#include "coperando.h"

int coperando_peer_credentials(int fd, int32_t *pid, uint32_t *uid, uint32_t *gid) {
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -1;
    *pid = cred.pid;
    *uid = cred.uid;
    *gid = cred.gid;
    return 0;
}

int coperando_posix_openpt(int flags) { return posix_openpt(flags); }
int coperando_grantpt(int fd) { return grantpt(fd); }
int coperando_unlockpt(int fd) { return unlockpt(fd); }
int coperando_ptsname_r(int fd, char *buffer, size_t length) { return ptsname_r(fd, buffer, length); }
