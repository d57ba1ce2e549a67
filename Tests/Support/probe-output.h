/* Output helpers shared by the test probes (serialprobe.c, usbprobe.c): JSON strings and hex. */
#ifndef PROBE_OUTPUT_H
#define PROBE_OUTPUT_H

#include <stddef.h>
#include <stdio.h>

/* Prints `text` as a JSON string (NULL as ""). */
static void json_string(const char *text) {
    putchar('"');
    for (const unsigned char *c = (const unsigned char *)(text ? text : ""); *c; c++) {
        if (*c == '"' || *c == '\\') printf("\\%c", *c);
        else if (*c < 0x20 || *c >= 0x7f) printf("\\u%04x", *c);
        else putchar(*c);
    }
    putchar('"');
}

/* Prints `count` bytes as a quoted lowercase hex string. */
static void hex(const unsigned char *bytes, size_t count) {
    putchar('"');
    for (size_t i = 0; i < count; i++) printf("%02x", bytes[i]);
    putchar('"');
}

/* Parses hex digit pairs from `text` into `out`; returns how many bytes. */
static size_t unhex(const char *text, unsigned char *out, size_t capacity) {
    size_t n = 0;
    while (text[0] && text[1] && n < capacity) {
        unsigned value;
        if (sscanf(text, "%2x", &value) != 1) break;
        out[n++] = (unsigned char)value;
        text += 2;
    }
    return n;
}

#endif
