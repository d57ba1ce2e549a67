/*
 * serialprobe: a tiny program under test for Tests/Support/umockdev-harness.py.
 *
 * It drives the real libserialport from commands read on stdin, one per line, and answers
 * each with exactly one line of JSON on stdout: {"ok":true,...} or
 * {"ok":false,"error":"<what failed>: <libserialport message>"}.
 *
 *   list                      every port sp_list_ports reports, with its USB identity
 *   open NAME                 sp_get_port_by_name + sp_open(read/write)
 *   config BAUD               115200-style baud, 8N1, no flow control, DTR and RTS on;
 *                             answers with the configuration read back and the signals
 *   dtr 0|1, rts 0|1          sp_set_dtr / sp_set_rts, answers with the config read back
 *   signals                   sp_get_signals (CTS, DSR, DCD, RI)
 *   write HEX                 sp_blocking_write (1 s timeout) + sp_drain
 *   read COUNT TIMEOUT_MS     sp_blocking_read; answers with the bytes in hex (maybe fewer)
 *   readline TIMEOUT_MS       reads up to '\n' or the timeout; answers with text and hex
 *   wait TIMEOUT_MS           sp_wait for RX_READY|ERROR; answers with the poll events
 *   close                     sp_close + sp_free_port
 *   shim                      whether the modem-line shim is loaded, and its counter
 *   quit                      exit 0
 *
 * Build: cc -o serialprobe serialprobe.c $(pkg-config --cflags --libs libserialport) -ldl
 * Tests only; not part of any SwiftPM target.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <libserialport.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "probe-output.h"

static struct sp_port *port;

static void fail(const char *what) {
    char *message = sp_last_error_message();
    char text[512];
    snprintf(text, sizeof text, "%s: %s (errno %d)", what, message ? message : "?", errno);
    if (message) sp_free_error_message(message);
    printf("{\"ok\":false,\"error\":");
    json_string(text);
    printf("}\n");
}

static void fail_plain(const char *what) {
    printf("{\"ok\":false,\"error\":");
    json_string(what);
    printf("}\n");
}

static void cmd_list(void) {
    struct sp_port **ports;
    if (sp_list_ports(&ports) != SP_OK) return fail("sp_list_ports");
    printf("{\"ok\":true,\"ports\":[");
    for (int i = 0; ports[i]; i++) {
        struct sp_port *p = ports[i];
        enum sp_transport transport = sp_get_port_transport(p);
        printf("%s{\"name\":", i ? "," : "");
        json_string(sp_get_port_name(p));
        printf(",\"description\":");
        json_string(sp_get_port_description(p));
        printf(",\"transport\":\"%s\"", transport == SP_TRANSPORT_USB ? "usb"
               : transport == SP_TRANSPORT_BLUETOOTH ? "bluetooth" : "native");
        if (transport == SP_TRANSPORT_USB) {
            int bus = -1, address = -1, vid = -1, pid = -1;
            sp_get_port_usb_bus_address(p, &bus, &address);
            sp_get_port_usb_vid_pid(p, &vid, &pid);
            printf(",\"bus\":%d,\"address\":%d,\"vid\":\"%04x\",\"pid\":\"%04x\",\"manufacturer\":", bus,
                   address, vid, pid);
            json_string(sp_get_port_usb_manufacturer(p));
            printf(",\"product\":");
            json_string(sp_get_port_usb_product(p));
            printf(",\"serial\":");
            json_string(sp_get_port_usb_serial(p));
        }
        printf("}");
    }
    printf("]}\n");
    sp_free_port_list(ports);
}

static void print_config(void) {
    struct sp_port_config *config;
    if (sp_new_config(&config) != SP_OK) return fail("sp_new_config");
    if (sp_get_config(port, config) != SP_OK) {
        sp_free_config(config);
        return fail("sp_get_config");
    }
    int baud = 0, bits = 0, stop = 0;
    enum sp_parity parity = SP_PARITY_INVALID;
    enum sp_rts rts = SP_RTS_INVALID;
    enum sp_dtr dtr = SP_DTR_INVALID;
    enum sp_xonxoff xon = SP_XONXOFF_INVALID;
    sp_get_config_baudrate(config, &baud);
    sp_get_config_bits(config, &bits);
    sp_get_config_stopbits(config, &stop);
    sp_get_config_parity(config, &parity);
    sp_get_config_rts(config, &rts);
    sp_get_config_dtr(config, &dtr);
    sp_get_config_xon_xoff(config, &xon);
    sp_free_config(config);
    enum sp_signal signals = 0;
    int signals_ok = sp_get_signals(port, &signals) == SP_OK;
    printf("{\"ok\":true,\"baud\":%d,\"bits\":%d,\"stopbits\":%d,\"parity\":\"%s\",\"rts\":%d,\"dtr\":%d,"
           "\"xonxoff\":%d,\"signals_ok\":%s,\"cts\":%d,\"dsr\":%d,\"dcd\":%d,\"ri\":%d}\n",
           baud, bits, stop, parity == SP_PARITY_NONE ? "none" : parity == SP_PARITY_EVEN ? "even"
           : parity == SP_PARITY_ODD ? "odd" : "other", rts == SP_RTS_ON, dtr == SP_DTR_ON, (int)xon,
           signals_ok ? "true" : "false", !!(signals & SP_SIG_CTS), !!(signals & SP_SIG_DSR),
           !!(signals & SP_SIG_DCD), !!(signals & SP_SIG_RI));
}

static void cmd_open(const char *name) {
    if (port) { sp_close(port); sp_free_port(port); port = NULL; }
    if (sp_get_port_by_name(name, &port) != SP_OK) { port = NULL; return fail("sp_get_port_by_name"); }
    if (sp_open(port, SP_MODE_READ_WRITE) != SP_OK) {
        fail("sp_open");
        sp_free_port(port);
        port = NULL;
        return;
    }
    printf("{\"ok\":true}\n");
}

static void cmd_config(int baud) {
    if (!port) return fail_plain("no port open");
    if (sp_set_baudrate(port, baud) != SP_OK) return fail("sp_set_baudrate");
    if (sp_set_bits(port, 8) != SP_OK) return fail("sp_set_bits");
    if (sp_set_parity(port, SP_PARITY_NONE) != SP_OK) return fail("sp_set_parity");
    if (sp_set_stopbits(port, 1) != SP_OK) return fail("sp_set_stopbits");
    if (sp_set_flowcontrol(port, SP_FLOWCONTROL_NONE) != SP_OK) return fail("sp_set_flowcontrol");
    if (sp_set_dtr(port, SP_DTR_ON) != SP_OK) return fail("sp_set_dtr");
    if (sp_set_rts(port, SP_RTS_ON) != SP_OK) return fail("sp_set_rts");
    print_config();
}

static void cmd_line(const char *what, int on) {
    if (!port) return fail_plain("no port open");
    if (!strcmp(what, "dtr") && sp_set_dtr(port, on ? SP_DTR_ON : SP_DTR_OFF) != SP_OK) return fail("sp_set_dtr");
    if (!strcmp(what, "rts") && sp_set_rts(port, on ? SP_RTS_ON : SP_RTS_OFF) != SP_OK) return fail("sp_set_rts");
    print_config();
}

static void cmd_write(const char *text) {
    if (!port) return fail_plain("no port open");
    unsigned char bytes[4096];
    size_t count = unhex(text, bytes, sizeof bytes);
    int written = sp_blocking_write(port, bytes, count, 1000);
    if (written < 0) return fail("sp_blocking_write");
    if (sp_drain(port) != SP_OK) return fail("sp_drain");
    printf("{\"ok\":true,\"written\":%d}\n", written);
}

static void cmd_read(int count, int timeout) {
    if (!port) return fail_plain("no port open");
    unsigned char bytes[4096];
    if (count > (int)sizeof bytes) count = sizeof bytes;
    int got = sp_blocking_read(port, bytes, (size_t)count, (unsigned)timeout);
    if (got < 0) return fail("sp_blocking_read");
    printf("{\"ok\":true,\"count\":%d,\"hex\":", got);
    hex(bytes, (size_t)got);
    printf("}\n");
}

static long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000L + t.tv_nsec / 1000000L;
}

static void cmd_readline(int timeout) {
    if (!port) return fail_plain("no port open");
    unsigned char bytes[4096];
    size_t n = 0;
    long deadline = now_ms() + timeout;
    while (n < sizeof bytes - 1) {
        long left = deadline - now_ms();
        if (left <= 0) break;
        int got = sp_blocking_read(port, bytes + n, 1, (unsigned)left);
        if (got < 0) return fail("sp_blocking_read");
        if (got == 0) break;
        n += (size_t)got;
        if (bytes[n - 1] == '\n') break;
    }
    bytes[n] = 0;
    int complete = n > 0 && bytes[n - 1] == '\n';
    printf("{\"ok\":true,\"complete\":%s,\"text\":", complete ? "true" : "false");
    json_string((const char *)bytes);
    printf(",\"hex\":");
    hex(bytes, n);
    printf("}\n");
}

static void cmd_wait(int timeout) {
    if (!port) return fail_plain("no port open");
    int fd = -1;
    if (sp_get_port_handle(port, &fd) != SP_OK) return fail("sp_get_port_handle");
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r = poll(&p, 1, timeout);
    if (r < 0) return fail_plain("poll failed");
    printf("{\"ok\":true,\"ready\":%s,\"pollin\":%d,\"pollhup\":%d,\"pollerr\":%d}\n", r ? "true" : "false",
           !!(p.revents & POLLIN), !!(p.revents & POLLHUP), !!(p.revents & POLLERR));
}

static void cmd_shim(void) {
    int (*version)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "coperando_modem_shim_version");
    unsigned long (*count)(void) = (unsigned long (*)(void))dlsym(RTLD_DEFAULT, "coperando_modem_shim_emulated_count");
    printf("{\"ok\":true,\"loaded\":%s,\"emulated\":%lu,\"libserialport\":", version ? "true" : "false",
           count ? count() : 0UL);
    json_string(sp_get_lib_version_string());
    printf("}\n");
}

int main(void) {
    char line[16384];
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\r\n")] = 0;
        char command[32] = "", a[16000] = "", b[64] = "";
        if (sscanf(line, "%31s %15999s %63s", command, a, b) < 1) continue;
        if (!strcmp(command, "list")) cmd_list();
        else if (!strcmp(command, "open")) cmd_open(a);
        else if (!strcmp(command, "config")) cmd_config(atoi(a));
        else if (!strcmp(command, "dtr") || !strcmp(command, "rts")) cmd_line(command, atoi(a));
        else if (!strcmp(command, "signals")) { if (port) print_config(); else fail_plain("no port open"); }
        else if (!strcmp(command, "write")) cmd_write(a);
        else if (!strcmp(command, "read")) cmd_read(atoi(a), atoi(b));
        else if (!strcmp(command, "readline")) cmd_readline(atoi(a));
        else if (!strcmp(command, "wait")) cmd_wait(atoi(a));
        else if (!strcmp(command, "close")) {
            if (port) { sp_close(port); sp_free_port(port); port = NULL; }
            printf("{\"ok\":true}\n");
        }
        else if (!strcmp(command, "shim")) cmd_shim();
        else if (!strcmp(command, "quit")) { printf("{\"ok\":true}\n"); return 0; }
        else fail_plain("unknown command");
    }
    return 0;
}
