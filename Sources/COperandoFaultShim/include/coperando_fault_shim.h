/*
 * COperandoFaultShim: an LD_PRELOAD library for tests only. It makes a real program meet a full
 * disk without filling one.
 *
 * With OPERANDO_FAULT_DIR=DIR in the environment, writes to files under DIR behave as on a full
 * file system while the file DIR/.disk-full exists:
 *   - the first write(2), writev(2), pwrite(2) or pwritev(2) after the file appears writes at most
 *     100 bytes and returns that short count (a full disk accepts a partial write first);
 *   - every later one fails with ENOSPC, until the file is removed;
 *   - statvfs(3) and fstatvfs(3) of paths or files under DIR report no free blocks.
 * Everything else, and every file outside DIR, is untouched. OPERANDO_FAULT_DEBUG=1 logs each
 * injected fault to stderr.
 *
 * coperando_fault_shim_injected() tells how many faults were injected in this process.
 */
#ifndef COPERANDO_FAULT_SHIM_H
#define COPERANDO_FAULT_SHIM_H

#ifdef __cplusplus
extern "C" {
#endif

unsigned long coperando_fault_shim_injected(void);

#ifdef __cplusplus
}
#endif

#endif
