// CRC-32C: hardware instruction where available, slicing-by-8 tables otherwise.
#include "coperando.h"
#include <string.h>

static uint32_t table[8][256];
static int have_hw = -1;

static void init_tables(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : (c >> 1);
        table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
        for (int t = 1; t < 8; t++) table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xff];
    }
}

static int tables_ready = 0;

uint32_t ccrc32c_extend_software(uint32_t crc, const void *data, size_t length) {
    if (!__atomic_load_n(&tables_ready, __ATOMIC_ACQUIRE)) {
        init_tables();
        __atomic_store_n(&tables_ready, 1, __ATOMIC_RELEASE);
    }
    const uint8_t *p = data;
    uint32_t c = ~crc;
    while (length && ((uintptr_t)p & 7)) { c = table[0][(c ^ *p++) & 0xff] ^ (c >> 8); length--; }
    while (length >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= c;
        c = table[7][w & 0xff] ^ table[6][(w >> 8) & 0xff] ^ table[5][(w >> 16) & 0xff] ^
            table[4][(w >> 24) & 0xff] ^ table[3][(w >> 32) & 0xff] ^ table[2][(w >> 40) & 0xff] ^
            table[1][(w >> 48) & 0xff] ^ table[0][w >> 56];
        p += 8; length -= 8;
    }
    while (length--) c = table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    return ~c;
}

#if defined(__x86_64__)
/* Three interleaved streams hide the crc32 instruction's 3-cycle latency. Each stream covers
   STRIDE bytes; the partial CRCs are joined with the linear operator "append STRIDE zero bytes",
   tabulated once (raw CRC update, no inversion: raw(c, A||B) = shift_|B|(raw(c, A)) ^ raw(0, B)). */
#define STRIDE 8192
static uint32_t stride_shift[4][256];
static int stride_ready = 0;

static uint32_t zeros_raw(uint32_t c, size_t n) {
    while (n--) c = table[0][c & 0xff] ^ (c >> 8);
    return c;
}

static void init_stride_shift(void) {
    if (__atomic_load_n(&stride_ready, __ATOMIC_ACQUIRE)) return;
    if (!__atomic_load_n(&tables_ready, __ATOMIC_ACQUIRE)) {
        init_tables();
        __atomic_store_n(&tables_ready, 1, __ATOMIC_RELEASE);
    }
    uint32_t basis[32];
    for (int bit = 0; bit < 32; bit++) basis[bit] = zeros_raw(1u << bit, STRIDE);
    for (int k = 0; k < 4; k++) {
        for (int b = 0; b < 256; b++) {
            uint32_t v = 0;
            for (int bit = 0; bit < 8; bit++) if (b & (1 << bit)) v ^= basis[8 * k + bit];
            stride_shift[k][b] = v;
        }
    }
    __atomic_store_n(&stride_ready, 1, __ATOMIC_RELEASE);
}

static inline uint32_t shift_stride(uint32_t c) {
    return stride_shift[0][c & 0xff] ^ stride_shift[1][(c >> 8) & 0xff] ^
           stride_shift[2][(c >> 16) & 0xff] ^ stride_shift[3][c >> 24];
}

__attribute__((target("sse4.2")))
static uint32_t extend_hw(uint32_t crc, const void *data, size_t length) {
    const uint8_t *p = data;
    uint64_t c = ~crc;
    while (length && ((uintptr_t)p & 7)) { c = __builtin_ia32_crc32qi((uint32_t)c, *p++); length--; }
    if (length >= 3 * STRIDE) {
        init_stride_shift();
        while (length >= 3 * STRIDE) {
            uint64_t c1 = 0, c2 = 0;
            const uint8_t *end = p + STRIDE;
            do {
                uint64_t w0, w1, w2;
                memcpy(&w0, p, 8);
                memcpy(&w1, p + STRIDE, 8);
                memcpy(&w2, p + 2 * STRIDE, 8);
                c = __builtin_ia32_crc32di(c, w0);
                c1 = __builtin_ia32_crc32di(c1, w1);
                c2 = __builtin_ia32_crc32di(c2, w2);
                p += 8;
            } while (p < end);
            c = shift_stride((uint32_t)c) ^ (uint32_t)c1;
            c = shift_stride((uint32_t)c) ^ (uint32_t)c2;
            p += 2 * STRIDE;
            length -= 3 * STRIDE;
        }
    }
    while (length >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
        p += 8; length -= 8;
    }
    while (length--) c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    return ~(uint32_t)c;
}
#endif

int ccrc32c_is_hardware(void) {
    int h = __atomic_load_n(&have_hw, __ATOMIC_RELAXED);
    if (h < 0) {
#if defined(__x86_64__)
        __builtin_cpu_init();
        h = __builtin_cpu_supports("sse4.2") ? 1 : 0;
#else
        h = 0;
#endif
        __atomic_store_n(&have_hw, h, __ATOMIC_RELAXED);
    }
    return h;
}

uint32_t ccrc32c_extend(uint32_t crc, const void *data, size_t length) {
#if defined(__x86_64__)
    if (ccrc32c_is_hardware()) return extend_hw(crc, data, length);
#endif
    return ccrc32c_extend_software(crc, data, length);
}
