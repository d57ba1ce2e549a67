/*
 * usbprobe: a tiny libusb program under test for the emulated USB devices of
 * Tests/Support/umockdev-harness.py (--usb-device). It uses the real libusb-1.0 exactly as a
 * driver would: enumeration, open, claim, string descriptors, control transfers, synchronous and
 * asynchronous bulk transfers with several in flight and its own event loop, timeouts
 * (cancellation), hotplug.
 *
 *   usbprobe                    interactive: one command per line on stdin, one JSON line per
 *                               answer on stdout ({"ok":true,...} or {"ok":false,"error":...})
 *   usbprobe COMMAND ARG...     run one command, print its line(s), exit 0 if it succeeded
 *
 * DEV is VID:PID or VID:PID:SERIAL (hex ids); the serial is read from the device with
 * libusb_get_string_descriptor_ascii. Interface 0 is claimed; the first bulk OUT and bulk IN
 * endpoints of the active configuration are used.
 *
 *   list                          every device: bus, address, ids, strings, configuration,
 *                                 interfaces and endpoints (strings are not read from hubs)
 *   control DEV                   descriptors and strings over control transfers, GET_STATUS,
 *                                 GET_CONFIGURATION, and vendor requests (IN and OUT) that a
 *                                 device without vendor requests stalls: LIBUSB_ERROR_PIPE
 *   echo DEV N SIZE [INFLIGHT]    N bulk OUT transfers (SIZE bytes, or MIN-MAX for sizes that
 *                                 vary, first MIN then MAX) with a per-transfer byte pattern,
 *                                 INFLIGHT (default 4) OUT and INFLIGHT IN transfers in flight;
 *                                 every IN transfer must return the next OUT payload byte for byte
 *   write DEV HEX                 one synchronous bulk OUT transfer
 *   read DEV LENGTH TIMEOUT_MS    one synchronous bulk IN transfer of at most LENGTH bytes
 *   reads DEV COUNT LENGTH TIMEOUT_MS
 *                                 COUNT synchronous bulk IN transfers; answers with each one's hex
 *   wait-unplug DEV INFLIGHT TIMEOUT_MS
 *                                 submits INFLIGHT IN transfers, prints {"pending":INFLIGHT},
 *                                 then waits for them to end (unplug the device meanwhile) and
 *                                 reports their statuses, what a later transfer returns, and
 *                                 whether the device is still listed
 *   timeout DEV MS                an async IN transfer with an MS timeout (LIBUSB_TRANSFER_TIMED_OUT
 *                                 against a device that does not answer: libusb discards the URB),
 *                                 a sync one (LIBUSB_ERROR_TIMEOUT) and a cancelled one
 *   bench DEV SECONDS SIZE [INFLIGHT]
 *                                 streams bulk IN transfers of SIZE bytes for SECONDS with INFLIGHT
 *                                 (default 8) in flight: transfers/s, MB/s, this process's CPU
 *   idle DEV SECONDS [INFLIGHT]   IN transfers pending on a silent device for SECONDS: the CPU
 *                                 this process's event loop used and how often it woke up
 *   hotplug-start                 registers arrival/left callbacks if libusb has
 *                                 LIBUSB_CAP_HAS_HOTPLUG
 *   hotplug-wait MS COUNT         handles events until COUNT events arrived or MS passed; answers
 *                                 with the events seen since the last hotplug-wait
 *   quit                          exit 0
 *
 * Build: cc -o usbprobe usbprobe.c $(pkg-config --cflags --libs libusb-1.0)
 * Tests only; not part of any SwiftPM target.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <libusb.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "probe-output.h"

static libusb_context *ctx;

/* ---- output ------------------------------------------------------------------------------- */

static int fail(const char *format, ...) {
    char text[512];
    va_list ap;
    va_start(ap, format);
    vsnprintf(text, sizeof text, format, ap);
    va_end(ap);
    printf("{\"ok\":false,\"error\":");
    json_string(text);
    printf("}\n");
    fflush(stdout);
    return 1;
}

static const char *status_name(enum libusb_transfer_status status) {
    switch (status) {
    case LIBUSB_TRANSFER_COMPLETED: return "COMPLETED";
    case LIBUSB_TRANSFER_ERROR: return "ERROR";
    case LIBUSB_TRANSFER_TIMED_OUT: return "TIMED_OUT";
    case LIBUSB_TRANSFER_CANCELLED: return "CANCELLED";
    case LIBUSB_TRANSFER_STALL: return "STALL";
    case LIBUSB_TRANSFER_NO_DEVICE: return "NO_DEVICE";
    case LIBUSB_TRANSFER_OVERFLOW: return "OVERFLOW";
    }
    return "?";
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6 + usage.ru_stime.tv_sec + usage.ru_stime.tv_usec / 1e6;
}

/* ---- finding and opening a device --------------------------------------------------------- */

struct target {
    unsigned vid, pid;
    char serial[128];
};

static int parse_target(const char *text, struct target *target) {
    memset(target, 0, sizeof *target);
    int consumed = 0;
    if (sscanf(text, "%x:%x%n", &target->vid, &target->pid, &consumed) < 2) return -1;
    if (text[consumed] == ':') snprintf(target->serial, sizeof target->serial, "%s", text + consumed + 1);
    else if (text[consumed]) return -1;
    return 0;
}

struct opened {
    libusb_device_handle *handle;
    libusb_device *device;
    unsigned char ep_out, ep_in;
    int claimed;
};

/* Opens the first matching device, claims interface 0, finds the bulk endpoints. */
static int open_target(const char *text, struct opened *out, char *error, size_t error_size) {
    struct target target;
    memset(out, 0, sizeof *out);
    if (parse_target(text, &target) != 0) {
        snprintf(error, error_size, "bad device %s (VID:PID[:SERIAL])", text);
        return -1;
    }
    libusb_device **list;
    ssize_t count = libusb_get_device_list(ctx, &list);
    if (count < 0) {
        snprintf(error, error_size, "libusb_get_device_list: %s", libusb_error_name((int)count));
        return -1;
    }
    int last_error = 0;
    for (ssize_t i = 0; i < count && !out->handle; i++) {
        struct libusb_device_descriptor desc;
        if (libusb_get_device_descriptor(list[i], &desc) != 0) continue;
        if (desc.idVendor != target.vid || desc.idProduct != target.pid) continue;
        libusb_device_handle *handle;
        int r = libusb_open(list[i], &handle);
        if (r != 0) {
            last_error = r;
            continue;
        }
        if (target.serial[0]) {
            unsigned char serial[128] = {0};
            r = desc.iSerialNumber ? libusb_get_string_descriptor_ascii(handle, desc.iSerialNumber, serial, sizeof serial) : -1;
            if (r < 0 || strcmp((char *)serial, target.serial) != 0) {
                libusb_close(handle);
                continue;
            }
        }
        out->handle = handle;
        out->device = libusb_ref_device(list[i]);
    }
    libusb_free_device_list(list, 1);
    if (!out->handle) {
        snprintf(error, error_size, "no device %s%s%s", text, last_error ? ": " : "", last_error ? libusb_error_name(last_error) : "");
        return -1;
    }
    struct libusb_config_descriptor *config;
    if (libusb_get_active_config_descriptor(out->device, &config) == 0) {
        for (int a = 0; a < config->bNumInterfaces && config->interface[a].num_altsetting; a++) {
            const struct libusb_interface_descriptor *alt = &config->interface[a].altsetting[0];
            for (int e = 0; e < alt->bNumEndpoints; e++) {
                const struct libusb_endpoint_descriptor *ep = &alt->endpoint[e];
                if ((ep->bmAttributes & 3) != LIBUSB_TRANSFER_TYPE_BULK) continue;
                if ((ep->bEndpointAddress & 0x80) && !out->ep_in) out->ep_in = ep->bEndpointAddress;
                if (!(ep->bEndpointAddress & 0x80) && !out->ep_out) out->ep_out = ep->bEndpointAddress;
            }
        }
        libusb_free_config_descriptor(config);
    }
    libusb_set_auto_detach_kernel_driver(out->handle, 1);
    int r = libusb_claim_interface(out->handle, 0);
    if (r != 0) {
        snprintf(error, error_size, "libusb_claim_interface: %s", libusb_error_name(r));
        libusb_close(out->handle);
        libusb_unref_device(out->device);
        return -1;
    }
    out->claimed = 1;
    return 0;
}

static void close_target(struct opened *opened) {
    if (!opened->handle) return;
    if (opened->claimed) libusb_release_interface(opened->handle, 0);
    libusb_close(opened->handle);
    libusb_unref_device(opened->device);
    opened->handle = NULL;
}

/* ---- list --------------------------------------------------------------------------------- */

static const char *transfer_type_name(int attributes) {
    switch (attributes & 3) {
    case 0: return "control";
    case 1: return "isochronous";
    case 2: return "bulk";
    default: return "interrupt";
    }
}

static void print_string(libusb_device_handle *handle, const char *key, int index) {
    unsigned char text[256] = {0};
    int r = index ? libusb_get_string_descriptor_ascii(handle, index, text, sizeof text) : LIBUSB_ERROR_NOT_FOUND;
    printf(",\"%s\":", key);
    if (r >= 0) json_string((char *)text);
    else printf("null");
}

static int cmd_list(void) {
    libusb_device **list;
    ssize_t count = libusb_get_device_list(ctx, &list);
    if (count < 0) return fail("libusb_get_device_list: %s", libusb_error_name((int)count));
    printf("{\"ok\":true,\"devices\":[");
    for (ssize_t i = 0; i < count; i++) {
        struct libusb_device_descriptor desc;
        libusb_get_device_descriptor(list[i], &desc);
        printf("%s{\"bus\":%d,\"address\":%d,\"port\":%d,\"vid\":\"%04x\",\"pid\":\"%04x\",\"class\":%d,\"speed\":%d,"
               "\"usb\":\"%x.%02x\",\"max_packet0\":%d,\"configurations\":%d",
               i ? "," : "", libusb_get_bus_number(list[i]), libusb_get_device_address(list[i]),
               libusb_get_port_number(list[i]), desc.idVendor, desc.idProduct, desc.bDeviceClass,
               libusb_get_device_speed(list[i]), desc.bcdUSB >> 8, desc.bcdUSB & 0xff, desc.bMaxPacketSize0,
               desc.bNumConfigurations);
        if (desc.bDeviceClass != LIBUSB_CLASS_HUB) {
            libusb_device_handle *handle;
            int r = libusb_open(list[i], &handle);
            if (r == 0) {
                print_string(handle, "manufacturer", desc.iManufacturer);
                print_string(handle, "product", desc.iProduct);
                print_string(handle, "serial", desc.iSerialNumber);
                libusb_close(handle);
            } else {
                printf(",\"open_error\":\"%s\"", libusb_error_name(r));
            }
        }
        struct libusb_config_descriptor *config;
        if (libusb_get_active_config_descriptor(list[i], &config) == 0) {
            printf(",\"configuration\":{\"value\":%d,\"attributes\":%d,\"max_power\":%d,\"interfaces\":[",
                   config->bConfigurationValue, config->bmAttributes, config->MaxPower);
            for (int a = 0; a < config->bNumInterfaces; a++) {
                for (int s = 0; s < config->interface[a].num_altsetting; s++) {
                    const struct libusb_interface_descriptor *alt = &config->interface[a].altsetting[s];
                    printf("%s{\"number\":%d,\"alternate\":%d,\"class\":%d,\"subclass\":%d,\"protocol\":%d,\"endpoints\":[",
                           a || s ? "," : "", alt->bInterfaceNumber, alt->bAlternateSetting, alt->bInterfaceClass,
                           alt->bInterfaceSubClass, alt->bInterfaceProtocol);
                    for (int e = 0; e < alt->bNumEndpoints; e++) {
                        const struct libusb_endpoint_descriptor *ep = &alt->endpoint[e];
                        printf("%s{\"address\":\"%02x\",\"type\":\"%s\",\"max_packet\":%d,\"interval\":%d}", e ? "," : "",
                               ep->bEndpointAddress, transfer_type_name(ep->bmAttributes), ep->wMaxPacketSize, ep->bInterval);
                    }
                    printf("]}");
                }
            }
            printf("]}");
            libusb_free_config_descriptor(config);
        }
        printf("}");
    }
    printf("]}\n");
    fflush(stdout);
    libusb_free_device_list(list, 1);
    return 0;
}

/* ---- control ------------------------------------------------------------------------------ */

static int cmd_control(const char *dev) {
    struct opened o;
    char error[256];
    if (open_target(dev, &o, error, sizeof error) != 0) return fail("%s", error);
    struct libusb_device_descriptor cached;
    libusb_get_device_descriptor(o.device, &cached);
    unsigned char buffer[512];

    int device_length = libusb_get_descriptor(o.handle, LIBUSB_DT_DEVICE, 0, buffer, sizeof buffer);
    int device_matches = device_length == 18 && buffer[0] == 18 && buffer[1] == LIBUSB_DT_DEVICE &&
                         (buffer[8] | buffer[9] << 8) == cached.idVendor && (buffer[10] | buffer[11] << 8) == cached.idProduct;
    int config_length = libusb_get_descriptor(o.handle, LIBUSB_DT_CONFIG, 0, buffer, sizeof buffer);
    int config_total = config_length >= 4 ? (buffer[2] | buffer[3] << 8) : -1;

    int lang_length = libusb_get_string_descriptor(o.handle, 0, 0, buffer, sizeof buffer);
    int langid = lang_length >= 4 ? (buffer[2] | buffer[3] << 8) : -1;
    unsigned char raw_serial[256];
    int raw_serial_length = cached.iSerialNumber
        ? libusb_get_string_descriptor(o.handle, cached.iSerialNumber, (uint16_t)langid, raw_serial, sizeof raw_serial)
        : -1;
    int missing_string = libusb_get_string_descriptor_ascii(o.handle, 0x42, buffer, sizeof buffer);

    unsigned char status[2] = {0xff, 0xff};
    int status_r = libusb_control_transfer(o.handle, LIBUSB_ENDPOINT_IN | LIBUSB_REQUEST_TYPE_STANDARD | LIBUSB_RECIPIENT_DEVICE,
                                           LIBUSB_REQUEST_GET_STATUS, 0, 0, status, 2, 1000);
    unsigned char configuration = 0xff;
    int config_r = libusb_control_transfer(o.handle, LIBUSB_ENDPOINT_IN | LIBUSB_REQUEST_TYPE_STANDARD | LIBUSB_RECIPIENT_DEVICE,
                                           LIBUSB_REQUEST_GET_CONFIGURATION, 0, 0, &configuration, 1, 1000);
    int vendor_in = libusb_control_transfer(o.handle, LIBUSB_ENDPOINT_IN | LIBUSB_REQUEST_TYPE_VENDOR | LIBUSB_RECIPIENT_DEVICE,
                                            0x01, 0x1234, 0, buffer, 64, 1000);
    unsigned char payload[4] = {1, 2, 3, 4};
    int vendor_out = libusb_control_transfer(o.handle, LIBUSB_ENDPOINT_OUT | LIBUSB_REQUEST_TYPE_VENDOR | LIBUSB_RECIPIENT_INTERFACE,
                                             0x02, 0, 0, payload, sizeof payload, 1000);
    int after_stall = libusb_get_string_descriptor(o.handle, 0, 0, buffer, sizeof buffer);

    printf("{\"ok\":true,\"device_descriptor_length\":%d,\"device_descriptor_matches\":%s,"
           "\"config_length\":%d,\"config_total_length\":%d,\"langid\":\"%04x\"",
           device_length, device_matches ? "true" : "false", config_length, config_total, langid & 0xffff);
    print_string(o.handle, "manufacturer", cached.iManufacturer);
    print_string(o.handle, "product", cached.iProduct);
    print_string(o.handle, "serial", cached.iSerialNumber);
    printf(",\"serial_utf16\":");
    if (raw_serial_length >= 2) hex(raw_serial, (size_t)raw_serial_length);
    else printf("null");
    printf(",\"missing_string\":\"%s\",\"get_status\":%d,\"status\":\"%02x%02x\",\"get_configuration\":%d,\"configuration\":%d,"
           "\"vendor_in\":\"%s\",\"vendor_out\":\"%s\",\"after_stall\":%d}\n",
           missing_string < 0 ? libusb_error_name(missing_string) : "found", status_r, status[0], status[1], config_r,
           configuration, vendor_in < 0 ? libusb_error_name(vendor_in) : "accepted",
           vendor_out < 0 ? libusb_error_name(vendor_out) : "accepted", after_stall);
    fflush(stdout);
    close_target(&o);
    return 0;
}

/* ---- echo --------------------------------------------------------------------------------- */

static unsigned char pattern(int transfer, int index) {
    return (unsigned char)(transfer * 131 + index * 7 + (index >> 8) * 3 + 1);
}

struct echo {
    int n, min, max, done_out, next_out, out_in_flight, received, in_in_flight, mismatches, errors, stop;
    long long bytes;
    int first_bad;
    char error[160];
};

static int echo_size(const struct echo *e, int j) {
    if (e->min == e->max || j == 0) return e->min;
    if (j == 1) return e->max;
    unsigned x = (unsigned)j * 2654435761u;
    x ^= x >> 13;
    return e->min + (int)(x % (unsigned)(e->max - e->min + 1));
}

static void echo_submit_out(struct echo *e, struct libusb_transfer *t) {
    int size = echo_size(e, e->next_out);
    for (int i = 0; i < size; i++) t->buffer[i] = pattern(e->next_out, i);
    t->length = size;
    t->user_data = e;
    if (libusb_submit_transfer(t) == 0) {
        e->next_out++;
        e->out_in_flight++;
    } else {
        e->errors++;
        e->stop = 1;
        snprintf(e->error, sizeof e->error, "OUT submit failed");
    }
}

static void LIBUSB_CALL echo_out_done(struct libusb_transfer *t) {
    struct echo *e = t->user_data;
    e->out_in_flight--;
    if (t->status != LIBUSB_TRANSFER_COMPLETED || t->actual_length != t->length) {
        if (!e->errors) snprintf(e->error, sizeof e->error, "OUT transfer %s, %d of %d bytes", status_name(t->status), t->actual_length, t->length);
        e->errors++;
        e->stop = 1;
        return;
    }
    e->done_out++;
    if (!e->stop && e->next_out < e->n) echo_submit_out(e, t);
}

static void LIBUSB_CALL echo_in_done(struct libusb_transfer *t) {
    struct echo *e = t->user_data;
    e->in_in_flight--;
    if (t->status == LIBUSB_TRANSFER_CANCELLED) return;
    if (t->status != LIBUSB_TRANSFER_COMPLETED) {
        if (!e->errors) snprintf(e->error, sizeof e->error, "IN transfer %d: %s", e->received, status_name(t->status));
        e->errors++;
        e->stop = 1;
        return;
    }
    int j = e->received++;
    int size = echo_size(e, j);
    int bad = t->actual_length != size;
    for (int i = 0; !bad && i < size; i++) bad = t->buffer[i] != pattern(j, i);
    if (bad) {
        if (!e->mismatches) e->first_bad = j;
        e->mismatches++;
    }
    e->bytes += t->actual_length;
    if (!e->stop && e->received + e->in_in_flight < e->n) {
        if (libusb_submit_transfer(t) == 0) e->in_in_flight++;
        else {
            e->errors++;
            e->stop = 1;
        }
    }
}

static int cmd_echo(const char *dev, int n, const char *size_text, int inflight) {
    struct echo e;
    memset(&e, 0, sizeof e);
    e.n = n;
    e.first_bad = -1;
    if (sscanf(size_text, "%d-%d", &e.min, &e.max) == 1) e.max = e.min;
    if (n <= 0 || e.min < 0 || e.max < e.min || inflight <= 0 || inflight > 64) return fail("bad echo arguments");
    struct opened o;
    char error[256];
    if (open_target(dev, &o, error, sizeof error) != 0) return fail("%s", error);
    if (!o.ep_in || !o.ep_out) {
        close_target(&o);
        return fail("no bulk IN/OUT endpoints");
    }
    int capacity = e.max > 0 ? e.max : 1;
    struct libusb_transfer *ins[64], *outs[64];
    for (int k = 0; k < inflight; k++) {
        ins[k] = libusb_alloc_transfer(0);
        outs[k] = libusb_alloc_transfer(0);
        libusb_fill_bulk_transfer(ins[k], o.handle, o.ep_in, malloc(capacity), capacity, echo_in_done, &e, 0);
        libusb_fill_bulk_transfer(outs[k], o.handle, o.ep_out, malloc(capacity), capacity, echo_out_done, &e, 0);
    }
    double start = now();
    for (int k = 0; k < inflight && k < n; k++) {
        if (libusb_submit_transfer(ins[k]) == 0) e.in_in_flight++;
    }
    for (int k = 0; k < inflight && e.next_out < n; k++) echo_submit_out(&e, outs[k]);
    while (!e.stop && e.received < n && now() - start < 60) {
        struct timeval tv = {0, 200000};
        libusb_handle_events_timeout_completed(ctx, &tv, NULL);
    }
    double seconds = now() - start;
    for (int k = 0; k < inflight; k++) {
        libusb_cancel_transfer(ins[k]);
        libusb_cancel_transfer(outs[k]);
    }
    double drain = now();
    while ((e.in_in_flight > 0 || e.out_in_flight > 0) && now() - drain < 5) {
        struct timeval tv = {0, 100000};
        libusb_handle_events_timeout_completed(ctx, &tv, NULL);
    }
    if (e.received < n && !e.errors) snprintf(e.error, sizeof e.error, "timed out after %d of %d transfers", e.received, n);
    printf("{\"ok\":%s,\"transfers\":%d,\"sent\":%d,\"bytes\":%lld,\"mismatches\":%d,\"first_mismatch\":%d,\"seconds\":%.3f,"
           "\"inflight\":%d,\"min\":%d,\"max\":%d,\"left_in_flight\":%d",
           e.received == n && !e.errors && !e.mismatches ? "true" : "false", e.received, e.done_out, e.bytes, e.mismatches,
           e.first_bad, seconds, inflight, e.min, e.max, e.in_in_flight + e.out_in_flight);
    if (e.error[0]) {
        printf(",\"error\":");
        json_string(e.error);
    } else if (e.mismatches) {
        printf(",\"error\":\"%d transfers came back different\"", e.mismatches);
    }
    printf("}\n");
    fflush(stdout);
    int stuck = e.in_in_flight + e.out_in_flight;
    for (int k = 0; k < inflight && !stuck; k++) {
        free(ins[k]->buffer);
        free(outs[k]->buffer);
        libusb_free_transfer(ins[k]);
        libusb_free_transfer(outs[k]);
    }
    close_target(&o);
    return e.received == n && !e.errors && !e.mismatches ? 0 : 1;
}

/* ---- simple sync transfers ---------------------------------------------------------------- */

static int cmd_write(const char *dev, const char *hex_text) {
    unsigned char data[65536];
    int length = (int)unhex(hex_text, data, sizeof data);
    struct opened o;
    char error[256];
    if (open_target(dev, &o, error, sizeof error) != 0) return fail("%s", error);
    int sent = 0;
    int r = libusb_bulk_transfer(o.handle, o.ep_out, data, length, &sent, 2000);
    close_target(&o);
    if (r != 0) return fail("libusb_bulk_transfer OUT: %s", libusb_error_name(r));
    printf("{\"ok\":true,\"count\":%d}\n", sent);
    fflush(stdout);
    return 0;
}

static int cmd_reads(const char *dev, int count, int length, int timeout) {
    if (length <= 0 || length > (1 << 20) || count <= 0) return fail("bad read arguments");
    struct opened o;
    char error[256];
    if (open_target(dev, &o, error, sizeof error) != 0) return fail("%s", error);
    unsigned char *data = malloc(length);
    printf("{\"ok\":true,\"transfers\":[");
    int result = 0;
    for (int i = 0; i < count; i++) {
        int got = 0;
        int r = libusb_bulk_transfer(o.handle, o.ep_in, data, length, &got, timeout);
        printf("%s{\"result\":\"%s\",\"count\":%d,\"hex\":", i ? "," : "", r ? libusb_error_name(r) : "OK", got);
        hex(data, (size_t)got);
        printf("}");
        if (r) result = 1;
    }
    printf("]}\n");
    fflush(stdout);
    free(data);
    close_target(&o);
    return result;
}

static int cmd_read(const char *dev, int length, int timeout) {
    if (length <= 0 || length > (1 << 20)) return fail("bad length");
    struct opened o;
    char error[256];
    if (open_target(dev, &o, error, sizeof error) != 0) return fail("%s", error);
    unsigned char *data = malloc(length);
    int got = 0;
    int r = libusb_bulk_transfer(o.handle, o.ep_in, data, length, &got, timeout);
    close_target(&o);
    if (r != 0 && !(r == LIBUSB_ERROR_TIMEOUT && got)) {
        free(data);
        return fail("libusb_bulk_transfer IN: %s", libusb_error_name(r));
    }
    printf("{\"ok\":true,\"count\":%d,\"hex\":", got);
    hex(data, (size_t)got);
    printf("}\n");
    fflush(stdout);
    free(data);
    return 0;
}

/* ---- async helpers ------------------------------------------------------------------------ */

struct pending {
    int done;
    enum libusb_transfer_status status;
    int actual;
    double when;
};

static void LIBUSB_CALL pending_done(struct libusb_transfer *t) {
    struct pending *p = t->user_data;
    p->done = 1;
    p->status = t->status;
    p->actual = t->actual_length;
    p->when = now();
}

static int still_listed(unsigned vid, unsigned pid, int bus, int address) {
    libusb_device **list;
    ssize_t count = libusb_get_device_list(ctx, &list);
    int found = 0;
    for (ssize_t i = 0; i < count; i++) {
        struct libusb_device_descriptor desc;
        libusb_get_device_descriptor(list[i], &desc);
        if (desc.idVendor == vid && desc.idProduct == pid && libusb_get_bus_number(list[i]) == bus &&
            libusb_get_device_address(list[i]) == address)
            found = 1;
    }
    if (count >= 0) libusb_free_device_list(list, 1);
    return found;
}

/* ---- wait-unplug -------------------------------------------------------------------------- */

static int cmd_wait_unplug(const char *dev, int inflight, int timeout_ms) {
    if (inflight <= 0 || inflight > 64) return fail("bad INFLIGHT");
    struct opened o;
    char error[256];
    if (open_target(dev, &o, error, sizeof error) != 0) return fail("%s", error);
    struct libusb_device_descriptor desc;
    libusb_get_device_descriptor(o.device, &desc);
    int bus = libusb_get_bus_number(o.device), address = libusb_get_device_address(o.device);
    struct libusb_transfer *transfers[64];
    struct pending pending[64];
    memset(pending, 0, sizeof pending);
    int submitted = 0;
    for (int k = 0; k < inflight; k++) {
        transfers[k] = libusb_alloc_transfer(0);
        libusb_fill_bulk_transfer(transfers[k], o.handle, o.ep_in, malloc(512), 512, pending_done, &pending[k], 0);
        if (libusb_submit_transfer(transfers[k]) == 0) submitted++;
        else pending[k].done = 2;
    }
    printf("{\"ok\":true,\"pending\":%d,\"bus\":%d,\"address\":%d}\n", submitted, bus, address);
    fflush(stdout);
    double start = now();
    int done = 0;
    while (now() - start < timeout_ms / 1000.0) {
        done = 0;
        for (int k = 0; k < inflight; k++) done += pending[k].done == 1;
        if (done == submitted) break;
        struct timeval tv = {0, 50000};
        libusb_handle_events_timeout_completed(ctx, &tv, NULL);
    }
    double ended = now();
    unsigned char byte = 0;
    int sent = 0;
    int after_write = libusb_bulk_transfer(o.handle, o.ep_out, &byte, 1, &sent, 1000);
    unsigned char buffer[64];
    int after_control = libusb_get_string_descriptor(o.handle, 0, 0, buffer, sizeof buffer);
    int listed = 1;
    double list_start = now();
    while (listed && now() - list_start < 3) {
        listed = still_listed(desc.idVendor, desc.idProduct, bus, address);
        if (listed) {
            struct timeval tv = {0, 50000};
            libusb_handle_events_timeout_completed(ctx, &tv, NULL);
        }
    }
    printf("{\"ok\":%s,\"completed\":%d,\"statuses\":[", done == submitted ? "true" : "false", done);
    for (int k = 0; k < inflight; k++)
        printf("%s\"%s\"", k ? "," : "", pending[k].done == 1 ? status_name(pending[k].status) : "PENDING");
    printf("],\"after_write\":\"%s\",\"after_control\":\"%s\",\"listed\":%s,\"seconds\":%.3f}\n",
           libusb_error_name(after_write), after_control < 0 ? libusb_error_name(after_control) : "OK",
           listed ? "true" : "false", ended - start);
    fflush(stdout);
    int all_done = done == submitted;
    for (int k = 0; k < inflight && all_done; k++) {
        free(transfers[k]->buffer);
        libusb_free_transfer(transfers[k]);
    }
    close_target(&o);
    return all_done ? 0 : 1;
}

/* ---- timeout ------------------------------------------------------------------------------ */

static int cmd_timeout(const char *dev, int ms) {
    struct opened o;
    char error[256];
    if (open_target(dev, &o, error, sizeof error) != 0) return fail("%s", error);
    unsigned char *buffer = malloc(512), *buffer2 = malloc(512);
    struct pending timed = {0}, cancelled = {0};
    struct libusb_transfer *t = libusb_alloc_transfer(0), *c = libusb_alloc_transfer(0);
    libusb_fill_bulk_transfer(t, o.handle, o.ep_in, buffer, 512, pending_done, &timed, (unsigned)ms);
    libusb_fill_bulk_transfer(c, o.handle, o.ep_in, buffer2, 512, pending_done, &cancelled, 0);
    double start = now();
    int r = libusb_submit_transfer(t);
    if (r != 0) {
        close_target(&o);
        return fail("submit: %s", libusb_error_name(r));
    }
    while (!timed.done && now() - start < ms / 1000.0 + 5) {
        struct timeval tv = {0, 50000};
        libusb_handle_events_timeout_completed(ctx, &tv, &timed.done);
    }
    double elapsed = (timed.when ? timed.when : now()) - start;

    double sync_start = now();
    int got = 0;
    int sync = libusb_bulk_transfer(o.handle, o.ep_in, buffer, 512, &got, (unsigned)ms);
    double sync_elapsed = now() - sync_start;

    r = libusb_submit_transfer(c);
    int cancel = r == 0 ? libusb_cancel_transfer(c) : r;
    double cancel_start = now();
    while (r == 0 && !cancelled.done && now() - cancel_start < 5) {
        struct timeval tv = {0, 50000};
        libusb_handle_events_timeout_completed(ctx, &tv, &cancelled.done);
    }
    printf("{\"ok\":%s,\"status\":\"%s\",\"elapsed_ms\":%.0f,\"sync\":\"%s\",\"sync_elapsed_ms\":%.0f,"
           "\"cancel\":\"%s\",\"cancelled\":\"%s\",\"cancel_ms\":%.0f}\n",
           timed.done && cancelled.done ? "true" : "false", timed.done ? status_name(timed.status) : "PENDING",
           elapsed * 1000, sync ? libusb_error_name(sync) : "OK", sync_elapsed * 1000, cancel ? libusb_error_name(cancel) : "OK",
           cancelled.done ? status_name(cancelled.status) : "PENDING", ((cancelled.when ? cancelled.when : now()) - cancel_start) * 1000);
    fflush(stdout);
    if (timed.done && cancelled.done) {
        libusb_free_transfer(t);
        libusb_free_transfer(c);
        free(buffer);
        free(buffer2);
    }
    close_target(&o);
    return 0;
}

/* ---- bench and idle ----------------------------------------------------------------------- */

struct stream {
    long long transfers, bytes, short_transfers, failures;
    int in_flight, stop, size;
    enum libusb_transfer_status last_failure;
};

static void LIBUSB_CALL stream_done(struct libusb_transfer *t) {
    struct stream *s = t->user_data;
    s->in_flight--;
    if (t->status == LIBUSB_TRANSFER_COMPLETED) {
        s->transfers++;
        s->bytes += t->actual_length;
        if (t->actual_length < s->size) s->short_transfers++;
    } else if (t->status != LIBUSB_TRANSFER_CANCELLED) {
        s->failures++;
        s->last_failure = t->status;
        if (t->status == LIBUSB_TRANSFER_NO_DEVICE) s->stop = 1;
    }
    if (!s->stop && libusb_submit_transfer(t) == 0) s->in_flight++;
}

static int run_stream(const char *dev, double seconds, int size, int inflight, int report_idle) {
    if (seconds <= 0 || size <= 0 || inflight <= 0 || inflight > 64) return fail("bad arguments");
    struct opened o;
    char error[256];
    if (open_target(dev, &o, error, sizeof error) != 0) return fail("%s", error);
    struct stream s;
    memset(&s, 0, sizeof s);
    s.size = size;
    struct libusb_transfer *transfers[64];
    for (int k = 0; k < inflight; k++) {
        transfers[k] = libusb_alloc_transfer(0);
        libusb_fill_bulk_transfer(transfers[k], o.handle, o.ep_in, malloc(size), size, stream_done, &s, 0);
        if (libusb_submit_transfer(transfers[k]) == 0) s.in_flight++;
    }
    double cpu_start = cpu_seconds(), start = now();
    long long wakeups = 0;
    while (now() - start < seconds && !s.stop) {
        struct timeval tv = {0, 100000};
        libusb_handle_events_timeout_completed(ctx, &tv, NULL);
        wakeups++;
    }
    double elapsed = now() - start, cpu = cpu_seconds() - cpu_start;
    s.stop = 1;
    for (int k = 0; k < inflight; k++) libusb_cancel_transfer(transfers[k]);
    double drain = now();
    while (s.in_flight > 0 && now() - drain < 5) {
        struct timeval tv = {0, 100000};
        libusb_handle_events_timeout_completed(ctx, &tv, NULL);
    }
    printf("{\"ok\":true,\"seconds\":%.3f,\"size\":%d,\"inflight\":%d,\"transfers\":%lld,\"bytes\":%lld,"
           "\"transfers_per_s\":%.1f,\"mb_per_s\":%.2f,\"short\":%lld,\"failures\":%lld,\"last_failure\":\"%s\","
           "\"cpu_ms\":%.1f,\"cpu_percent\":%.1f,\"wakeups\":%lld,\"left_in_flight\":%d,\"mode\":\"%s\"}\n",
           elapsed, size, inflight, s.transfers, s.bytes, s.transfers / elapsed, s.bytes / elapsed / 1e6, s.short_transfers,
           s.failures, s.failures ? status_name(s.last_failure) : "-", cpu * 1000, 100 * cpu / elapsed, wakeups,
           s.in_flight, report_idle ? "idle" : "bench");
    fflush(stdout);
    for (int k = 0; k < inflight && s.in_flight == 0; k++) {
        free(transfers[k]->buffer);
        libusb_free_transfer(transfers[k]);
    }
    close_target(&o);
    return 0;
}

/* ---- hotplug ------------------------------------------------------------------------------ */

#define MAX_EVENTS 64
static struct {
    int arrived;
    unsigned vid, pid;
    int bus, address;
} events[MAX_EVENTS];
static int event_count;
static int hotplug_registered;

static int LIBUSB_CALL hotplug_event(libusb_context *context, libusb_device *device, libusb_hotplug_event event, void *data) {
    (void)context;
    (void)data;
    if (event_count < MAX_EVENTS) {
        struct libusb_device_descriptor desc;
        libusb_get_device_descriptor(device, &desc);
        events[event_count].arrived = event == LIBUSB_HOTPLUG_EVENT_DEVICE_ARRIVED;
        events[event_count].vid = desc.idVendor;
        events[event_count].pid = desc.idProduct;
        events[event_count].bus = libusb_get_bus_number(device);
        events[event_count].address = libusb_get_device_address(device);
        event_count++;
    }
    return 0;
}

static int cmd_hotplug_start(void) {
    int has = libusb_has_capability(LIBUSB_CAP_HAS_HOTPLUG);
    int r = 0;
    if (has && !hotplug_registered) {
        r = libusb_hotplug_register_callback(ctx, LIBUSB_HOTPLUG_EVENT_DEVICE_ARRIVED | LIBUSB_HOTPLUG_EVENT_DEVICE_LEFT, 0,
                                             LIBUSB_HOTPLUG_MATCH_ANY, LIBUSB_HOTPLUG_MATCH_ANY, LIBUSB_HOTPLUG_MATCH_ANY,
                                             hotplug_event, NULL, NULL);
        hotplug_registered = r == 0;
    }
    printf("{\"ok\":%s,\"has_hotplug\":%s,\"registered\":%s}\n", r == 0 ? "true" : "false", has ? "true" : "false",
           hotplug_registered ? "true" : "false");
    fflush(stdout);
    return r == 0 ? 0 : 1;
}

static int cmd_hotplug_wait(int ms, int count) {
    double start = now();
    while (event_count < count && now() - start < ms / 1000.0) {
        struct timeval tv = {0, 50000};
        libusb_handle_events_timeout_completed(ctx, &tv, NULL);
    }
    printf("{\"ok\":true,\"waited_ms\":%.0f,\"events\":[", (now() - start) * 1000);
    for (int i = 0; i < event_count; i++)
        printf("%s{\"event\":\"%s\",\"vid\":\"%04x\",\"pid\":\"%04x\",\"bus\":%d,\"address\":%d}", i ? "," : "",
               events[i].arrived ? "arrived" : "left", events[i].vid, events[i].pid, events[i].bus, events[i].address);
    printf("]}\n");
    fflush(stdout);
    event_count = 0;
    return 0;
}

/* ---- commands ----------------------------------------------------------------------------- */

static int run(int argc, char **argv) {
    const char *c = argv[0];
#define NEED(n)                                                                   \
    do {                                                                          \
        if (argc < (n) + 1) return fail("%s needs %d argument(s)", c, (n));       \
    } while (0)
    if (!strcmp(c, "list")) return cmd_list();
    if (!strcmp(c, "control")) { NEED(1); return cmd_control(argv[1]); }
    if (!strcmp(c, "echo")) { NEED(3); return cmd_echo(argv[1], atoi(argv[2]), argv[3], argc > 4 ? atoi(argv[4]) : 4); }
    if (!strcmp(c, "write")) { NEED(2); return cmd_write(argv[1], argv[2]); }
    if (!strcmp(c, "read")) { NEED(3); return cmd_read(argv[1], atoi(argv[2]), atoi(argv[3])); }
    if (!strcmp(c, "reads")) { NEED(4); return cmd_reads(argv[1], atoi(argv[2]), atoi(argv[3]), atoi(argv[4])); }
    if (!strcmp(c, "wait-unplug")) { NEED(3); return cmd_wait_unplug(argv[1], atoi(argv[2]), atoi(argv[3])); }
    if (!strcmp(c, "timeout")) { NEED(2); return cmd_timeout(argv[1], atoi(argv[2])); }
    if (!strcmp(c, "bench")) { NEED(3); return run_stream(argv[1], atof(argv[2]), atoi(argv[3]), argc > 4 ? atoi(argv[4]) : 8, 0); }
    if (!strcmp(c, "idle")) { NEED(2); return run_stream(argv[1], atof(argv[2]), 512, argc > 3 ? atoi(argv[3]) : 4, 1); }
    if (!strcmp(c, "hotplug-start")) return cmd_hotplug_start();
    if (!strcmp(c, "hotplug-wait")) { NEED(2); return cmd_hotplug_wait(atoi(argv[1]), atoi(argv[2])); }
    return fail("unknown command %s", c);
#undef NEED
}

int main(int argc, char **argv) {
    int r = libusb_init(&ctx);
    if (r != 0) return fail("libusb_init: %s", libusb_error_name(r));
    if (argc > 1) {
        r = run(argc - 1, argv + 1);
        libusb_exit(ctx);
        return r;
    }
    char line[1 << 17];
    while (fgets(line, sizeof line, stdin)) {
        char *words[16];
        int count = 0;
        for (char *word = strtok(line, " \t\r\n"); word && count < 16; word = strtok(NULL, " \t\r\n")) words[count++] = word;
        if (!count) continue;
        if (!strcmp(words[0], "quit")) break;
        run(count, words);
    }
    libusb_exit(ctx);
    return 0;
}
