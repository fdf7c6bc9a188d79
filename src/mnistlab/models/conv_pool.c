/* relu(max_pool2d(conv2d(x, w, b) * s, 2)) per member of a stack, forward and backward, on the
 * CPU: the four conv → pool → ReLU blocks of the PyTorch tutorial's STN (28×28 inputs).
 *
 * Why by hand (the measurements: README, Timings): oneDNN ran these small grouped layers far
 * below the core's matmul rate, and much of their time went to layout copies, zero fills and
 * pooling around the convolutions. Here the forward convolves one image at a time into an
 * L1-sized buffer and pools it there; the backward uses what the pool threw away: only each
 * window's maximum gets a gradient, so the kernel and input gradients visit a quarter of the
 * positions a dense backward does, and nothing is stored at the convolution's resolution.
 *
 * Semantics are torch's, NaN included: each window's first maximum in row-major order wins
 * (a NaN wins, and the last NaN), ReLU passes NaN, and a gradient flows wherever the output is
 * not <= 0. The optional scale s [K, B, Co] is Dropout2d's mask, applied before the pool as
 * torch does. Sums run in another order than oneDNN's: results agree to rounding, not to bits.
 * Single-threaded: in a two-thread process this kernel was no faster split over members
 * (native.py), and each `run all --jobs 2` worker has one thread anyway.
 *
 * Layouts (contiguous): x and its gradient gx [K, B, Cin, H, H], w [K, Co, Cin, ks, ks],
 * bias [K, Co], out / gout / code [K, B, Co, hp, hp] with hp = (H - ks + 1) / 2; code holds each
 * window's argmax 0..3, or DEAD where the output is 0 (no gradient). Each image is copied into
 * an L1-sized buffer with padded rows first (8-wide loads stay inside; it measured faster than
 * reading padded tensors in place).
 *
 * Safety: both entry points check the shapes their blocks and buffers were written for and
 * return NOT_COVERED instead of touching memory otherwise (native.py checks the tensors before
 * the call, and again here, so a wrong call is an exception, never a crash). Scratch buffers
 * live on the heap, zeroed once per call, so a worker thread's small stack is never at risk and
 * no lane is read that was not written (the conv buffer's columns past a row's outputs stay 0).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PITCH 32  /* row pitch of the padded image and conv buffers: >= 3 vectors + ks - 1 */
#define MAXCIN 16 /* native.py checks these bounds */
#define MAXCO 32
#define MAXH 28
#define DEAD 255
#define NOT_COVERED 1 /* return codes: 0 = done */
#define NO_MEMORY 2

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));
typedef int v8i __attribute__((vector_size(32)));

static inline v8 load8(const float *p) { return *(const v8u *)p; }
static inline void store8(float *p, v8 v) { *(v8u *)p = v; }
static inline v8 sel(v8i t, v8 a, v8 b) { return (v8)(((v8i)a & t) | ((v8i)b & ~t)); }
static inline v8i seli(v8i t, v8i a, v8i b) { return (a & t) | (b & ~t); }

/* The shapes the register blocks and buffers cover (native.py's BLOCKS and bounds). */
static int covered(int K, int B, int cin, int co, int h, int ks) {
    const int ho = h - ks + 1;
    if (K < 1 || B < 0 || cin < 1 || cin > MAXCIN || co < 1 || co > MAXCO || h > MAXH) return 0;
    if (ho < 2 || ho > 24 || (ks != 5 && ks != 7)) return 0;
    const int block = ks == 7 ? (ho > 8 ? 8 : 0) : (ho > 8 ? 5 : 10);
    if (block == 0 || co % block) return 0;
    return cin == 1 || (ks == 5 && (cin % 5 == 0 || cin % 4 == 0));
}

/* Zeroed, 32-byte aligned scratch of n floats (NULL when out of memory). */
static float *scratch(size_t n) {
    const size_t bytes = (n * sizeof(float) + 31) / 32 * 32;
    float *p = aligned_alloc(32, bytes);
    if (p) memset(p, 0, bytes);
    return p;
}

/* Image (cin planes h×h) → rows of pitch PITCH. Columns >= h are zeroed once per call by the
 * caller, so 8-wide loads stay inside the buffer and the padding never reaches a result. */
static inline void pad_image(const float *restrict x, int cin, int h, float *restrict xp) {
    for (int r = 0; r < cin * h; ++r)
        for (int c = 0; c < h; ++c) xp[r * PITCH + c] = x[r * h + c];
}

/* Rows 0..ho of output channels [o0, o0 + n) of one padded image into buf[o][y][0..8*nv). */
static inline __attribute__((always_inline)) void conv_rows(
    const float *restrict xp, int cin, int h, int pitch, const float *restrict w,
    const float *restrict bias, const int ks, int ho, int o0, float *restrict buf, const int n,
    const int nv) {
    for (int y = 0; y < ho; ++y) {
        v8 acc[10][3];
#pragma GCC unroll 10
        for (int o = 0; o < n; ++o)
#pragma GCC unroll 3
            for (int v = 0; v < nv; ++v) acc[o][v] = (v8){0} + bias[o0 + o];
        for (int ci = 0; ci < cin; ++ci)
            for (int kh = 0; kh < ks; ++kh) {
                const float *row = xp + (ci * h + y + kh) * pitch;
                const float *wk = w + ((o0 * cin + ci) * ks + kh) * ks;
#pragma GCC unroll 8
                for (int kw = 0; kw < ks; ++kw) {
                    v8 xv[3];
#pragma GCC unroll 3
                    for (int v = 0; v < nv; ++v) xv[v] = load8(row + kw + 8 * v);
#pragma GCC unroll 10
                    for (int o = 0; o < n; ++o) {
                        const float wv = wk[o * cin * ks * ks + kw];
#pragma GCC unroll 3
                        for (int v = 0; v < nv; ++v) acc[o][v] += xv[v] * wv;
                    }
                }
            }
#pragma GCC unroll 10
        for (int o = 0; o < n; ++o)
#pragma GCC unroll 3
            for (int v = 0; v < nv; ++v) store8(buf + ((o0 + o) * ho + y) * PITCH + 8 * v, acc[o][v]);
    }
}

/* The register blocks compiled (native.py's BLOCKS): (ks, vectors per row) → channels. */
static void conv_image(const float *xp, int cin, int h, const float *w, const float *bias, int ks,
                       int co, float *buf) {
    const int p = PITCH;
    const int ho = h - ks + 1;
    if (ks == 7)
        for (int o0 = 0; o0 < co; o0 += 8) conv_rows(xp, cin, h, p, w, bias, 7, ho, o0, buf, 8, 3);
    else if (ho > 8)
        for (int o0 = 0; o0 < co; o0 += 5) conv_rows(xp, cin, h, p, w, bias, 5, ho, o0, buf, 5, 3);
    else
        for (int o0 = 0; o0 < co; o0 += 10)
            conv_rows(xp, cin, h, p, w, bias, 5, ho, o0, buf, 10, 1);
}

/* One pooled row (nh × 8 wide, nh = 1 or 2) from scaled conv rows r0, r1; then ReLU and window
 * codes. The lanes read past a row's outputs were zeroed with the buffer, never left unset. */
static inline void pool_row(const float *r0, const float *r1, float s, int nh, float *m, int *c) {
    const v8i even = {0, 2, 4, 6, 8, 10, 12, 14}, odd = even + 1;
    for (int h = 0; h < nh; ++h) {
        const v8 a0 = load8(r0 + 16 * h) * s, a1 = load8(r0 + 16 * h + 8) * s;
        const v8 b0 = load8(r1 + 16 * h) * s, b1 = load8(r1 + 16 * h + 8) * s;
        const v8 q[4] = {__builtin_shuffle(a0, a1, even), __builtin_shuffle(a0, a1, odd),
                         __builtin_shuffle(b0, b1, even), __builtin_shuffle(b0, b1, odd)};
        v8 best = q[0];
        v8i code = {0};
        for (int i = 1; i < 4; ++i) {
            const v8i t = (q[i] > best) | (q[i] != q[i]);
            best = sel(t, q[i], best);
            code = seli(t, (v8i){0} + i, code);
        }
        const v8i dead = best <= (v8){0};
        store8(m + 8 * h, sel(dead, (v8){0}, best));
        const v8i cc = seli(dead, (v8i){0} + DEAD, code);
        memcpy(c + 8 * h, &cc, sizeof cc);
    }
}

int cpr_forward(const float *x, const float *w, const float *bias, const float *scale, int K,
                int B, int cin, int co, int h, int ks, float *out, uint8_t *code) {
    if (!covered(K, B, cin, co, h, ks)) return NOT_COVERED;
    const int ho = h - ks + 1, hp = ho / 2, plane = hp * hp, nh = (hp + 7) / 8;
    float *xp = scratch((size_t)cin * h * PITCH), *buf = scratch((size_t)co * ho * PITCH);
    if (!xp || !buf) {
        free(xp), free(buf);
        return NO_MEMORY;
    }
    float m[16] = {0};
    int c[16] = {0};
    for (int k = 0; k < K; ++k)
        for (int b = 0; b < B; ++b) {
            const int64_t img = (int64_t)k * B + b;
            pad_image(x + img * cin * h * h, cin, h, xp);
            conv_image(xp, cin, h, w + k * co * cin * ks * ks, bias + k * co, ks, co, buf);
            for (int o = 0; o < co; ++o) {
                const float s = scale ? scale[img * co + o] : 1.f;
                float *dst = out + (img * co + o) * plane;
                uint8_t *cd = code + (img * co + o) * plane;
                for (int py = 0; py < hp; ++py) {
                    const float *r0 = buf + (o * ho + 2 * py) * PITCH;
                    pool_row(r0, r0 + PITCH, s, nh, m, c);
                    for (int px = 0; px < hp; ++px)
                        dst[py * hp + px] = m[px], cd[py * hp + px] = (uint8_t)c[px];
                }
            }
        }
    free(xp), free(buf);
    return 0;
}

/* One image's gradients through output channel o from input channels [ci0, ci0 + cb): the
 * kernel-gradient rows gwa [cb][ks][8] (lanes >= ks unused) are loaded into registers, updated
 * and stored back; the input gradient gx (NULL: not wanted) is accumulated; returns the bias
 * gradient's share. wr: the kernel rows, padded alike. Windows are visited 5 apart in a row, so
 * an input-gradient row stored for one is not read back, part-overlapped, by the next (a
 * store-forwarding stall, measurable on the 5×5 layer). */
static inline __attribute__((always_inline)) float backward_block(
    const float *restrict x, const float *restrict wr, const uint8_t *restrict code,
    const float *restrict g, float s, int h, int pitch, const int ks, int hp, const int cb,
    float *restrict gwa, float *restrict gx) {
    v8 acc[5][7];
    float bsum = 0.f;
#pragma GCC unroll 5
    for (int ci = 0; ci < cb; ++ci)
#pragma GCC unroll 7
        for (int kh = 0; kh < ks; ++kh) acc[ci][kh] = load8(gwa + (ci * ks + kh) * 8);
    for (int py = 0; py < hp; ++py)
        for (int j = 0; j < 5; ++j)
            for (int px = j; px < hp; px += 5) {
                const int p = py * hp + px, c = code[p];
                const float v = g[p] * s;
                if (c == DEAD || v == 0.f) continue;
                bsum += v;
                const int at = (2 * py + (c >> 1)) * pitch + 2 * px + (c & 1);
#pragma GCC unroll 5
                for (int ci = 0; ci < cb; ++ci)
#pragma GCC unroll 7
                    for (int kh = 0; kh < ks; ++kh) {
                        const int off = at + (ci * h + kh) * pitch, r = (ci * ks + kh) * 8;
                        acc[ci][kh] += load8(x + off) * v;
                        if (gx) store8(gx + off, load8(gx + off) + load8(wr + r) * v);
                    }
            }
#pragma GCC unroll 5
    for (int ci = 0; ci < cb; ++ci)
#pragma GCC unroll 7
        for (int kh = 0; kh < ks; ++kh) store8(gwa + (ci * ks + kh) * 8, acc[ci][kh]);
    return bsum;
}

/* One image's gradients, all output channels; the blocks compiled (native.py checks): one
 * input channel with 5×5 or 7×7 kernels, or an even number of them with 5×5, two at a time. */
static void backward_image(const float *x, const float *wpad, const uint8_t *code, const float *g,
                           const float *scale, int cin, int co, int h, int pitch, int ks, int hp,
                           float *gwa, float *gb, float *gx) {
    const int plane = hp * hp, chan = h * pitch;
    for (int o = 0; o < co; ++o) {
        const float s = scale ? scale[o] : 1.f;
        const uint8_t *c = code + o * plane;
        const float *go = g + o * plane, *wo = wpad + o * cin * ks * 8;
        float *ga = gwa + o * cin * ks * 8;
        if (cin == 1 && ks == 7)
            gb[o] += backward_block(x, wo, c, go, s, h, pitch, 7, hp, 1, ga, gx);
        else if (cin == 1)
            gb[o] += backward_block(x, wo, c, go, s, h, pitch, 5, hp, 1, ga, gx);
        else
            for (int ci = 0; ci < cin; ci += cin % 5 ? 4 : 5) {
                const float *xc = x + ci * chan, *wc = wo + ci * 40;
                float *gc = gx ? gx + ci * chan : 0, part;
                if (cin % 5 == 0)
                    part = backward_block(xc, wc, c, go, s, h, pitch, 5, hp, 5, ga + ci * 40, gc);
                else
                    part = backward_block(xc, wc, c, go, s, h, pitch, 5, hp, 4, ga + ci * 40, gc);
                if (ci == 0) gb[o] += part;
            }
    }
}

/* Gradients of members 0..K: gw, gb and gx (NULL: not wanted) overwritten. */
int cpr_backward(const float *x, const float *w, const float *scale, const uint8_t *code,
                 const float *gout, int K, int B, int cin, int co, int h, int ks, float *gw,
                 float *gb, float *gx) {
    if (!covered(K, B, cin, co, h, ks)) return NOT_COVERED;
    const int hp = (h - ks + 1) / 2, plane = hp * hp, rows = cin * ks, image = cin * h * h;
    const size_t padded = (size_t)cin * h * PITCH, kernels = (size_t)co * rows * 8;
    float *xp = scratch(padded), *gxp = scratch(padded);
    float *wpad = scratch(kernels), *gwa = scratch(kernels);
    if (!xp || !gxp || !wpad || !gwa) {
        free(xp), free(gxp), free(wpad), free(gwa);
        return NO_MEMORY;
    }
    for (int k = 0; k < K; ++k) {
        const float *wk = w + k * co * rows * ks;
        for (int r = 0; r < co * rows; ++r)
            for (int kw = 0; kw < 8; ++kw) wpad[r * 8 + kw] = kw < ks ? wk[r * ks + kw] : 0.f;
        memset(gwa, 0, sizeof(float) * co * rows * 8);
        memset(gb + k * co, 0, sizeof(float) * co);
        for (int b = 0; b < B; ++b) {
            const int64_t img = (int64_t)k * B + b;
            pad_image(x + img * image, cin, h, xp);
            if (gx) memset(gxp, 0, sizeof(float) * cin * h * PITCH);
            backward_image(xp, wpad, code + img * co * plane, gout + img * co * plane,
                           scale ? scale + img * co : 0, cin, co, h, PITCH, ks, hp, gwa,
                           gb + k * co, gx ? gxp : 0);
            if (gx)
                for (int r = 0; r < cin * h; ++r)
                    for (int c = 0; c < h; ++c) gx[img * image + r * h + c] = gxp[r * PITCH + c];
        }
        float *gwk = gw + k * co * rows * ks;
        for (int r = 0; r < co * rows; ++r)
            for (int kw = 0; kw < ks; ++kw) gwk[r * ks + kw] = gwa[r * 8 + kw];
    }
    free(xp), free(gxp), free(wpad), free(gwa);
    return 0;
}
