/*
 * LD_PRELOAD shim that answers the modem-line ioctls pseudo-terminals lack. Tests only.
 * See include/coperando_modem_shim.h for the behaviour; Tests/Support/umockdev-harness.py for
 * how it is loaded (LD_PRELOAD=<this .so>:libumockdev-preload.so.0).
 *
 * How it works: ioctl() and close() are interposed. ioctl() calls the next ioctl in the chain
 * (dlsym(RTLD_NEXT): umockdev's preload, then libc). When that fails with ENOTTY for a terminal
 * request (type 'T') on a descriptor that is a terminal (tcgetattr succeeds), the request goes
 * to the kernel directly (umockdev 0.17 refuses every ioctl on an emulated node it has no
 * script for, without asking the kernel). If the kernel refuses TIOCMGET / TIOCMSET / TIOCMBIS /
 * TIOCMBIC too (ptys have no modem lines), the request is answered here, from a bit set kept
 * per descriptor. close() forgets the descriptor's bits. A descriptor number reused without
 * close() (fclose, close_range, dup2 over it) is detected by remembering the file's device and
 * inode, and starts again from the defaults.
 *
 * Thread safety: the real functions are resolved once (pthread_once); the table of
 * descriptors is guarded by one mutex, held only for the table lookup and update, never
 * across a real system call.
 */
#define _GNU_SOURCE
#include "coperando_modem_shim.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

/* Linux values (asm-generic/termios.h); glibc's <sys/ioctl.h> stops at TIOCM_DSR. */
#ifndef TIOCM_OUT1
#define TIOCM_OUT1 0x2000
#endif
#ifndef TIOCM_OUT2
#define TIOCM_OUT2 0x4000
#endif
#ifndef TIOCM_LOOP
#define TIOCM_LOOP 0x8000
#endif

#define SHIM_EXPORT __attribute__((visibility("default")))

typedef int (*ioctl_fn)(int, unsigned long, ...);
typedef int (*close_fn)(int);

static ioctl_fn next_ioctl;
static close_fn next_close;
static pthread_once_t resolve_once = PTHREAD_ONCE_INIT;

/* Output lines the host drives; everything else in the word is an input the device drives. */
static const int output_bits = TIOCM_DTR | TIOCM_RTS | TIOCM_OUT1 | TIOCM_OUT2 | TIOCM_LOOP;
static int default_inputs = TIOCM_CTS | TIOCM_DSR | TIOCM_CAR;
static int debug_enabled;
static int log_fd = -1; /* OPERANDO_MODEM_SHIM_LOG: one line per emulated change of the outputs */
static atomic_ulong emulated_count;

static void parse_inputs(const char *spec) {
    int bits = 0;
    char buffer[128];
    snprintf(buffer, sizeof buffer, "%s", spec);
    char *save = NULL;
    for (char *token = strtok_r(buffer, ", ", &save); token; token = strtok_r(NULL, ", ", &save)) {
        if (!strcasecmp(token, "CTS")) bits |= TIOCM_CTS;
        else if (!strcasecmp(token, "DSR")) bits |= TIOCM_DSR;
        else if (!strcasecmp(token, "CD") || !strcasecmp(token, "CAR") || !strcasecmp(token, "DCD")) bits |= TIOCM_CAR;
        else if (!strcasecmp(token, "RI") || !strcasecmp(token, "RNG")) bits |= TIOCM_RNG;
        else if (!strcasecmp(token, "none")) bits |= 0;
        else dprintf(STDERR_FILENO, "operando-modem-shim: ignoring unknown input line '%s' in OPERANDO_MODEM_SHIM_INPUTS\n", token);
    }
    default_inputs = bits;
}

static void resolve(void) {
    next_ioctl = (ioctl_fn)dlsym(RTLD_NEXT, "ioctl");
    next_close = (close_fn)dlsym(RTLD_NEXT, "close");
    if (!next_ioctl || !next_close) {
        dprintf(STDERR_FILENO, "operando-modem-shim: dlsym(RTLD_NEXT) failed: %s\n", dlerror());
        abort();
    }
    const char *inputs = getenv("OPERANDO_MODEM_SHIM_INPUTS");
    if (inputs) parse_inputs(inputs);
    const char *debug = getenv("OPERANDO_MODEM_SHIM_DEBUG");
    debug_enabled = debug && *debug && strcmp(debug, "0") != 0;
    const char *log = getenv("OPERANDO_MODEM_SHIM_LOG");
    if (log && *log) {
        log_fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (log_fd < 0) dprintf(STDERR_FILENO, "operando-modem-shim: cannot open OPERANDO_MODEM_SHIM_LOG %s: %s\n", log, strerror(errno));
    }
}

/* ---- per-descriptor state --------------------------------------------------------------- */

struct line_state {
    int fd;
    dev_t dev;  /* identity of the open file, to notice a reused descriptor number */
    ino_t ino;
    int bits;
    struct line_state *next;
};

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct line_state *table;
/* Number of entries in the table, so that close() of an unknown descriptor takes no lock.
   Relaxed is enough: a descriptor is only forgotten by the thread that closes it, and that
   thread (or one that synchronised with it) created the entry. */
static atomic_int table_size;

/* A child forked while another thread held the lock must not inherit it locked. */
static void before_fork(void) { pthread_mutex_lock(&table_lock); }
static void after_fork(void) { pthread_mutex_unlock(&table_lock); }
__attribute__((constructor)) static void install_fork_handlers(void) {
    pthread_atfork(before_fork, after_fork, after_fork);
}

/* Applies `op` to the descriptor's bits under the lock. Returns the bits after the change. */
enum op { op_get, op_set, op_bis, op_bic };

static int update_bits(int fd, const struct stat *identity, enum op op, int argument) {
    pthread_mutex_lock(&table_lock);
    struct line_state *entry = table;
    while (entry && entry->fd != fd) entry = entry->next;
    if (entry && (entry->dev != identity->st_dev || entry->ino != identity->st_ino)) {
        entry->dev = identity->st_dev;  /* descriptor number reused for another file */
        entry->ino = identity->st_ino;
        entry->bits = TIOCM_DTR | TIOCM_RTS | default_inputs;
    }
    if (!entry) {
        entry = malloc(sizeof *entry);
        if (!entry) {
            pthread_mutex_unlock(&table_lock);
            return -1;
        }
        entry->fd = fd;
        entry->dev = identity->st_dev;
        entry->ino = identity->st_ino;
        entry->bits = TIOCM_DTR | TIOCM_RTS | default_inputs;
        entry->next = table;
        table = entry;
        atomic_fetch_add_explicit(&table_size, 1, memory_order_relaxed);
    }
    int outputs = argument & output_bits;
    switch (op) {
    case op_get: break;
    case op_set: entry->bits = (entry->bits & ~output_bits) | outputs; break;
    case op_bis: entry->bits |= outputs; break;
    case op_bic: entry->bits &= ~outputs; break;
    }
    int result = entry->bits;
    pthread_mutex_unlock(&table_lock);
    return result;
}

static void forget(int fd) {
    if (atomic_load_explicit(&table_size, memory_order_relaxed) == 0) return;
    pthread_mutex_lock(&table_lock);
    struct line_state **link = &table;
    while (*link && (*link)->fd != fd) link = &(*link)->next;
    struct line_state *entry = *link;
    if (entry) {
        *link = entry->next;
        atomic_fetch_sub_explicit(&table_size, 1, memory_order_relaxed);
    }
    pthread_mutex_unlock(&table_lock);
    free(entry);
}

static const char *request_name(unsigned long request) {
    switch (request) {
    case TIOCMGET: return "TIOCMGET";
    case TIOCMSET: return "TIOCMSET";
    case TIOCMBIS: return "TIOCMBIS";
    case TIOCMBIC: return "TIOCMBIC";
    default: return "?";
    }
}

/* Answers a modem-line request the kernel refused. Returns the ioctl result. */
static int emulate(int fd, unsigned long request, void *argument, int saved_errno) {
    struct stat identity;
    if (fstat(fd, &identity) != 0) return -1;
    int *word = argument;
    if (!word) {
        errno = EFAULT;
        return -1;
    }
    int bits;
    switch (request) {
    case TIOCMGET: bits = update_bits(fd, &identity, op_get, 0); break;
    case TIOCMSET: bits = update_bits(fd, &identity, op_set, *word); break;
    case TIOCMBIS: bits = update_bits(fd, &identity, op_bis, *word); break;
    default: bits = update_bits(fd, &identity, op_bic, *word); break;
    }
    if (bits < 0) {
        errno = ENOMEM;
        return -1;
    }
    if (request == TIOCMGET) *word = bits;
    atomic_fetch_add_explicit(&emulated_count, 1, memory_order_relaxed); /* a counter only */
    if (log_fd >= 0 && request != TIOCMGET) {
        /* When the lines changed, on the clock operandod stamps with: a test compares them. */
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC_RAW, &now);
        char line[128];
        int n = snprintf(line, sizeof line, "%lld %d %s 0x%x 0x%x\n", (long long)now.tv_sec * 1000000000LL + now.tv_nsec, fd,
                         request_name(request), *word, bits);
        if (n > 0) (void)!write(log_fd, line, (size_t)n); /* O_APPEND: one write per line */
    }
    if (debug_enabled)
        dprintf(STDERR_FILENO, "operando-modem-shim: fd %d %s 0x%x -> bits 0x%x\n", fd,
                request_name(request), request == TIOCMGET ? 0 : *word, bits);
    errno = saved_errno;
    return 0;
}

/* Terminal requests: the classic 0x54xx numbers ('T') and the _IOC ones with type 'T'
   (TCGETS2, TCSETS2, ...). Both keep 'T' in bits 8..15. */
static int is_terminal_request(unsigned long request) { return ((request >> 8) & 0xFF) == 'T'; }

static int is_modem_request(unsigned long request) {
    return request == TIOCMGET || request == TIOCMSET || request == TIOCMBIS || request == TIOCMBIC;
}

SHIM_EXPORT int ioctl(int fd, unsigned long request, ...) {
    /* ioctl takes at most one further argument, a pointer or an int; both fit a void*. */
    va_list list;
    va_start(list, request);
    void *argument = va_arg(list, void *);
    va_end(list);

    pthread_once(&resolve_once, resolve);
    int saved_errno = errno;
    int result = next_ioctl(fd, request, argument);
    if (result != -1 || errno != ENOTTY || !is_terminal_request(request)) return result;

    /* Refused with ENOTTY. On an emulated tty that is usually umockdev's default ioctl handler,
       which answers every request it has no script for with ENOTTY without asking the kernel
       (TCGETS2 for non-standard baud rates, TIOCINQ, TIOCOUTQ, TCSBRK, TIOCEXCL...). For
       terminal requests on a terminal, ask the kernel directly. tcgetattr is a direct system
       call in glibc: it does not come back through ioctl(). */
    struct termios ignored;
    if (tcgetattr(fd, &ignored) != 0) {
        errno = ENOTTY; /* not a terminal: the refusal stands */
        return -1;
    }
    errno = saved_errno;
    result = (int)syscall(SYS_ioctl, fd, request, argument);
    if (result == -1 && errno == ENOTTY && is_modem_request(request))
        return emulate(fd, request, argument, saved_errno); /* ptys have no modem lines */
    if (debug_enabled && result == 0)
        dprintf(STDERR_FILENO, "operando-modem-shim: fd %d request 0x%lx passed to the kernel\n", fd, request);
    return result;
}

SHIM_EXPORT int close(int fd) {
    pthread_once(&resolve_once, resolve);
    forget(fd);
    return next_close(fd);
}

SHIM_EXPORT int coperando_modem_shim_version(void) { return 1; }

SHIM_EXPORT unsigned long coperando_modem_shim_emulated_count(void) {
    return atomic_load_explicit(&emulated_count, memory_order_relaxed);
}
