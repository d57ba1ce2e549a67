#ifndef COPERANDO_H
#define COPERANDO_H
#include <stddef.h>
#include <stdint.h>

/// Extends a CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) over `length` bytes.
/// Start with crc = 0; the function applies the usual pre- and post-inversion, so
/// ccrc32c_extend(ccrc32c_extend(0, a), b) == ccrc32c_extend(0, a || b).
/// Uses the SSE4.2 crc32 instruction when the CPU has it, a table otherwise.
uint32_t ccrc32c_extend(uint32_t crc, const void *data, size_t length);

/// 1 when the hardware path is in use, 0 for the table.
int ccrc32c_is_hardware(void);

/// The table implementation, exposed so tests can check both paths agree.
uint32_t ccrc32c_extend_software(uint32_t crc, const void *data, size_t length);


/// SO_PEERCRED of a connected Unix socket (struct ucred needs _GNU_SOURCE, which Swift's Glibc
/// module does not define). Returns 0 on success, -1 with errno set.
int coperando_peer_credentials(int fd, int32_t *pid, uint32_t *uid, uint32_t *gid);


/// Pseudo-terminal calls (declared by glibc only with _XOPEN_SOURCE / _GNU_SOURCE).
int coperando_posix_openpt(int flags);
int coperando_grantpt(int fd);
int coperando_unlockpt(int fd);
int coperando_ptsname_r(int fd, char *buffer, size_t length);

#endif
