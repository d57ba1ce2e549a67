/*
 * COperandoModemShim: an LD_PRELOAD library for tests only.
 *
 * Pseudo-terminals reject the modem-line ioctls (TIOCMGET, TIOCMSET, TIOCMBIS, TIOCMBIC) with
 * ENOTTY, and libserialport's sp_open / sp_set_config refuse to work without them. Loaded
 * with LD_PRELOAD (before libumockdev-preload.so.0), this library answers those four
 * requests from a per-descriptor bit set whenever they fail with ENOTTY on a terminal.
 *
 * It also undoes a umockdev 0.17 behaviour: on an emulated device node without an ioctl
 * script, umockdev's preload answers EVERY ioctl() with ENOTTY without asking the kernel
 * (TCGETS2/TCSETS2 for non-standard baud rates, TIOCINQ, TIOCOUTQ, TCSBRK, TIOCEXCL...). When a
 * terminal request (ioctl type 'T') fails with ENOTTY on a terminal, the shim retries it as a
 * direct system call, so the pty's real answer comes back.
 *
 * Every other request, and every request on a descriptor that is not a terminal, goes to
 * the next ioctl in the chain (umockdev's preload, then libc) unchanged.
 *
 * Emulated state of a descriptor the shim has not seen before:
 *   outputs DTR and RTS raised (what the tty layer does on open),
 *   inputs CTS, DSR and CD asserted (a device that is present and ready).
 * TIOCMSET / TIOCMBIS / TIOCMBIC change only the output bits (DTR, RTS, OUT1, OUT2, LOOP);
 * the inputs stay as they are. The state is forgotten when the descriptor is closed.
 *
 * The environment variable OPERANDO_MODEM_SHIM_INPUTS, if set when the first modem ioctl is
 * emulated, overrides the asserted inputs: a comma-separated list of CTS, DSR, CD (or CAR),
 * RI (or RNG), or "none". OPERANDO_MODEM_SHIM_DEBUG=1 logs every emulated request to stderr.
 * OPERANDO_MODEM_SHIM_LOG=PATH appends one line per emulated TIOCMSET / TIOCMBIS / TIOCMBIC to
 * PATH: "<CLOCK_MONOTONIC_RAW ns> <fd> <request> 0x<argument> 0x<bits after>", so a test can see
 * when a program changed DTR or RTS.
 *
 * Nothing in this header is needed to use the shim; it exists so that the target has a public
 * header and so that a test can ask a process whether the shim is loaded (look the symbol up
 * with dlsym(RTLD_DEFAULT, "coperando_modem_shim_version")).
 */
#ifndef COPERANDO_MODEM_SHIM_H
#define COPERANDO_MODEM_SHIM_H

#ifdef __cplusplus
extern "C" {
#endif

/// The shim's interface version (currently 1).
int coperando_modem_shim_version(void);

/// How many modem-line requests the shim has answered in this process (for tests).
unsigned long coperando_modem_shim_emulated_count(void);

#ifdef __cplusplus
}
#endif

#endif /* COPERANDO_MODEM_SHIM_H */
