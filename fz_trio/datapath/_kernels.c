/* fz_trio.datapath._kernels: the native twin of fz_trio/datapath/_pykernels.py.
 *
 * The Python module is the specification: the same four batch kernels with the same arguments,
 * results and ValueErrors, byte for byte (tests/datapath/test_twins.py holds them to it).
 *
 * No cipher is implemented here: `init` receives the addresses of libsodium's combined
 * crypto_aead_chacha20poly1305_ietf_encrypt / _decrypt from PyNaCl's bundled library
 * (fz_trio.datapath.aead.pointers()), and the kernels call those, in place.
 *
 * Conventions:
 * - Integer arguments are Python ints of any size. They are read into a 128-bit `wide`,
 *   exact on [-2**63, 2**64] and saturated beyond (to -2**66 / 2**66), which keeps every
 *   comparison the twin makes (against buffer lengths, 2**32 and 2**64) exact.
 * - All buffers (Py_buffer) and the contract checks are done with the GIL held; the loops that
 *   copy, checksum and call the AEAD run with the GIL released. Every buffer is released on every
 *   path. Nothing is written when a ValueError is raised.
 * - Packet bytes are read with explicit bounds checks; u64 words only through memcpy.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#ifndef __SIZEOF_INT128__
#error "fz_trio.datapath._kernels needs a compiler with __int128 (gcc or clang, 64-bit target)"
#endif

typedef __int128 wide;
#define WIDE_ONE ((wide)1)
#define WIDE_2_32 (WIDE_ONE << 32)
#define WIDE_2_64 (WIDE_ONE << 64)
#define WIDE_SAT (WIDE_ONE << 66)

#define HEADER_LEN 16
#define TAG_LEN 16
#define OVERHEAD (HEADER_LEN + TAG_LEN)
#define TYPE_TRANSPORT 4u

#define WINDOW_SIZE 8192u
#define RING_WORDS (WINDOW_SIZE / 64u + 1u)
#define WINDOW_WORDS (1u + RING_WORDS)
#define WINDOW_BYTES (8u * WINDOW_WORDS)

#define PROTO_TCP 6u
#define PROTO_UDP 17u
#define TCP_FIN 0x01u
#define TCP_PSH 0x08u
#define TCP_ACK 0x10u
#define TCP_CWR 0x80u
#define F_NEEDS_CSUM 1u
#define F_DATA_VALID 2u
#define GSO_TCPV4 1u
#define GSO_TCPV6 4u
#define GSO_UDP_L4 5u
#define MAX_IP_LEN 65535u
#define MAX_COALESCED_SEGMENTS 64

#define ERR_LAYOUT "not an IPv4/IPv6 packet, or a bad IPv4 header length"

typedef int (*aead_encrypt_fn)(unsigned char *c, unsigned long long *clen_p,
                               const unsigned char *m, unsigned long long mlen,
                               const unsigned char *ad, unsigned long long adlen,
                               const unsigned char *nsec, const unsigned char *npub,
                               const unsigned char *k);
typedef int (*aead_decrypt_fn)(unsigned char *m, unsigned long long *mlen_p, unsigned char *nsec,
                               const unsigned char *c, unsigned long long clen,
                               const unsigned char *ad, unsigned long long adlen,
                               const unsigned char *npub, const unsigned char *k);

static aead_encrypt_fn g_encrypt = NULL;
static aead_decrypt_fn g_decrypt = NULL;
static PyObject *g_plain_hdr = NULL; /* offload.PLAIN_HDR */
static PyObject *g_two64 = NULL;     /* 2**64 */

/* --- bytes ---------------------------------------------------------------------------------- */

static inline uint32_t get16be(const uint8_t *p) { return ((uint32_t)p[0] << 8) | p[1]; }

static inline uint32_t get32be(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline uint32_t get32le(const uint8_t *p)
{
    return ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[1] << 8) | p[0];
}

static inline uint64_t get64le(const uint8_t *p)
{
    return (uint64_t)get32le(p) | ((uint64_t)get32le(p + 4) << 32);
}

static inline void put16be(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void put32be(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline void put32le(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline void put64le(uint8_t *p, uint64_t v)
{
    put32le(p, (uint32_t)v);
    put32le(p + 4, (uint32_t)(v >> 32));
}

static inline int little_endian(void)
{
    const uint16_t one = 1;
    uint8_t first;
    memcpy(&first, &one, 1);
    return first == 1;
}

/* --- checksums ------------------------------------------------------------------------------ */

static inline uint64_t add_carry(uint64_t a, uint64_t b)
{
    a += b;
    return a + (a < b); /* end-around carry: the sum stays exact modulo 2**64 - 1 */
}

/* Ones' complement sum of `data` as big-endian 16-bit words (odd length padded with a zero
 * byte), modulo 0xFFFF: 0..0xFFFE, as checksum.ones_sum. Native 64-bit words are summed with
 * end-around carries (2**64 - 1 is a multiple of 0xFFFF), then reduced and, on a little-endian
 * machine, byte-swapped (RFC 1071: the sum does not depend on byte order). */
static uint32_t ones_sum(const uint8_t *p, size_t n)
{
    uint64_t a0 = 0, a1 = 0, w0, w1;
    while (n >= 16) {
        memcpy(&w0, p, 8);
        memcpy(&w1, p + 8, 8);
        a0 = add_carry(a0, w0);
        a1 = add_carry(a1, w1);
        p += 16;
        n -= 16;
    }
    if (n) {
        uint8_t tail[16] = {0};
        memcpy(tail, p, n);
        memcpy(&w0, tail, 8);
        memcpy(&w1, tail + 8, 8);
        a0 = add_carry(a0, w0);
        a1 = add_carry(a1, w1);
    }
    uint32_t r = (uint32_t)(add_carry(a0, a1) % 0xFFFFu);
    if (little_endian())
        r = ((r & 0xFFu) << 8) | (r >> 8);
    return r;
}

/* --- arguments ------------------------------------------------------------------------------ */

static int parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs,
                      PyObject *kwnames, const char *const *names, Py_ssize_t n, PyObject **out)
{
    Py_ssize_t i, j;
    if (nargs > n) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd positional arguments but %zd were given",
                     fname, n, nargs);
        return -1;
    }
    for (i = 0; i < n; i++)
        out[i] = i < nargs ? args[i] : NULL;
    if (kwnames != NULL) {
        Py_ssize_t nk = PyTuple_GET_SIZE(kwnames);
        for (j = 0; j < nk; j++) {
            PyObject *name = PyTuple_GET_ITEM(kwnames, j);
            for (i = 0; i < n; i++)
                if (PyUnicode_CompareWithASCIIString(name, names[i]) == 0)
                    break;
            if (i == n) {
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%S'",
                             fname, name);
                return -1;
            }
            if (out[i] != NULL) {
                PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'",
                             fname, names[i]);
                return -1;
            }
            out[i] = args[nargs + j];
        }
    }
    for (i = 0; i < n; i++)
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fname,
                         names[i]);
            return -1;
        }
    return 0;
}

/* A Python int as a `wide`: exact on [-2**63, 2**64], saturated to -WIDE_SAT / WIDE_SAT beyond. */
static int get_wide(PyObject *o, const char *name, wide *out)
{
    int overflow;
    long long v;
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", name,
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow == 0) {
        if (v == -1 && PyErr_Occurred())
            return -1;
        *out = v;
        return 0;
    }
    if (overflow < 0) {
        *out = -WIDE_SAT;
        return 0;
    }
    unsigned long long u = PyLong_AsUnsignedLongLong(o);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        int eq = PyObject_RichCompareBool(o, g_two64, Py_EQ);
        if (eq < 0)
            return -1;
        *out = eq ? WIDE_2_64 : WIDE_SAT;
        return 0;
    }
    *out = (wide)u;
    return 0;
}

/* A buffer argument whose length is known even if it is no buffer (as the twin's len()); the
 * buffer itself is required only where the twin would use the bytes (`need`). */
typedef struct {
    Py_buffer view;
    int held;
    int writable;
    Py_ssize_t len;
    PyObject *obj;
    const char *name;
} arg_buf;

static int arg_buf_get(arg_buf *b, PyObject *o, const char *name, int want_writable)
{
    b->held = 0;
    b->writable = 0;
    b->obj = o;
    b->name = name;
    if (want_writable) {
        if (PyObject_GetBuffer(o, &b->view, PyBUF_WRITABLE) == 0) {
            b->held = b->writable = 1;
            b->len = b->view.len;
            return 0;
        }
        PyErr_Clear();
    }
    if (PyObject_GetBuffer(o, &b->view, PyBUF_SIMPLE) == 0) {
        b->held = 1;
        b->len = b->view.len;
        return 0;
    }
    PyErr_Clear();
    b->len = PyObject_Size(o);
    return b->len < 0 ? -1 : 0;
}

static int arg_buf_need(arg_buf *b, int writable)
{
    if (!b->held) {
        PyErr_Format(PyExc_TypeError, "%s must be a contiguous bytes-like object, not %.100s",
                     b->name, Py_TYPE(b->obj)->tp_name);
        return -1;
    }
    if (writable && !b->writable) {
        PyErr_Format(PyExc_TypeError, "%s must be a writable bytes-like object (bytearray)",
                     b->name);
        return -1;
    }
    return 0;
}

static void arg_buf_release(arg_buf *b)
{
    if (b->held) {
        PyBuffer_Release(&b->view);
        b->held = 0;
    }
}

static int need_init(void)
{
    if (g_encrypt == NULL || g_decrypt == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "fz_trio.datapath._kernels.init() was not called with the AEAD pointers");
        return -1;
    }
    return 0;
}

/* --- init ----------------------------------------------------------------------------------- */

static PyObject *k_init(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                        PyObject *kwnames)
{
    static const char *const names[] = {"encrypt_ptr", "decrypt_ptr"};
    PyObject *a[2];
    uintptr_t p[2];
    (void)module;
    if (parse_args("init", args, nargs, kwnames, names, 2, a) < 0)
        return NULL;
    for (int i = 0; i < 2; i++) {
        if (!PyLong_Check(a[i])) {
            PyErr_Format(PyExc_TypeError, "%s must be an int", names[i]);
            return NULL;
        }
        unsigned long long v = PyLong_AsUnsignedLongLong(a[i]);
        if (v == (unsigned long long)-1 && PyErr_Occurred())
            return NULL;
        if (v == 0 || (unsigned long long)(uintptr_t)v != v) {
            PyErr_Format(PyExc_ValueError, "%s is not a function address", names[i]);
            return NULL;
        }
        p[i] = (uintptr_t)v;
    }
    g_encrypt = (aead_encrypt_fn)p[0];
    g_decrypt = (aead_decrypt_fn)p[1];
    Py_RETURN_NONE;
}

/* --- slots (seal_packets, seal_segments) ------------------------------------------------------ */

typedef struct {
    wide offset, stride, padded_len, count, remote_index, counter;
} slots_t;

/* _pykernels._check_slots */
static int check_slots(Py_ssize_t dst_len, Py_ssize_t key_len, const slots_t *s)
{
    if (s->count < 0 || s->padded_len < 0 || s->offset < 0) {
        PyErr_SetString(PyExc_ValueError, "negative count, length or offset");
        return -1;
    }
    if (key_len != 32) {
        PyErr_SetString(PyExc_ValueError, "key must be 32 bytes");
        return -1;
    }
    if (!(0 <= s->remote_index && s->remote_index < WIDE_2_32) || !(0 <= s->counter)
        || s->counter + s->count > WIDE_2_64) {
        PyErr_SetString(PyExc_ValueError, "receiver index or counter out of range");
        return -1;
    }
    if (s->count > 1 && s->stride < OVERHEAD + s->padded_len) {
        PyErr_SetString(PyExc_ValueError, "slots overlap");
        return -1;
    }
    if (s->count) {
        /* offset + (count - 1) * stride + OVERHEAD + padded_len > len(dst), without a product
         * that could overflow: every term is non-negative here (stride > 0 when count > 1). */
        wide base = s->offset + OVERHEAD + s->padded_len;
        int past = base > (wide)dst_len;
        if (!past && s->count > 1)
            past = s->count - 1 > ((wide)dst_len - base) / s->stride;
        if (past) {
            PyErr_SetString(PyExc_ValueError, "slots run past the end of the buffer");
            return -1;
        }
    }
    return 0;
}

static inline void nonce_for(uint8_t nonce[12], uint64_t counter)
{
    memset(nonce, 0, 4);
    put64le(nonce + 4, counter);
}

static inline void put_transport_header(uint8_t *p, uint32_t index, uint64_t counter)
{
    put32le(p, TYPE_TRANSPORT);
    put32le(p + 4, index);
    put64le(p + 8, counter);
}

/* --- seal_packets ----------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *buf;
    size_t len;
} span_t;

static PyObject *k_seal_packets(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    static const char *const names[] = {"packets", "first", "count", "dst", "offset",
                                        "stride", "padded_len", "key", "remote_index",
                                        "counter"};
    PyObject *a[10];
    wide first;
    slots_t s;
    arg_buf dst = {0}, key = {0};
    PyObject *seq = NULL, *result = NULL;
    Py_buffer *views = NULL;
    span_t *spans = NULL;
    Py_ssize_t nviews = 0, k, count;
    uint8_t keybytes[32];
    (void)module;

    if (need_init() < 0 || parse_args("seal_packets", args, nargs, kwnames, names, 10, a) < 0)
        return NULL;
    if (get_wide(a[1], "first", &first) < 0 || get_wide(a[2], "count", &s.count) < 0
        || get_wide(a[4], "offset", &s.offset) < 0 || get_wide(a[5], "stride", &s.stride) < 0
        || get_wide(a[6], "padded_len", &s.padded_len) < 0
        || get_wide(a[8], "remote_index", &s.remote_index) < 0
        || get_wide(a[9], "counter", &s.counter) < 0)
        return NULL;
    if (arg_buf_get(&dst, a[3], "dst", 1) < 0)
        goto done;
    if (arg_buf_get(&key, a[7], "key", 0) < 0)
        goto done;
    if (check_slots(dst.len, key.len, &s) < 0)
        goto done;
    seq = PySequence_Fast(a[0], "packets must be a sequence");
    if (seq == NULL)
        goto done;
    if (first < 0 || first + s.count > (wide)PySequence_Fast_GET_SIZE(seq)) {
        PyErr_SetString(PyExc_ValueError, "packet range outside the list");
        goto done;
    }
    count = (Py_ssize_t)s.count;
    if (count == 0) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    views = PyMem_Calloc((size_t)count, sizeof(Py_buffer));
    spans = PyMem_Calloc((size_t)count, sizeof(span_t));
    if (views == NULL || spans == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    {
        /* As the twin's any(len(p) > padded_len ...): in order, the first offender decides. */
        int unusable = 0;
        for (k = 0; k < count; k++) {
            Py_ssize_t idx = (Py_ssize_t)first + k, n;
            PyObject *item;
            if (idx >= PySequence_Fast_GET_SIZE(seq)) { /* shrunk by a __len__ */
                PyErr_SetString(PyExc_IndexError, "packets changed size during the call");
                goto done;
            }
            item = PySequence_Fast_GET_ITEM(seq, idx);
            if (!unusable && PyObject_GetBuffer(item, &views[nviews], PyBUF_SIMPLE) == 0) {
                n = views[nviews].len;
                spans[k].buf = views[nviews].buf;
                spans[k].len = (size_t)n;
                nviews++;
            } else {
                if (!unusable) {
                    PyErr_Clear();
                    unusable = 1;
                }
                Py_INCREF(item);
                n = PyObject_Size(item);
                Py_DECREF(item);
                if (n < 0)
                    goto done;
            }
            if ((wide)n > s.padded_len) {
                PyErr_SetString(PyExc_ValueError, "a packet is longer than its slot");
                goto done;
            }
        }
        if (unusable) {
            PyErr_SetString(PyExc_TypeError, "packets must be contiguous bytes-like objects");
            goto done;
        }
    }
    if (arg_buf_need(&dst, 1) < 0 || arg_buf_need(&key, 0) < 0)
        goto done;
    memcpy(keybytes, key.view.buf, 32);
    {
        uint8_t *base = (uint8_t *)dst.view.buf + (size_t)s.offset;
        size_t stride = count > 1 ? (size_t)s.stride : 0;
        size_t padded = (size_t)s.padded_len;
        uint32_t index = (uint32_t)s.remote_index;
        uint64_t counter = (uint64_t)s.counter;
        aead_encrypt_fn encrypt = g_encrypt;
        Py_BEGIN_ALLOW_THREADS
        for (k = 0; k < count; k++) {
            uint8_t *slot = base + (size_t)k * stride;
            uint8_t *body = slot + HEADER_LEN;
            uint8_t nonce[12];
            size_t n = spans[k].len;
            put_transport_header(slot, index, counter + (uint64_t)k);
            if (n)
                memmove(body, spans[k].buf, n);
            memset(body + n, 0, padded - n);
            nonce_for(nonce, counter + (uint64_t)k);
            encrypt(body, NULL, body, padded, NULL, 0, NULL, nonce, keybytes);
        }
        Py_END_ALLOW_THREADS
    }
    result = Py_None;
    Py_INCREF(result);
done:
    for (k = 0; k < nviews; k++)
        PyBuffer_Release(&views[k]);
    PyMem_Free(views);
    PyMem_Free(spans);
    Py_XDECREF(seq);
    arg_buf_release(&dst);
    arg_buf_release(&key);
    return result;
}

/* --- segmentation plan (offload.Segments.plan / write) -------------------------------------- */

typedef struct {
    const uint8_t *packet;
    size_t len;
    const uint8_t *payload;
    size_t payload_len;
    uint8_t tmpl[120]; /* IP header (<= 60) + TCP header (<= 60) */
    size_t hl;
    unsigned version, iphl, proto;
    uint64_t size;  /* gso_size; when larger than the payload, any value above its length */
    uint64_t count; /* segments */
    uint64_t full_count;
    uint32_t ip_sum, l4_sum;
    uint32_t ident0, seq0, flags0;
} plan_t;

/* Segments.plan(packet, gso_size) with gso_type None: NULL, or the OffloadError's message. */
static const char *plan_build(plan_t *p, const uint8_t *pkt, size_t len, wide gso_size)
{
    unsigned version, iphl, proto, l4hl;
    size_t start, i;
    if (len == 0)
        return ERR_LAYOUT;
    version = pkt[0] >> 4;
    if (version == 4 && len >= 20) {
        iphl = (pkt[0] & 0x0Fu) * 4u;
        if (iphl < 20 || len < iphl)
            return ERR_LAYOUT;
        proto = pkt[9];
    } else if (version == 6 && len >= 40) {
        iphl = 40;
        proto = pkt[6];
    } else {
        return ERR_LAYOUT;
    }
    memset(p->tmpl, 0, sizeof p->tmpl);
    if (proto != PROTO_UDP) { /* gso_type TCPV4 / TCPV6, from the version */
        if (proto != PROTO_TCP)
            return "TSO header does not match the packet";
        if (len < (size_t)iphl + 20)
            return "TSO packet without a TCP header";
        l4hl = (unsigned)(pkt[iphl + 12] >> 4) * 4u;
        if (l4hl < 20)
            return "bad TCP header length";
    } else {
        l4hl = 8;
    }
    start = (size_t)iphl + l4hl;
    if (len < start || gso_size <= 0)
        return "super-packet shorter than its headers, or gso_size 0";
    if ((wide)start + (gso_size < (wide)(len - start) ? gso_size : (wide)(len - start))
        > (wide)MAX_IP_LEN)
        return "segments would be longer than an IP packet";
    memcpy(p->tmpl, pkt, start);
    if (version == 4) {
        p->tmpl[2] = p->tmpl[3] = p->tmpl[4] = p->tmpl[5] = p->tmpl[10] = p->tmpl[11] = 0;
    } else {
        p->tmpl[4] = p->tmpl[5] = 0;
    }
    if (proto == PROTO_TCP) {
        for (i = 4; i < 8; i++)
            p->tmpl[iphl + i] = 0;
        p->tmpl[iphl + 13] = 0;
        p->tmpl[iphl + 16] = p->tmpl[iphl + 17] = 0;
    } else {
        for (i = 4; i < 8; i++)
            p->tmpl[iphl + i] = 0;
    }
    p->packet = pkt;
    p->len = len;
    p->payload = pkt + start;
    p->payload_len = len - start;
    p->hl = start;
    p->version = version;
    p->iphl = iphl;
    p->proto = proto;
    if (gso_size > (wide)p->payload_len) {
        p->size = (uint64_t)p->payload_len + 1;
        p->count = 1;
        p->full_count = 0;
    } else {
        p->size = (uint64_t)gso_size;
        p->count = (p->payload_len + p->size - 1) / p->size;
        if (p->count == 0)
            p->count = 1;
        p->full_count = p->payload_len / p->size;
    }
    p->ip_sum = version == 4 ? ones_sum(p->tmpl, iphl) : 0;
    {
        uint32_t addresses = version == 4 ? ones_sum(pkt + 12, 8) : ones_sum(pkt + 8, 32);
        p->l4_sum = ones_sum(p->tmpl + iphl, l4hl) + (addresses + proto) % 0xFFFFu;
    }
    p->ident0 = version == 4 ? get16be(pkt + 4) : 0;
    p->seq0 = proto == PROTO_TCP ? get32be(pkt + iphl + 4) : 0;
    p->flags0 = proto == PROTO_TCP ? pkt[iphl + 13] : 0;
    return NULL;
}

/* Payload bytes of segment i (i < count). */
static inline size_t plan_chunk(const plan_t *p, uint64_t i)
{
    size_t first = (size_t)(i * p->size);
    size_t left = p->payload_len - first;
    return left < p->size ? left : (size_t)p->size;
}

/* Segments.write(i, out, 0): returns the segment's length. */
static size_t plan_write(const plan_t *p, uint64_t i, uint8_t *out)
{
    size_t hl = p->hl, iphl = p->iphl;
    uint64_t first = i * p->size;
    size_t n = plan_chunk(p, i);
    const uint8_t *chunk = p->payload + first;
    uint32_t l4_length = (uint32_t)(hl - iphl + n);
    uint8_t *l4 = out + iphl;
    uint64_t total;

    memcpy(out, p->tmpl, hl);
    if (n)
        memmove(out + hl, chunk, n);
    if (p->version == 4) {
        uint32_t length = (uint32_t)(hl + n);
        uint32_t ident = (p->ident0 + (uint32_t)i) & 0xFFFFu;
        put16be(out + 2, length);
        put16be(out + 4, ident);
        put16be(out + 10, 0xFFFFu - (uint32_t)(((uint64_t)p->ip_sum + length + ident) % 0xFFFFu));
    } else {
        put16be(out + 4, l4_length);
    }
    if (p->proto == PROTO_TCP) {
        uint32_t seq = (uint32_t)(p->seq0 + first);
        uint32_t flags = p->flags0;
        if (i != p->count - 1)
            flags &= ~(TCP_FIN | TCP_PSH);
        if (i)
            flags &= ~TCP_CWR;
        put32be(l4 + 4, seq);
        l4[13] = (uint8_t)flags;
        total = (uint64_t)p->l4_sum + l4_length + (seq >> 16) + (seq & 0xFFFFu) + flags
                + ones_sum(out + hl, n);
        put16be(l4 + 16, 0xFFFFu - (uint32_t)(total % 0xFFFFu));
    } else {
        total = (uint64_t)p->l4_sum + 2u * (uint64_t)l4_length + ones_sum(out + hl, n);
        put16be(l4 + 4, l4_length);
        put16be(l4 + 6, 0xFFFFu - (uint32_t)(total % 0xFFFFu));
    }
    return hl + n;
}

static PyObject *k_seal_segments(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames)
{
    static const char *const names[] = {"packet", "gso_size", "first", "count", "dst",
                                        "offset", "stride", "padded_len", "key",
                                        "remote_index", "counter"};
    PyObject *a[11];
    wide gso_size, first;
    slots_t s;
    arg_buf dst = {0}, key = {0}, packet = {0};
    PyObject *result = NULL;
    plan_t plan;
    const char *error;
    uint8_t keybytes[32];
    (void)module;

    if (need_init() < 0 || parse_args("seal_segments", args, nargs, kwnames, names, 11, a) < 0)
        return NULL;
    if (get_wide(a[1], "gso_size", &gso_size) < 0 || get_wide(a[2], "first", &first) < 0
        || get_wide(a[3], "count", &s.count) < 0 || get_wide(a[5], "offset", &s.offset) < 0
        || get_wide(a[6], "stride", &s.stride) < 0
        || get_wide(a[7], "padded_len", &s.padded_len) < 0
        || get_wide(a[9], "remote_index", &s.remote_index) < 0
        || get_wide(a[10], "counter", &s.counter) < 0)
        return NULL;
    if (arg_buf_get(&dst, a[4], "dst", 1) < 0 || arg_buf_get(&key, a[8], "key", 0) < 0)
        goto done;
    if (check_slots(dst.len, key.len, &s) < 0)
        goto done;
    if (PyObject_GetBuffer(a[0], &packet.view, PyBUF_SIMPLE) < 0)
        goto done;
    packet.held = 1;
    error = plan_build(&plan, packet.view.buf, (size_t)packet.view.len, gso_size);
    if (error != NULL) {
        PyErr_SetString(PyExc_ValueError, error);
        goto done;
    }
    if (first < 0 || first + s.count > (wide)plan.count) {
        PyErr_SetString(PyExc_ValueError, "segment range outside the super-packet");
        goto done;
    }
    if (s.count == 0) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    {
        /* Segment lengths do not grow with i: the first is the longest. */
        size_t longest = plan.hl + plan_chunk(&plan, (uint64_t)first);
        if ((wide)longest > s.padded_len) {
            PyErr_SetString(PyExc_ValueError, "a segment is longer than its slot");
            goto done;
        }
        /* The twin's struct.pack_into would fail on a 16-bit length field (after writing). */
        if ((plan.version == 4 ? longest : longest - plan.iphl) > MAX_IP_LEN) {
            PyErr_SetString(PyExc_ValueError, "a segment is longer than 65535 bytes");
            goto done;
        }
    }
    if (arg_buf_need(&dst, 1) < 0 || arg_buf_need(&key, 0) < 0)
        goto done;
    memcpy(keybytes, key.view.buf, 32);
    {
        uint8_t *base = (uint8_t *)dst.view.buf + (size_t)s.offset;
        uint64_t count = (uint64_t)s.count, k, i0 = (uint64_t)first;
        size_t stride = count > 1 ? (size_t)s.stride : 0;
        size_t padded = (size_t)s.padded_len;
        uint32_t index = (uint32_t)s.remote_index;
        uint64_t counter = (uint64_t)s.counter;
        aead_encrypt_fn encrypt = g_encrypt;
        Py_BEGIN_ALLOW_THREADS
        for (k = 0; k < count; k++) {
            uint8_t *slot = base + (size_t)k * stride;
            uint8_t *body = slot + HEADER_LEN;
            uint8_t nonce[12];
            size_t n = plan_write(&plan, i0 + k, body);
            memset(body + n, 0, padded - n);
            put_transport_header(slot, index, counter + k);
            nonce_for(nonce, counter + k);
            encrypt(body, NULL, body, padded, NULL, 0, NULL, nonce, keybytes);
        }
        Py_END_ALLOW_THREADS
    }
    result = Py_None;
    Py_INCREF(result);
done:
    arg_buf_release(&packet);
    arg_buf_release(&dst);
    arg_buf_release(&key);
    return result;
}

/* --- replay window (replay.check / replay.mark) ----------------------------------------------- */

/* The state is replay.WINDOW_BYTES of native-endian u64 words: word 0 the greatest counter seen
 * (0 before any), then RING_WORDS ring words. open_run copies it in (memcpy), works on the copy
 * and copies it back. */


static int replay_check(const uint64_t *w, uint64_t counter)
{
    uint64_t greatest = w[0];
    if (counter > greatest)
        return 1;
    if (greatest - counter >= WINDOW_SIZE)
        return 0;
    return !((w[1 + (counter >> 6) % RING_WORDS] >> (counter & 63)) & 1u);
}

/* 1 marked, 0 replay or too old, -1 the state is read-only (the twin's TypeError). */
static int replay_mark(uint64_t *w, uint64_t counter, int writable)
{
    uint64_t greatest = w[0], index, bit;
    if (counter > greatest) {
        uint64_t current = greatest >> 6, target = counter >> 6;
        uint64_t last = target < current + RING_WORDS ? target : current + RING_WORDS;
        if (!writable)
            return -1;
        for (uint64_t word = current + 1; word <= last; word++)
            w[1 + word % RING_WORDS] = 0;
        w[0] = counter;
    } else if (greatest - counter >= WINDOW_SIZE) {
        return 0;
    }
    index = 1 + (counter >> 6) % RING_WORDS;
    bit = (uint64_t)1 << (counter & 63);
    if (w[index] & bit)
        return 0;
    if (!writable)
        return -1;
    w[index] |= bit;
    return 1;
}

/* --- open_run ------------------------------------------------------------------------------- */

enum { MSG_DROP = 0, MSG_KEEP = 1 };

typedef struct {
    PyObject *plain; /* bytearray of the whole plaintext (NULL for a keepalive) */
    uint8_t *out;
    size_t inner;
    uint8_t status;
    uint8_t unchecked;
} msg_t;

static int source_allowed(const uint8_t *allowed, size_t len, const uint8_t *source,
                          size_t width)
{
    for (size_t i = 0; i + width <= len; i += width)
        if (memcmp(allowed + i, source, width) == 0)
            return 1;
    return 0;
}

static PyObject *k_open_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames)
{
    static const char *const names[] = {"buffer", "start", "nbytes", "size", "receiver",
                                        "key", "window", "counter_limit", "allowed_v4",
                                        "allowed_v6"};
    PyObject *a[10];
    wide start, nbytes, size, receiver, counter_limit;
    arg_buf buf = {0}, key = {0}, win = {0}, av4 = {0}, av6 = {0};
    PyObject *result = NULL, *packets = NULL, *unchecked = NULL, *next = NULL;
    msg_t *msgs = NULL;
    Py_ssize_t m = 0, k;
    uint64_t words[WINDOW_WORDS];
    uint8_t keybytes[32];
    unsigned long long datagram_bytes = 0, plain_bytes = 0, expired = 0, forged = 0,
                       not_ip = 0;
    int failure = 0;
    (void)module;

    if (need_init() < 0 || parse_args("open_run", args, nargs, kwnames, names, 10, a) < 0)
        return NULL;
    if (get_wide(a[1], "start", &start) < 0 || get_wide(a[2], "nbytes", &nbytes) < 0
        || get_wide(a[3], "size", &size) < 0 || get_wide(a[4], "receiver", &receiver) < 0
        || get_wide(a[7], "counter_limit", &counter_limit) < 0)
        return NULL;
    if (arg_buf_get(&buf, a[0], "buffer", 0) < 0 || arg_buf_get(&key, a[5], "key", 0) < 0
        || arg_buf_get(&win, a[6], "window", 1) < 0
        || arg_buf_get(&av4, a[8], "allowed_v4", 0) < 0
        || arg_buf_get(&av6, a[9], "allowed_v6", 0) < 0)
        goto done;
    if (size <= 0 || start < 0 || nbytes > (wide)buf.len || key.len != 32) {
        PyErr_SetString(PyExc_ValueError, "bad run bounds or key");
        goto done;
    }
    if (win.len != (Py_ssize_t)WINDOW_BYTES) {
        PyErr_SetString(PyExc_ValueError, "bad replay window state");
        goto done;
    }
    if (av4.len % 4 || av6.len % 16) {
        PyErr_SetString(PyExc_ValueError, "allowed sources must be whole addresses");
        goto done;
    }
    if (arg_buf_need(&win, 0) < 0)
        goto done;
    /* The run: datagrams of `size` bytes (the last may be shorter) from `start`, up to the first
     * one shorter than a message or not a transport message for `receiver`. Only the 16-byte
     * header is read before authentication. */
    if (start < nbytes) {
        const uint8_t *p;
        size_t pos = (size_t)start, end_all = (size_t)nbytes;
        size_t step = size > nbytes ? end_all : (size_t)size;
        if (arg_buf_need(&buf, 0) < 0)
            goto done;
        p = buf.view.buf;
        while (pos < end_all) {
            size_t end = end_all - pos > step ? pos + step : end_all;
            if (end - pos < OVERHEAD)
                break;
            if (get32le(p + pos) != TYPE_TRANSPORT || (wide)get32le(p + pos + 4) != receiver)
                break;
            m++;
            pos += step;
        }
    }
    if (m) {
        size_t pos = (size_t)start, end_all = (size_t)nbytes;
        size_t step = size > nbytes ? end_all : (size_t)size;
        if (arg_buf_need(&key, 0) < 0 || arg_buf_need(&av4, 0) < 0
            || arg_buf_need(&av6, 0) < 0)
            goto done;
        memcpy(keybytes, key.view.buf, 32);
        msgs = PyMem_Calloc((size_t)m, sizeof(msg_t));
        if (msgs == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        for (k = 0; k < m; k++, pos += step) {
            size_t end = end_all - pos > step ? pos + step : end_all;
            size_t plen = end - pos - OVERHEAD;
            if (plen) {
                msgs[k].plain = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)plen);
                if (msgs[k].plain == NULL)
                    goto done;
                msgs[k].out = (uint8_t *)PyByteArray_AS_STRING(msgs[k].plain);
            }
        }
    }
    memcpy(words, win.view.buf, WINDOW_BYTES);
    if (m) {
        const uint8_t *p = buf.view.buf;
        const uint8_t *allowed4 = av4.view.buf, *allowed6 = av6.view.buf;
        size_t len4 = (size_t)av4.len, len6 = (size_t)av6.len;
        size_t pos = (size_t)start, end_all = (size_t)nbytes;
        size_t step = size > nbytes ? end_all : (size_t)size;
        int writable = win.writable;
        aead_decrypt_fn decrypt = g_decrypt;
        Py_BEGIN_ALLOW_THREADS
        for (k = 0; k < m; k++, pos += step) {
            size_t end = end_all - pos > step ? pos + step : end_all;
            size_t length = end - pos - HEADER_LEN;
            size_t plen = length - TAG_LEN;
            uint64_t counter = get64le(p + pos + 8);
            uint8_t nonce[12], scratch[1];
            uint8_t *out = plen ? msgs[k].out : scratch;
            int marked;
            if ((wide)counter >= counter_limit) {
                expired++;
                continue;
            }
            if (!replay_check(words, counter)) {
                forged++;
                continue;
            }
            nonce_for(nonce, counter);
            if (decrypt(out, NULL, NULL, p + pos + HEADER_LEN, length, NULL, 0, nonce,
                        keybytes) != 0) {
                forged++;
                continue;
            }
            marked = replay_mark(words, counter, writable);
            if (marked < 0) {
                failure = marked;
                break;
            }
            if (!marked) {
                forged++;
                continue;
            }
            datagram_bytes += end - pos;
            if (!plen)
                continue; /* a keepalive */
            plain_bytes += plen;
            {
                unsigned version = out[0] >> 4;
                size_t inner = 0, width = 0, alen = 0;
                const uint8_t *source = NULL, *allowed = NULL;
                if (version == 4 && plen >= 20) {
                    inner = get16be(out + 2);
                    source = out + 12;
                    allowed = allowed4;
                    alen = len4;
                    width = 4;
                } else if (version == 6 && plen >= 40) {
                    inner = 40 + (size_t)get16be(out + 4);
                    source = out + 8;
                    allowed = allowed6;
                    alen = len6;
                    width = 16;
                }
                if (inner < 20 || inner > plen) {
                    not_ip++;
                    continue;
                }
                msgs[k].status = MSG_KEEP;
                msgs[k].inner = inner;
                msgs[k].unchecked = !source_allowed(allowed, alen, source, width);
            }
        }
        Py_END_ALLOW_THREADS
    }
    if (failure == -1) {
        PyErr_SetString(PyExc_TypeError, "cannot modify read-only memory");
        goto done;
    }
    if (win.writable)
        memcpy(win.view.buf, words, WINDOW_BYTES);
    packets = PyList_New(0);
    unchecked = PyList_New(0);
    if (packets == NULL || unchecked == NULL)
        goto done;
    for (k = 0; k < m; k++) {
        msg_t *msg = &msgs[k];
        if (msg->status != MSG_KEEP)
            continue;
        if (msg->inner != (size_t)PyByteArray_GET_SIZE(msg->plain)
            && PyByteArray_Resize(msg->plain, (Py_ssize_t)msg->inner) < 0)
            goto done;
        if (msg->unchecked) {
            PyObject *index = PyLong_FromSsize_t(PyList_GET_SIZE(packets));
            int rc = index == NULL ? -1 : PyList_Append(unchecked, index);
            Py_XDECREF(index);
            if (rc < 0)
                goto done;
        }
        if (PyList_Append(packets, msg->plain) < 0)
            goto done;
    }
    /* next start = start + m * size (exact Python ints, whatever their size) */
    if (m == 0) {
        next = a[1];
        Py_INCREF(next);
    } else if (size < (WIDE_ONE << 40)) {
        next = PyLong_FromLongLong((long long)(start + (wide)m * size));
    } else {
        PyObject *count = PyLong_FromSsize_t(m);
        PyObject *span = count == NULL ? NULL : PyNumber_Multiply(count, a[3]);
        next = span == NULL ? NULL : PyNumber_Add(a[1], span);
        Py_XDECREF(count);
        Py_XDECREF(span);
    }
    if (next == NULL)
        goto done;
    result = Py_BuildValue("(NOOKKKKK)", next, packets, unchecked, datagram_bytes, plain_bytes,
                           expired, forged, not_ip);
    next = NULL; /* "N" stole it, even on failure */
done:
    Py_XDECREF(next);
    Py_XDECREF(packets);
    Py_XDECREF(unchecked);
    if (msgs != NULL) {
        for (k = 0; k < m; k++)
            Py_XDECREF(msgs[k].plain);
        PyMem_Free(msgs);
    }
    arg_buf_release(&buf);
    arg_buf_release(&key);
    arg_buf_release(&win);
    arg_buf_release(&av4);
    arg_buf_release(&av6);
    return result;
}

/* --- coalesce ------------------------------------------------------------------------------- */

/* The twin's coalesce without its fast path (`_continues` accepts a subset of what
 * `_try_append` accepts, with the same effect, so the results are the same). */

typedef struct {
    Py_ssize_t first, last; /* packet indices; members are chained through `next_member` */
    unsigned version, iphl, l4hl, proto;
    size_t gso_size;
    size_t length;
    uint32_t next_seq, next_id;
    int closed, push, n;
} group_t;

#define KEY_MAX 37 /* IPv6: protocol + addresses + ports */

typedef struct {
    uint8_t key[KEY_MAX];
    uint8_t klen;
    uint8_t used;
    Py_ssize_t group; /* -1: no open group for this key */
} slot_t;

typedef struct {
    const uint8_t *buf;
    size_t len;
} pkt_t;

static uint64_t key_hash(const uint8_t *key, size_t len)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) {
        h ^= key[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static slot_t *slot_find(slot_t *table, size_t mask, const uint8_t *key, size_t klen, int create)
{
    size_t i = (size_t)key_hash(key, klen) & mask;
    for (;;) {
        slot_t *s = &table[i];
        if (!s->used) {
            if (!create)
                return NULL;
            s->used = 1;
            s->klen = (uint8_t)klen;
            memcpy(s->key, key, klen);
            s->group = -1;
            return s;
        }
        if (s->klen == klen && memcmp(s->key, key, klen) == 0)
            return s;
        i = (i + 1) & mask;
    }
}

static int same_ip(const group_t *g, const uint8_t *f, const uint8_t *p)
{
    if (g->version == 4) {
        uint32_t ident = get16be(p + 4);
        int fixed_id = (p[6] & 0x40) && ident == get16be(f + 4);
        return f[1] == p[1] && f[6] == p[6] && p[7] == 0 && f[8] == p[8]
               && (ident == g->next_id || fixed_id);
    }
    return memcmp(f, p, 4) == 0 && f[7] == p[7];
}

static int try_append(group_t *g, const pkt_t *pk, Py_ssize_t *next_member, Py_ssize_t j,
                      unsigned l4hl, size_t payload)
{
    const uint8_t *f = pk[g->first].buf, *p = pk[j].buf;
    unsigned iphl = g->iphl;
    if (g->closed || l4hl != g->l4hl || payload > g->gso_size)
        return 0;
    if (g->n >= MAX_COALESCED_SEGMENTS || g->length + payload > MAX_IP_LEN)
        return 0;
    if (!same_ip(g, f, p))
        return 0;
    if (g->proto == PROTO_TCP) {
        uint32_t seq = get32be(p + iphl + 4);
        if (seq != g->next_seq || memcmp(f + iphl + 8, p + iphl + 8, 4) != 0
            || memcmp(f + iphl + 14, p + iphl + 14, 2) != 0
            || memcmp(f + iphl + 20, p + iphl + 20, l4hl - 20) != 0 || (f[iphl + 13] & TCP_PSH))
            return 0;
        g->next_seq = seq + (uint32_t)payload;
    }
    if (g->version == 4)
        g->next_id = (g->next_id + 1) & 0xFFFFu;
    next_member[g->last] = j;
    g->last = j;
    g->n++;
    g->length += payload;
    if (payload < g->gso_size)
        g->closed = 1;
    if (g->proto == PROTO_TCP && (p[iphl + 13] & TCP_PSH))
        g->closed = g->push = 1;
    return 1;
}

static PyObject *plain_pair(PyObject *packet)
{
    return PyTuple_Pack(2, g_plain_hdr, packet);
}

static PyObject *build_super_packet(const group_t *g, const pkt_t *pk,
                                    const Py_ssize_t *next_member)
{
    size_t hl = (size_t)g->iphl + g->l4hl, iphl = g->iphl, total = g->length, at;
    unsigned csum_offset, gso_type;
    uint32_t l4_length, addresses, sum;
    uint8_t hdr[10];
    PyObject *packet, *header, *pair;
    uint8_t *q;
    Py_ssize_t j;

    packet = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (packet == NULL)
        return NULL;
    q = (uint8_t *)PyByteArray_AS_STRING(packet);
    memcpy(q, pk[g->first].buf, hl);
    at = hl;
    for (j = g->first; j >= 0; j = next_member[j]) {
        size_t n = pk[j].len - hl;
        memcpy(q + at, pk[j].buf + hl, n);
        at += n;
    }
    l4_length = (uint32_t)(total - iphl);
    if (g->version == 4) {
        size_t ihl = (size_t)(q[0] & 0x0Fu) * 4u;
        put16be(q + 2, (uint32_t)total);
        q[10] = q[11] = 0;
        put16be(q + 10, 0xFFFFu - ones_sum(q, ihl) % 0xFFFFu);
    } else {
        put16be(q + 4, l4_length);
    }
    if (g->proto == PROTO_TCP) {
        if (g->push)
            q[iphl + 13] |= TCP_PSH;
        csum_offset = 16;
        gso_type = g->version == 4 ? GSO_TCPV4 : GSO_TCPV6;
    } else {
        csum_offset = 6;
        gso_type = GSO_UDP_L4;
        put16be(q + iphl + 4, l4_length);
    }
    addresses = g->version == 4 ? ones_sum(q + 12, 8) : ones_sum(q + 8, 32);
    sum = (addresses + g->proto + l4_length) % 0xFFFFu;
    put16be(q + iphl + csum_offset, sum ? sum : 0xFFFFu);
    /* VNET_HDR "<BBHHHH": flags, gso_type, hdr_len, gso_size, csum_start, csum_offset */
    hdr[0] = F_NEEDS_CSUM;
    hdr[1] = (uint8_t)gso_type;
    hdr[2] = (uint8_t)hl;
    hdr[3] = (uint8_t)(hl >> 8);
    hdr[4] = (uint8_t)g->gso_size;
    hdr[5] = (uint8_t)(g->gso_size >> 8);
    hdr[6] = (uint8_t)iphl;
    hdr[7] = (uint8_t)(iphl >> 8);
    hdr[8] = (uint8_t)csum_offset;
    hdr[9] = 0;
    header = PyBytes_FromStringAndSize((const char *)hdr, sizeof hdr);
    if (header == NULL) {
        Py_DECREF(packet);
        return NULL;
    }
    pair = PyTuple_Pack(2, header, packet);
    Py_DECREF(header);
    Py_DECREF(packet);
    return pair;
}

static PyObject *k_coalesce(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames)
{
    static const char *const names[] = {"packets", "udp"};
    PyObject *a[2];
    PyObject *seq = NULL, *result = NULL, **items = NULL;
    Py_buffer *views = NULL;
    pkt_t *pk = NULL;
    Py_ssize_t *next_member = NULL, *out = NULL;
    group_t *groups = NULL;
    slot_t *table = NULL;
    Py_ssize_t n, nviews = 0, nitems = 0, nout = 0, ngroups = 0, j;
    size_t tsize = 16, mask;
    int udp;
    (void)module;

    if (need_init() < 0 || parse_args("coalesce", args, nargs, kwnames, names, 2, a) < 0)
        return NULL;
    udp = PyObject_IsTrue(a[1]);
    if (udp < 0)
        return NULL;
    seq = PySequence_Fast(a[0], "packets must be iterable");
    if (seq == NULL)
        return NULL;
    n = PySequence_Fast_GET_SIZE(seq);
    while (tsize < 2 * (size_t)n + 2)
        tsize *= 2;
    mask = tsize - 1;
    items = PyMem_Calloc((size_t)n + 1, sizeof(PyObject *));
    views = PyMem_Calloc((size_t)n + 1, sizeof(Py_buffer));
    pk = PyMem_Calloc((size_t)n + 1, sizeof(pkt_t));
    next_member = PyMem_Calloc((size_t)n + 1, sizeof(Py_ssize_t));
    out = PyMem_Calloc((size_t)n + 1, sizeof(Py_ssize_t));
    groups = PyMem_Calloc((size_t)n + 1, sizeof(group_t));
    table = PyMem_Calloc(tsize, sizeof(slot_t));
    if (!items || !views || !pk || !next_member || !out || !groups || !table) {
        PyErr_NoMemory();
        goto done;
    }
    /* Own references: allocations below may run the GC, and a finalizer could change the list. */
    for (j = 0; j < n; j++) {
        items[j] = PySequence_Fast_GET_ITEM(seq, j);
        Py_INCREF(items[j]);
    }
    nitems = n;
    for (j = 0; j < n; j++) {
        if (PyObject_GetBuffer(items[j], &views[j], PyBUF_SIMPLE) < 0)
            goto done;
        nviews++;
        pk[j].buf = views[j].buf;
        pk[j].len = (size_t)views[j].len;
        next_member[j] = -1;
    }
    for (j = 0; j < n; j++) {
        const uint8_t *p = pk[j].buf;
        size_t len = pk[j].len, payload = 0, klen;
        unsigned version, iphl, proto, l4hl = 0;
        uint8_t key[KEY_MAX];
        int candidate = 0;
        slot_t *slot;
        group_t *g;

        /* ip.layout */
        version = len ? p[0] >> 4 : 0;
        if (version == 4 && len >= 20) {
            iphl = (p[0] & 0x0Fu) * 4u;
            if (iphl < 20 || len < iphl)
                goto plain;
            proto = p[9];
        } else if (version == 6 && len >= 40) {
            iphl = 40;
            proto = p[6];
        } else {
            goto plain;
        }
        if (proto != PROTO_TCP && !(udp && proto == PROTO_UDP))
            goto plain;
        /* _flow_key: protocol, addresses, ports (as many bytes of them as there are) */
        if (version == 4) {
            size_t ports = len - iphl < 4 ? len - iphl : 4;
            key[0] = p[9];
            memcpy(key + 1, p + 12, 8);
            memcpy(key + 9, p + iphl, ports);
            klen = 9 + ports;
        } else {
            size_t ports = len - 40 < 4 ? len - 40 : 4;
            key[0] = p[6];
            memcpy(key + 1, p + 8, 32);
            memcpy(key + 33, p + 40, ports);
            klen = 33 + ports;
        }
        if (version == 4 && (iphl != 20 || (p[6] & 0x3F) || p[7])) {
            /* IPv4 options or fragments: written as they are, and they end the flow's group */
            slot = slot_find(table, mask, key, klen, 0);
            if (slot != NULL)
                slot->group = -1;
            goto plain;
        }
        if (proto == PROTO_TCP) {
            if (len >= (size_t)iphl + 20) { /* _tcp_candidate */
                unsigned tcphl = (unsigned)(p[iphl + 12] >> 4) * 4u;
                unsigned flags = p[iphl + 13];
                if (tcphl >= 20 && len > (size_t)iphl + tcphl
                    && !(flags & ~(TCP_ACK | TCP_PSH)) && (flags & TCP_ACK)) {
                    candidate = 1;
                    l4hl = tcphl;
                    payload = len - iphl - tcphl;
                }
            }
        } else if (len > (size_t)iphl + 8
                   && (size_t)((unsigned)p[iphl + 4] << 8 | p[iphl + 5]) == len - iphl) {
            /* a UDP length that disagrees with the IP length: written as it is */
            candidate = 1;
            l4hl = 8;
            payload = len - iphl - 8;
        }
        if (!candidate) {
            slot = slot_find(table, mask, key, klen, 0);
            if (slot != NULL)
                slot->group = -1; /* whatever follows must come after this packet */
            goto plain;
        }
        slot = slot_find(table, mask, key, klen, 1);
        if (slot->group >= 0 && try_append(&groups[slot->group], pk, next_member, j, l4hl,
                                           payload))
            continue;
        g = &groups[ngroups];
        g->first = g->last = j;
        g->version = version;
        g->iphl = iphl;
        g->l4hl = l4hl;
        g->proto = proto;
        g->gso_size = payload;
        g->length = (size_t)iphl + l4hl + payload;
        g->n = 1;
        g->closed = g->push = 0;
        g->next_id = version == 4 ? (get16be(p + 4) + 1) & 0xFFFFu : 0;
        g->next_seq = 0;
        if (proto == PROTO_TCP) {
            g->next_seq = get32be(p + iphl + 4) + (uint32_t)payload;
            if (p[iphl + 13] & TCP_PSH)
                g->closed = 1;
        }
        slot->group = ngroups;
        out[nout++] = -1 - ngroups;
        ngroups++;
        continue;
    plain:
        out[nout++] = j;
    }
    result = PyList_New(nout);
    if (result == NULL)
        goto done;
    for (j = 0; j < nout; j++) {
        PyObject *pair;
        if (out[j] >= 0) {
            pair = plain_pair(items[out[j]]);
        } else {
            const group_t *g = &groups[-1 - out[j]];
            pair = g->n == 1 ? plain_pair(items[g->first]) : build_super_packet(g, pk, next_member);
        }
        if (pair == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, j, pair);
    }
done:
    for (j = 0; j < nviews; j++)
        PyBuffer_Release(&views[j]);
    for (j = 0; j < nitems; j++)
        Py_DECREF(items[j]);
    PyMem_Free(items);
    PyMem_Free(views);
    PyMem_Free(pk);
    PyMem_Free(next_member);
    PyMem_Free(out);
    PyMem_Free(groups);
    PyMem_Free(table);
    Py_XDECREF(seq);
    return result;
}

/* --- module --------------------------------------------------------------------------------- */

#define FASTCALL(f) ((PyCFunction)(void (*)(void))(f))

static PyMethodDef kernel_methods[] = {
    {"init", FASTCALL(k_init), METH_FASTCALL | METH_KEYWORDS,
     "init(encrypt_ptr, decrypt_ptr)\n--\n\nThe addresses of libsodium's combined "
     "crypto_aead_chacha20poly1305_ietf_encrypt and _decrypt (aead.pointers())."},
    {"seal_packets", FASTCALL(k_seal_packets), METH_FASTCALL | METH_KEYWORDS,
     "seal_packets(packets, first, count, dst, offset, stride, padded_len, key, remote_index, "
     "counter)\n--\n\nSee fz_trio.datapath._pykernels.seal_packets."},
    {"seal_segments", FASTCALL(k_seal_segments), METH_FASTCALL | METH_KEYWORDS,
     "seal_segments(packet, gso_size, first, count, dst, offset, stride, padded_len, key, "
     "remote_index, counter)\n--\n\nSee fz_trio.datapath._pykernels.seal_segments."},
    {"open_run", FASTCALL(k_open_run), METH_FASTCALL | METH_KEYWORDS,
     "open_run(buffer, start, nbytes, size, receiver, key, window, counter_limit, allowed_v4, "
     "allowed_v6)\n--\n\nSee fz_trio.datapath._pykernels.open_run."},
    {"coalesce", FASTCALL(k_coalesce), METH_FASTCALL | METH_KEYWORDS,
     "coalesce(packets, udp)\n--\n\nSee fz_trio.datapath._pykernels.coalesce."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef kernel_module = {
    PyModuleDef_HEAD_INIT,
    "fz_trio.datapath._kernels",
    "The data path's batch kernels in C: the native twin of fz_trio.datapath._pykernels.",
    -1,
    kernel_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__kernels(void)
{
    static const uint8_t plain_hdr[10] = {F_DATA_VALID, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    PyObject *module;
    if (g_plain_hdr == NULL) {
        g_plain_hdr = PyBytes_FromStringAndSize((const char *)plain_hdr, sizeof plain_hdr);
        if (g_plain_hdr == NULL)
            return NULL;
    }
    if (g_two64 == NULL) {
        g_two64 = PyLong_FromUnsignedLongLong(UINT64_MAX);
        if (g_two64 == NULL)
            return NULL;
        PyObject *one = PyLong_FromLong(1);
        PyObject *sum = one == NULL ? NULL : PyNumber_Add(g_two64, one);
        Py_XDECREF(one);
        Py_CLEAR(g_two64);
        if (sum == NULL)
            return NULL;
        g_two64 = sum;
    }
    module = PyModule_Create(&kernel_module);
    if (module == NULL)
        return NULL;
    return module;
}
