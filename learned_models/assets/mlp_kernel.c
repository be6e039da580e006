/* Feature-major evaluation of small MLPs (lyagym's inference rollouts, learned_models/mlp_native.py).
 *
 * One call evaluates `members` networks of one structure, each on its own `rows` columns:
 *   in:  member e, feature k, row r at in[e * in_member_stride + k * in_feature_stride + r]
 *   out: member e, output j, row r at out[e * out_member_stride + j * out_feature_stride + r]
 * Rows go through the whole network in tiles of WIDE * VL rows (64 with AVX-512; one vector's
 * worth at the tail), so a tile's hidden activations never leave the core's L1/L2 cache and no
 * layer pays a library's per-call setup: that, not a faster product, is what this file is for. Weights come packed by blocks of JB
 * outputs (`pack_layer` in mlp_native.py): for each block its (K, JB) transposed weights, then
 * its JB biases. Written with GCC/Clang vector extensions, so the compiler picks the widest
 * vectors the machine has (-march=native). One thread: where torch runs several, mlp_native
 * leaves the network to torch's own threaded layers (threads of ours would compete with the
 * spinning workers of torch's OpenMP pool).
 */
#include <stdlib.h>
#include <string.h>

/* Vector length and tile shape by what the compiler may use here: a tile of JB outputs x WIDE
 * vectors of rows keeps its JB * WIDE accumulators in registers (AVX-512 has 32 vector registers,
 * AVX2 16). Wider vectors written for a narrower machine would compile, as several instructions
 * each, but their accumulators would no longer fit. Without AVX2 and FMA (SSE, NEON) the build
 * has 4-float vectors, and mlp_native does not use it (lyagym_mlp_vector_floats): measured with
 * SSE2 it ran 4x slower than torch's layers, which pick their instructions at run time. */
#if defined(__AVX512F__)
#define VL 16
#define WIDE 4
#elif defined(__AVX2__) && defined(__FMA__)
#define VL 8
#define WIDE 2
#else
#define VL 4
#define WIDE 2
#endif
#define JB 6 /* outputs per register tile; the packing in mlp_native.py uses the same */

typedef float vf __attribute__((vector_size(sizeof(float) * VL)));
typedef int vi __attribute__((vector_size(sizeof(float) * VL)));
typedef float vf_unaligned __attribute__((vector_size(sizeof(float) * VL), aligned(4)));

enum { ACT_NONE = 0, ACT_RELU = 1, ACT_SILU = 2 };

static inline vf load(const float *p) { return *(const vf_unaligned *)p; }
static inline void store(float *p, vf v) { *(vf_unaligned *)p = v; }
static inline vf splat(float s) { return (vf){} + s; }
static inline vf select_(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }

/* exp(t) for t in [-87.3, 88.3] (clamped): Cody-Waite reduction and Cephes' expf polynomial. */
static inline vf exp_(vf t) {
    t = select_(t > 88.3f, splat(88.3f), t);
    t = select_(t < -87.3f, splat(-87.3f), t);
    const vf magic = splat(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */
    vf k = t * 1.44269504088896341f + magic;
    vf n = k - magic;
    vi e = (vi)k - (vi)magic; /* the integer n */
    vf r = t - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    vf p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    vf y = p * (r * r) + r + 1.0f;
    return y * (vf)((e + 127) << 23);
}

static inline vf activate(vf a, int act) {
    if (act == ACT_RELU) return select_(a < 0.0f, splat(0.0f), a); /* a NaN stays a NaN, as in torch */
    if (act == ACT_SILU) return a / (1.0f + exp_(-a));
    return a;
}

/* One layer on RB vectors of rows: out[j][r] = act(b[j] + sum_k W[j][k] in[k][r]). */
#define DEFINE_LAYER(NAME, RB)                                                                                  \
    static void NAME(const float *in, long in_stride, long K, float *out, long out_stride, long J,              \
                     const float *packed, int act) {                                                            \
        long j0 = 0;                                                                                            \
        for (; j0 + JB <= J; j0 += JB) {                                                                        \
            const float *w = packed + j0 * (K + 1);                                                             \
            vf acc[JB][RB];                                                                                     \
            for (int j = 0; j < JB; j++)                                                                        \
                for (int r = 0; r < RB; r++) acc[j][r] = splat(w[K * JB + j]);                                  \
            for (long k = 0; k < K; k++) {                                                                      \
                vf h[RB];                                                                                       \
                for (int r = 0; r < RB; r++) h[r] = load(in + k * in_stride + VL * r);                          \
                for (int j = 0; j < JB; j++) {                                                                  \
                    float s = w[k * JB + j];                                                                    \
                    for (int r = 0; r < RB; r++) acc[j][r] += s * h[r];                                         \
                }                                                                                               \
            }                                                                                                   \
            for (int j = 0; j < JB; j++)                                                                        \
                for (int r = 0; r < RB; r++) store(out + (j0 + j) * out_stride + VL * r, activate(acc[j][r], act)); \
        }                                                                                                       \
        long rest = J - j0; /* the last block, narrower than JB: packed as (K, rest) then its biases */        \
        const float *w = packed + j0 * (K + 1);                                                                 \
        for (long j = 0; j < rest; j++) {                                                                       \
            vf acc[RB];                                                                                         \
            for (int r = 0; r < RB; r++) acc[r] = splat(w[K * rest + j]);                                       \
            for (long k = 0; k < K; k++) {                                                                      \
                float s = w[k * rest + j];                                                                      \
                for (int r = 0; r < RB; r++) acc[r] += s * load(in + k * in_stride + VL * r);                   \
            }                                                                                                   \
            for (int r = 0; r < RB; r++) store(out + (j0 + j) * out_stride + VL * r, activate(acc[r], act));    \
        }                                                                                                       \
    }

DEFINE_LAYER(layer_wide, WIDE)
DEFINE_LAYER(layer_narrow, 1)

typedef struct {
    long layers;
    const long *widths;         /* layers + 1 */
    const int *acts;            /* per layer */
    const float *const *packed; /* member-major: packed[e * layers + i] */
    const float *in;
    long in_member_stride, in_stride;
    float *out;
    long out_member_stride, out_stride;
    long rows, members;
} job_t;

/* A member's rows split into tiles: full WIDE * VL-row tiles, then VL-row tiles for the tail. */
static long tiles_per_member(long rows) { return rows / (WIDE * VL) + (rows % (WIDE * VL) + VL - 1) / VL; }

static void tile_span(long rows, long t, long *start, long *width) {
    long wide = rows / (WIDE * VL);
    if (t < wide) { *start = t * WIDE * VL; *width = WIDE * VL; return; }
    *start = wide * WIDE * VL + (t - wide) * VL;
    *width = VL;
}

static int run(const job_t *job) {
    long maxw = 0;
    for (long i = 0; i <= job->layers; i++)
        if (job->widths[i] > maxw) maxw = job->widths[i];
    const long T = WIDE * VL;
    float *scratch = malloc(sizeof(float) * (size_t)(4 * maxw * T)); /* two hidden buffers, padded in and out */
    if (!scratch) return -1;
    float *bufs[2] = {scratch, scratch + maxw * T}, *pad_in = scratch + 2 * maxw * T, *pad_out = scratch + 3 * maxw * T;
    long per = tiles_per_member(job->rows), L = job->layers;
    for (long g = 0; g < job->members * per; g++) {
        long e = g / per, start, width;
        tile_span(job->rows, g % per, &start, &width);
        long valid = job->rows - start < width ? job->rows - start : width;
        const float *src = job->in + e * job->in_member_stride + start;
        long src_stride = job->in_stride;
        if (valid < width) { /* a partial tile: read from a zero-padded copy */
            for (long k = 0; k < job->widths[0]; k++) {
                memcpy(pad_in + k * T, src + k * src_stride, sizeof(float) * (size_t)valid);
                memset(pad_in + k * T + valid, 0, sizeof(float) * (size_t)(width - valid));
            }
            src = pad_in, src_stride = T;
        }
        float *dst_final = job->out + e * job->out_member_stride + start;
        for (long i = 0; i < L; i++) {
            int last = i == L - 1;
            float *dst = last ? (valid < width ? pad_out : dst_final) : bufs[i % 2];
            long dst_stride = last && valid == width ? job->out_stride : T;
            const float *w = job->packed[e * L + i];
            if (width == T) layer_wide(src, src_stride, job->widths[i], dst, dst_stride, job->widths[i + 1], w, job->acts[i]);
            else layer_narrow(src, src_stride, job->widths[i], dst, dst_stride, job->widths[i + 1], w, job->acts[i]);
            src = dst, src_stride = dst_stride;
        }
        if (valid < width)
            for (long j = 0; j < job->widths[L]; j++) memcpy(dst_final + j * job->out_stride, pad_out + j * T, sizeof(float) * (size_t)valid);
    }
    free(scratch);
    return 0;
}

/* Returns 0, or -1 where the scratch memory could not be had (nothing is then guaranteed written). */
int lyagym_mlp(long layers, const long *widths, const int *acts, const float *const *packed, long members,
               const float *in, long in_member_stride, long in_stride, float *out, long out_member_stride,
               long out_stride, long rows) {
    job_t job = {layers, widths, acts, packed, in, in_member_stride, in_stride, out, out_member_stride, out_stride,
                 rows, members};
    return run(&job);
}

/* Floats per vector of this build: 16 (AVX-512), 8 (AVX2 with FMA) or 4 (anything else). */
int lyagym_mlp_vector_floats(void) { return VL; }
