"""Two hashes in plain C and the shard pick on one, shared by the compiled twins
(operators/_order.pyx, _sort.pyx).

Each is the twin of a Python call per record: hashlib's BLAKE2b object costs ~0.3 us to make,
and `zlib.crc32(key.encode())` is two calls and a bytes object. The C is written out here,
not linked from a library, so that the build needs nothing beyond a C compiler; being
`static`, each module that cimports this file gets its own copy. Each module calls
`atp_crc_init()` once at import. tests/test_order_compiled.py and tests/test_sort_compiled.py
compare both with hashlib and zlib.
"""

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    static const uint64_t atp_b2_iv[8] = {
        0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
        0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL};
    static const unsigned char atp_b2_sigma[12][16] = {
        { 0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14, 15},
        {14, 10,  4,  8,  9, 15, 13,  6,  1, 12,  0,  2, 11,  7,  5,  3},
        {11,  8, 12,  0,  5,  2, 15, 13, 10, 14,  3,  6,  7,  1,  9,  4},
        { 7,  9,  3,  1, 13, 12, 11, 14,  2,  6,  5, 10,  4,  0, 15,  8},
        { 9,  0,  5,  7,  2,  4, 10, 15, 14,  1, 11, 12,  6,  8,  3, 13},
        { 2, 12,  6, 10,  0, 11,  8,  3,  4, 13,  7,  5, 15, 14,  1,  9},
        {12,  5,  1, 15, 14, 13,  4, 10,  0,  7,  6,  3,  9,  2,  8, 11},
        {13, 11,  7, 14, 12,  1,  3,  9,  5,  0, 15,  4,  8,  6,  2, 10},
        { 6, 15, 14,  9, 11,  3,  0,  8, 12,  2, 13,  7,  1,  4, 10,  5},
        {10,  2,  8,  4,  7,  6,  1,  5, 15, 11,  9, 14,  3, 12, 13,  0},
        { 0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14, 15},
        {14, 10,  4,  8,  9, 15, 13,  6,  1, 12,  0,  2, 11,  7,  5,  3}};

    #define ATP_ROTR64(x, n) (((x) >> (n)) | ((x) << (64 - (n))))
    #define ATP_G(a, b, c, d, x, y) do {                    \
            a = a + b + (x); d = ATP_ROTR64(d ^ a, 32);     \
            c = c + d;       b = ATP_ROTR64(b ^ c, 24);     \
            a = a + b + (y); d = ATP_ROTR64(d ^ a, 16);     \
            c = c + d;       b = ATP_ROTR64(b ^ c, 63);     \
        } while (0)

    /* One BLAKE2b compression (RFC 7693, section 3.2); t: bytes hashed so far. */
    static void atp_b2_compress(uint64_t h[8], const unsigned char *block, uint64_t t, int last) {
        uint64_t m[16], v[16];
        int i, r;
        for (i = 0; i < 16; i++) {
            const unsigned char *p = block + 8 * i;
            m[i] = (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24
                 | (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48
                 | (uint64_t)p[7] << 56;
        }
        for (i = 0; i < 8; i++) {
            v[i] = h[i];
            v[i + 8] = atp_b2_iv[i];
        }
        v[12] ^= t;  /* the counter's high word stays 0: inputs are far below 2^64 bytes */
        if (last) v[14] = ~v[14];
        for (r = 0; r < 12; r++) {
            const unsigned char *s = atp_b2_sigma[r];
            ATP_G(v[0], v[4], v[8], v[12], m[s[0]], m[s[1]]);
            ATP_G(v[1], v[5], v[9], v[13], m[s[2]], m[s[3]]);
            ATP_G(v[2], v[6], v[10], v[14], m[s[4]], m[s[5]]);
            ATP_G(v[3], v[7], v[11], v[15], m[s[6]], m[s[7]]);
            ATP_G(v[0], v[5], v[10], v[15], m[s[8]], m[s[9]]);
            ATP_G(v[1], v[6], v[11], v[12], m[s[10]], m[s[11]]);
            ATP_G(v[2], v[7], v[8], v[13], m[s[12]], m[s[13]]);
            ATP_G(v[3], v[4], v[9], v[14], m[s[14]], m[s[15]]);
        }
        for (i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
    }

    /* hashlib.blake2b(data, digest_size=size).digest() for size 1..64: unkeyed, sequential */
    static void atp_blake2b(const unsigned char *in, size_t n, unsigned char *out, int size) {
        uint64_t h[8];
        unsigned char last[128];
        uint64_t t = 0;
        int i;
        for (i = 0; i < 8; i++) h[i] = atp_b2_iv[i];
        h[0] ^= 0x01010000ULL ^ (uint64_t)size;  /* depth 1, fanout 1, no key, the digest size */
        while (n > 128) {
            t += 128;
            atp_b2_compress(h, in, t, 0);
            in += 128;
            n -= 128;
        }
        memset(last, 0, sizeof last);
        memcpy(last, in, n);
        atp_b2_compress(h, last, t + n, 1);
        for (i = 0; i < size; i++) out[i] = (unsigned char)(h[i / 8] >> (8 * (i % 8)));
    }

    static uint32_t atp_crc_table[256];

    static void atp_crc_init(void) {
        uint32_t i, c;
        int k;
        for (i = 0; i < 256; i++) {
            for (c = i, k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320U ^ (c >> 1) : c >> 1;
            atp_crc_table[i] = c;
        }
    }

    /* zlib.crc32(data) */
    static uint32_t atp_crc32(const unsigned char *p, size_t n) {
        uint32_t c = 0xFFFFFFFFU;
        while (n--) c = atp_crc_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
        return c ^ 0xFFFFFFFFU;
    }
    """
    void atp_blake2b(const unsigned char* data, size_t n, unsigned char* out, int size)
    void atp_crc_init()
    unsigned int atp_crc32(const unsigned char* data, size_t n)

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL
    char* PyBytes_AS_STRING(object o)
    Py_ssize_t PyBytes_GET_SIZE(object o)


cdef inline object atp_shard(str key, list names):
    """`operators.steps.shard_of(key)`: `names[zlib.crc32(key.encode()) % len(names)]`."""
    cdef Py_ssize_t n
    cdef const char* p
    cdef bytes utf8
    if PyUnicode_IS_ASCII(key):
        p = PyUnicode_AsUTF8AndSize(key, &n)  # the str's own buffer: ASCII is UTF-8
    else:
        # A temporary, as `key.encode()`: asking the str would cache a UTF-8 copy in it for
        # as long as the key lives (in the order step's state).
        utf8 = key.encode()
        p, n = PyBytes_AS_STRING(utf8), PyBytes_GET_SIZE(utf8)
    return names[atp_crc32(<const unsigned char*>p, n) % len(names)]
