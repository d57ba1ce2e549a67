/*
 * LD_PRELOAD shim that simulates a full disk under one directory. Tests only; see
 * include/coperando_fault_shim.h for the behaviour.
 *
 * How it works: write, writev, pwrite, pwrite64, pwritev, statvfs, statvfs64, fstatvfs and
 * fstatvfs64 are interposed. A descriptor is "under DIR" when /proc/self/fd/N resolves to a path
 * starting with DIR/. The real functions are found with dlsym(RTLD_NEXT) once.
 */
#define _GNU_SOURCE
#include "coperando_fault_shim.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <unistd.h>

typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*writev_fn)(int, const struct iovec *, int);
typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef ssize_t (*pwritev_fn)(int, const struct iovec *, int, off_t);
typedef int (*statvfs_fn)(const char *, struct statvfs *);
typedef int (*fstatvfs_fn)(int, struct statvfs *);

static write_fn next_write;
static writev_fn next_writev;
static pwrite_fn next_pwrite;
static pwritev_fn next_pwritev;
static statvfs_fn next_statvfs;
static fstatvfs_fn next_fstatvfs;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static char fault_dir[4096];
static size_t fault_dir_length;
static char flag_path[4200];
static int debug;
static atomic_ulong injected;
static atomic_int short_write_done;

static void resolve(void) {
    next_write = (write_fn)dlsym(RTLD_NEXT, "write");
    next_writev = (writev_fn)dlsym(RTLD_NEXT, "writev");
    next_pwrite = (pwrite_fn)dlsym(RTLD_NEXT, "pwrite");
    next_pwritev = (pwritev_fn)dlsym(RTLD_NEXT, "pwritev");
    next_statvfs = (statvfs_fn)dlsym(RTLD_NEXT, "statvfs");
    next_fstatvfs = (fstatvfs_fn)dlsym(RTLD_NEXT, "fstatvfs");
    if (!next_write || !next_writev || !next_pwrite || !next_pwritev || !next_statvfs || !next_fstatvfs) abort();
    const char *dir = getenv("OPERANDO_FAULT_DIR");
    if (dir && *dir && strlen(dir) < sizeof fault_dir - 2) {
        /* Compare against the resolved directory: /proc/self/fd links are canonical paths. */
        char *real = realpath(dir, NULL);
        snprintf(fault_dir, sizeof fault_dir, "%s/", real ? real : dir);
        free(real);
        fault_dir_length = strlen(fault_dir);
        snprintf(flag_path, sizeof flag_path, "%s.disk-full", fault_dir);
    }
    const char *d = getenv("OPERANDO_FAULT_DEBUG");
    debug = d && *d && strcmp(d, "0") != 0;
}

static int disk_full(void) {
    pthread_once(&once, resolve);
    if (!fault_dir_length) return 0;
    if (access(flag_path, F_OK) == 0) return 1;
    atomic_store(&short_write_done, 0);
    return 0;
}

static int path_under_dir(const char *path) { return fault_dir_length && strncmp(path, fault_dir, fault_dir_length) == 0; }

static int fd_under_dir(int fd) {
    char link[64], target[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0) return 0;
    target[n] = 0;
    return path_under_dir(target);
}

/* How much of `length` bytes a write may take now: length, a short count, or -1 (ENOSPC). */
static ssize_t allowance(int fd, size_t length) {
    if (!disk_full() || !fd_under_dir(fd)) return (ssize_t)length;
    atomic_fetch_add(&injected, 1);
    if (length > 0 && atomic_exchange(&short_write_done, 1) == 0) {
        if (debug) dprintf(STDERR_FILENO, "operando-fault-shim: fd %d: short write of %zu bytes\n", fd, length < 100 ? length : 100);
        return length < 100 ? (ssize_t)length : 100;
    }
    if (debug) dprintf(STDERR_FILENO, "operando-fault-shim: fd %d: ENOSPC\n", fd);
    return -1;
}

ssize_t write(int fd, const void *buffer, size_t length) {
    pthread_once(&once, resolve);
    ssize_t allowed = allowance(fd, length);
    if (allowed < 0) { errno = ENOSPC; return -1; }
    return next_write(fd, buffer, (size_t)allowed);
}

ssize_t pwrite(int fd, const void *buffer, size_t length, off_t offset) {
    pthread_once(&once, resolve);
    ssize_t allowed = allowance(fd, length);
    if (allowed < 0) { errno = ENOSPC; return -1; }
    return next_pwrite(fd, buffer, (size_t)allowed, offset);
}

ssize_t pwrite64(int fd, const void *buffer, size_t length, off_t offset) { return pwrite(fd, buffer, length, offset); }

static size_t total(const struct iovec *iov, int count) {
    size_t n = 0;
    for (int i = 0; i < count; i++) n += iov[i].iov_len;
    return n;
}

ssize_t writev(int fd, const struct iovec *iov, int count) {
    pthread_once(&once, resolve);
    size_t length = total(iov, count);
    ssize_t allowed = allowance(fd, length);
    if (allowed < 0) { errno = ENOSPC; return -1; }
    if ((size_t)allowed == length) return next_writev(fd, iov, count);
    /* The short write: the first `allowed` bytes, which lie in the first vectors. */
    ssize_t done = 0;
    for (int i = 0; i < count && done < allowed; i++) {
        size_t take = iov[i].iov_len < (size_t)(allowed - done) ? iov[i].iov_len : (size_t)(allowed - done);
        ssize_t n = next_write(fd, iov[i].iov_base, take);
        if (n < 0) return done ? done : n;
        done += n;
        if ((size_t)n < take) break;
    }
    return done;
}

ssize_t pwritev(int fd, const struct iovec *iov, int count, off_t offset) {
    pthread_once(&once, resolve);
    ssize_t allowed = allowance(fd, total(iov, count));
    if (allowed < 0) { errno = ENOSPC; return -1; }
    if ((size_t)allowed == total(iov, count)) return next_pwritev(fd, iov, count, offset);
    return next_pwrite(fd, iov[0].iov_base, (size_t)allowed < iov[0].iov_len ? (size_t)allowed : iov[0].iov_len, offset);
}

static void no_space(struct statvfs *st) {
    st->f_bfree = 0;
    st->f_bavail = 0;
}

int statvfs(const char *path, struct statvfs *st) {
    pthread_once(&once, resolve);
    int rc = next_statvfs(path, st);
    if (rc == 0 && disk_full()) {
        char *real = realpath(path, NULL);
        char with_slash[4200];
        snprintf(with_slash, sizeof with_slash, "%s/", real ? real : path);
        free(real);
        if (path_under_dir(with_slash)) no_space(st);
    }
    return rc;
}

int statvfs64(const char *path, struct statvfs64 *st) { return statvfs(path, (struct statvfs *)st); } /* same layout on 64-bit */

int fstatvfs(int fd, struct statvfs *st) {
    pthread_once(&once, resolve);
    int rc = next_fstatvfs(fd, st);
    if (rc == 0 && disk_full() && fd_under_dir(fd)) no_space(st);
    return rc;
}

int fstatvfs64(int fd, struct statvfs64 *st) { return fstatvfs(fd, (struct statvfs *)st); }

unsigned long coperando_fault_shim_injected(void) { return atomic_load(&injected); }
