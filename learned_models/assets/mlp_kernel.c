/* Feature-major evaluation of small MLPs (lyagym's inference rollouts, learned_models/mlp_native.py),
 * below it a world model's whole rollout (learned_models/rollout_native.py), and last the training
 * passes of stacked MLPs, forward and backward (learned_models/mlp_train_native.py).
 *
 * One call evaluates `members` networks of one structure, each on its own `rows` columns:
 *   in:  member e, feature k, row r at in[e * in_member_stride + k * in_feature_stride + r]
 *   out: member e, output j, row r at out[e * out_member_stride + j * out_feature_stride + r]
 * Rows go through the whole network in tiles of WIDE * VL rows (64 with AVX-512; one vector's
 * worth at the tail), so a tile's hidden activations never leave the core's L1/L2 cache and no
 * layer pays a library's per-call setup: that, not a faster product, is what this file is for. Weights come packed by blocks of JB
 * outputs (`pack_layer` in mlp_native.py): for each block its (K, JB) transposed weights, then
 * its JB biases. Written with GCC/Clang vector extensions, so the compiler picks the widest
 * vectors the machine has (-march=native). The MLP runs on one thread: where torch runs several,
 * mlp_native leaves the network to torch's own threaded layers (threads of ours would compete with
 * the spinning workers of torch's OpenMP pool between the many short calls of a rollout).
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

/* ---------------------------------------------------------------------------------------------
 * A world model's rollout (learned_models/rollout_native.py): certified StableDynamics /
 * StableControlledDynamics members, each stepping its own rows for the whole horizon, a tile of
 * rows at a time. A step is the members' own (Manek & Kolter): at every integrator stage the
 * field fhat(z, u) - fhat(x_eq, 0) projected onto the decrease of V (eq. 10, with the input's
 * slack sigma(z, u) and the rounding guard), V from the ICNN (eq. 11) in difference form against
 * x_eq and its gradient by the explicit reverse pass, then the rescale that keeps V(x_next) <=
 * exp(-alpha dt) V(x) + the slack's integral, then (an ensemble's PETS sampling) the variance
 * head's noise, then angle wrapping. Everything about x_eq (the ICNN's reference pre-activations,
 * fhat(x_eq, 0), grad g(x_eq)) is computed once in Python and handed in with the weights. A
 * "plain" model (SimpleDynamics) has the field fhat(z, u) alone: no centering, V or rescale.
 *
 * The structure comes as a list of longs read in order (rollout_native.py writes it), the
 * weights as one float block per member (offsets in floats into it), the scalars as doubles.
 * Tile buffers are feature-major with row stride TT = WIDE * VL; a tail tile uses VL of them.
 * Tiles are independent: threads take them from a shared counter, each with its own buffers.
 */
#include <float.h>
#include <math.h>
#include <pthread.h>

typedef void (*layer_fn)(const float *, long, long, float *, long, long, const float *, int);

typedef struct {
    long layers;
    const long *widths, *acts, *offsets; /* layers + 1 widths; per layer its activation and packed weights */
} net_t;

static const long *read_net(const long *p, net_t *net) {
    net->layers = *p++;
    net->widths = p;
    p += net->layers + 1;
    net->acts = p;
    p += net->layers;
    net->offsets = p;
    return p + net->layers;
}

enum { FHAT_MLP = 0, FHAT_DYNAMICS = 1, FHAT_CONTROL_AFFINE = 2 };

typedef struct {
    long n, m, k, fhat_kind, rk4, rescale, tangent, plain; /* plain: the field is fhat alone (SimpleDynamics) */
    net_t fhat;
    long in_scale, out_scale, fhat_eq;
    net_t sigma;
    long hidden;     /* the ICNN's hidden layers */
    const long *iw;  /* its widths, hidden + 1 (the last 1) */
    const long *fwd; /* hidden + 1 packed layers: W_0; [W_i | U_{i-1} / d]; the output layer the same */
    long p_ref;      /* the hidden layers' pre-activations at x_eq */
    long ud_last;    /* U_{hidden-1} / d, the output layer's z-path row */
    const long *bwd; /* hidden - 1 packed (U_i / d)^T, the reverse pass */
    long grad;       /* packed [W_0; ..; W_{hidden-1}]^T with W_hidden as bias: dg/dx from the deltas */
    long x_eq, dg_eq, rate; /* rate: alpha, exp(-alpha dt), (1 - exp(-alpha dt)) / alpha */
    net_t head;      /* the variance head, normalisation and (max_logvar - raw) / 2 folded in */
    long half_range;
    long wraps;
    const long *wrap;
} spec_t;

static void read_spec(const long *p, spec_t *s) {
    s->n = *p++, s->m = *p++, s->k = *p++, s->fhat_kind = *p++, s->rk4 = *p++, s->rescale = *p++, s->tangent = *p++, s->plain = *p++;
    p = read_net(p, &s->fhat);
    s->in_scale = *p++, s->out_scale = *p++, s->fhat_eq = *p++;
    p = read_net(p, &s->sigma);
    s->hidden = *p++;
    s->iw = p;
    p += s->hidden + 1;
    s->fwd = p;
    p += s->hidden + 1;
    s->p_ref = *p++, s->ud_last = *p++;
    s->bwd = p;
    p += s->hidden > 0 ? s->hidden - 1 : 0;
    s->grad = *p++, s->x_eq = *p++, s->dg_eq = *p++, s->rate = *p++;
    p = read_net(p, &s->head);
    s->half_range = *p++;
    s->wraps = *p++;
    s->wrap = p;
}

#define TT (WIDE * VL)

typedef struct {
    const spec_t *s;
    const float *mem; /* this member's weights */
    float d, d_out, eps, gain, dt;
    layer_fn layer;
    long nv; /* vectors of rows in this tile */
    /* tile buffers, TT floats per feature row */
    float *dx, *dx_sq, *pre, *M, *D, *g, *dg, **cat, *grad_V, *V, *fh, *net_in, *net_a, *net_b, *net_out;
    float *u, *u_scaled, *u_sq, *sig, *x, *y, *z, *f, *incr, *Vx, *sig_x, *noise;
} tile_t;

static inline vf max_(vf a, vf b) { return select_(a < b, b, a); } /* a NaN in a stays */
static inline vf min_(vf a, vf b) { return select_(a > b, b, a); }
static inline vf sign_pos(vf a) { return select_(a > 0.0f, splat(1.0f), select_(a == 0.0f, splat(0.0f), a * 0.0f)); } /* sign of a >= 0 (NaN stays) */

/* log(x) for x >= 1 (finite): Cephes' logf polynomial. */
static inline vf log_(vf x) {
    vi bits = (vi)x;
    vi e = ((bits >> 23) & 0xff) - 126; /* x = mant 2^e, mant in [0.5, 1) */
    vf mant = (vf)((bits & 0x007fffff) | 0x3f000000);
    vi small = mant < 0.707106781186547524f;
    e = e + small; /* the mask is -1 where true */
    mant = select_(small, mant + mant - 1.0f, mant - 1.0f);
    vf fe = __builtin_convertvector(e, vf);
    vf z = mant * mant;
    vf p = splat(7.0376836292e-2f);
    p = p * mant - 1.1514610310e-1f;
    p = p * mant + 1.1676998740e-1f;
    p = p * mant - 1.2420140846e-1f;
    p = p * mant + 1.4249322787e-1f;
    p = p * mant - 1.6668057665e-1f;
    p = p * mant + 2.0000714765e-1f;
    p = p * mant - 2.4999993993e-1f;
    p = p * mant + 3.3333331174e-1f;
    vf y = p * mant * z;
    y = y + fe * -2.12194440e-4f;
    y = y - 0.5f * z;
    return mant + y + fe * 0.693359375f;
}

/* softplus(t, beta = 2) as torch computes it: log(1 + exp(2 t)) / 2, t itself above 2 t = 20. */
static inline vf softplus2(vf t) {
    vf w = exp_(min_(t + t, splat(20.0f)));
    vf one_plus = 1.0f + w;
    vf q = one_plus - 1.0f;
    vf log1p = select_(q == 0.0f, w, log_(one_plus) * (w / q)); /* log1p(w) to a float's precision */
    return select_(t + t > 20.0f, t, 0.5f * log1p);
}

#define ROWS(buf, j) ((buf) + (j) * TT)
#define FOR_V(v) for (long v = 0; v < t->nv * VL; v += VL)

static void run_net(tile_t *t, const net_t *net, const float *in, float *out) {
    const float *src = in;
    for (long i = 0; i < net->layers; i++) {
        float *dst = i == net->layers - 1 ? out : (i % 2 ? t->net_b : t->net_a);
        t->layer(src, TT, net->widths[i], dst, TT, net->widths[i + 1], t->mem + net->offsets[i], (int)net->acts[i]);
        src = dst;
    }
}

/* g(x) - g(x_eq) into t->g and, with `gradient`, dg/dx into t->dg, from dx = x - x_eq (in t->dx):
 * eq. 11 in the difference form of icnn._centered_activation, then the reverse pass. */
static void icnn(tile_t *t, int gradient) {
    const spec_t *s = t->s;
    long n = s->n, H = s->hidden, off[64];
    for (long i = 1; i <= H; i++)
        for (long j = 0; j < n; j++) memcpy(ROWS(t->cat[i], j), ROWS(t->dx, j), sizeof(float) * TT);
    off[0] = 0;
    for (long i = 0; i < H; i++) {
        long w = s->iw[i];
        off[i + 1] = off[i] + w;
        if (i == 0) t->layer(t->dx, TT, n, t->pre, TT, w, t->mem + s->fwd[0], ACT_NONE);
        else t->layer(t->cat[i], TT, n + s->iw[i - 1], t->pre, TT, w, t->mem + s->fwd[i], ACT_NONE);
        const float *p_ref = t->mem + s->p_ref + off[i];
        float *zh = ROWS(t->cat[i + 1], n), *Mi = ROWS(t->M, off[i]);
        for (long j = 0; j < w; j++) {
            float p = p_ref[j], P = p < 0.0f ? 0.0f : (p > t->d ? t->d : p), e = p - P;
            FOR_V(v) {
                vf delta = load(ROWS(t->pre, j) + v);
                vf dC = min_(max_(delta + e, splat(-P)), splat(t->d - P));
                vf Mv = P + dC;
                store(ROWS(zh, j) + v, Mv * delta + dC * (e - 0.5f * dC));
                store(ROWS(Mi, j) + v, Mv);
            }
        }
    }
    t->layer(t->cat[H], TT, n + s->iw[H - 1], t->g, TT, 1, t->mem + s->fwd[H], ACT_NONE);
    if (!gradient) return;
    /* delta_{H-1} = m_{H-1} U_{H-1} / d, delta_i = ((U_i / d)^T delta_{i+1}) m_i; dg/dx = sum_i W_i^T delta_i + W_H */
    const float *ud = t->mem + s->ud_last;
    for (long j = 0; j < s->iw[H - 1]; j++)
        FOR_V(v) store(ROWS(t->D, off[H - 1] + j) + v, load(ROWS(t->M, off[H - 1] + j) + v) * ud[j]);
    for (long i = H - 2; i >= 0; i--) {
        t->layer(ROWS(t->D, off[i + 1]), TT, s->iw[i + 1], ROWS(t->D, off[i]), TT, s->iw[i], t->mem + s->bwd[i], ACT_NONE);
        for (long j = 0; j < s->iw[i]; j++)
            FOR_V(v) store(ROWS(t->D, off[i] + j) + v, load(ROWS(t->D, off[i] + j) + v) * load(ROWS(t->M, off[i] + j) + v));
    }
    t->layer(t->D, TT, off[H], t->dg, TT, n, t->mem + s->grad, ACT_NONE);
}

/* dx = z - x_eq and its squared norm; with `shift`, g's tangent plane at x_eq, dx . grad g(x_eq), into shift. */
static void offsets_from_eq(tile_t *t, const float *z) {
    const spec_t *s = t->s;
    const float *x_eq = t->mem + s->x_eq;
    FOR_V(v) store(t->dx_sq + v, splat(0.0f));
    for (long j = 0; j < s->n; j++)
        FOR_V(v) {
            vf d = load(ROWS(z, j) + v) - x_eq[j];
            store(ROWS(t->dx, j) + v, d);
            store(t->dx_sq + v, load(t->dx_sq + v) + d * d);
        }
}

/* g(z) - g(x_eq), minus the tangent term with the tangent shift: s of eq. 12 before the pin. */
static vf shifted(tile_t *t, long v) {
    vf s = load(t->g + v);
    if (t->s->tangent) {
        const float *dg_eq = t->mem + t->s->dg_eq;
        for (long j = 0; j < t->s->n; j++) s = s - load(ROWS(t->dx, j) + v) * dg_eq[j];
    }
    return s;
}

/* The first-layer input of a DynamicsNet fhat (or of the variance head) at z, into t->net_in:
 * [sin q, cos q, the rest (scaled for fhat), u (scaled for fhat; with_u)]. */
static void features(tile_t *t, const float *z, int scaled, int with_u) {
    const spec_t *s = t->s;
    long n = s->n, k = s->k, m = s->m, row = 2 * k;
    const float *in_scale = t->mem + s->in_scale;
    for (long j = 0; j < k; j++) {
        for (long r = 0; r < t->nv * VL; r++) {
            float q = ROWS(z, j)[r];
            ROWS(t->net_in, j)[r] = sinf(q);
            ROWS(t->net_in, k + j)[r] = cosf(q);
        }
    }
    for (long j = k; j < n; j++, row++)
        FOR_V(v) store(ROWS(t->net_in, row) + v, scaled ? load(ROWS(z, j) + v) / in_scale[j - k] : load(ROWS(z, j) + v));
    if (with_u)
        for (long j = 0; j < m; j++, row++) memcpy(ROWS(t->net_in, row), ROWS(scaled ? t->u_scaled : t->u, j), sizeof(float) * TT);
}

/* fhat(z, u) into out (n rows), minus fhat(x_eq, 0) when `centered`. */
static void fhat_at(tile_t *t, const float *z, float *out, int centered) {
    const spec_t *s = t->s;
    long n = s->n, m = s->m;
    if (s->fhat_kind == FHAT_MLP) {
        for (long j = 0; j < n; j++) memcpy(ROWS(t->net_in, j), ROWS(z, j), sizeof(float) * TT);
        for (long j = 0; j < m; j++) memcpy(ROWS(t->net_in, n + j), ROWS(t->u, j), sizeof(float) * TT);
    } else {
        features(t, z, 1, s->fhat_kind == FHAT_DYNAMICS);
    }
    run_net(t, &s->fhat, t->net_in, t->net_out);
    const float *out_scale = t->mem + s->out_scale, *fhat_eq = t->mem + s->fhat_eq;
    for (long i = 0; i < n; i++)
        FOR_V(v) {
            vf o = load(ROWS(t->net_out, i) + v);
            if (s->fhat_kind == FHAT_CONTROL_AFFINE) {
                vf gu = splat(0.0f);
                for (long j = 0; j < m; j++) gu = gu + load(ROWS(t->net_out, n + i * m + j) + v) * load(ROWS(t->u_scaled, j) + v);
                o = o + gu;
            }
            if (s->fhat_kind != FHAT_MLP) o = o * out_scale[i];
            store(ROWS(out, i) + v, centered ? o - fhat_eq[i] : o);
        }
}

/* The certified field at z (StableDynamics._field_and_V, eq. 10) into f; V(z) and sigma(z, u)
 * also into Vz, sigz when given (the rescale's, from the first stage). */
static void field(tile_t *t, const float *z, float *f, float *Vz, float *sigz) {
    const spec_t *s = t->s;
    long n = s->n, m = s->m;
    if (s->plain) {
        fhat_at(t, z, f, 0);
        return;
    }
    const float *rate = t->mem + s->rate;
    float alpha = rate[0], inv_d = 1.0f / t->d_out, guard = (float)((4 * n + 8) * FLT_EPSILON / 2);
    offsets_from_eq(t, z);
    icnn(t, 1);
    /* eq. 12: V = sigma(s) + eps ||dx||^2 (s pinned to 0 at x_eq), grad V = sigma'(s) grad s + 2 eps dx */
    const float *dg_eq = t->mem + s->dg_eq;
    FOR_V(v) {
        vf sv = shifted(t, v) * sign_pos(load(t->dx_sq + v));
        vf mv = min_(max_(sv, splat(0.0f)), splat(t->d_out));
        store(t->V + v, load(t->dx_sq + v) * t->eps + inv_d * (mv * (sv - 0.5f * mv)));
        for (long j = 0; j < n; j++) {
            vf dshift = load(ROWS(t->dg, j) + v);
            if (s->tangent) dshift = dshift - dg_eq[j];
            store(ROWS(t->grad_V, j) + v, load(ROWS(t->dx, j) + v) * (2.0f * t->eps) + inv_d * (mv * dshift));
        }
    }
    fhat_at(t, z, t->fh, 1);
    /* sigma(z, u) = gamma sigmoid(s(z, u)) ||u||^2 */
    if (m) {
        for (long j = 0; j < n; j++) memcpy(ROWS(t->net_in, j), ROWS(z, j), sizeof(float) * TT);
        for (long j = 0; j < m; j++) memcpy(ROWS(t->net_in, n + j), ROWS(t->u, j), sizeof(float) * TT);
        run_net(t, &s->sigma, t->net_in, t->net_out);
        FOR_V(v) store(t->sig + v, t->gain * (1.0f / (1.0f + exp_(-load(t->net_out + v)))) * load(t->u_sq + v));
    }
    /* eq. 10: f = keep (fhat - grad V relu(grad V . fhat + alpha V - sigma + guard) / ||grad V||^2) */
    FOR_V(v) {
        vf dot = splat(0.0f), size = splat(0.0f), sq = splat(0.0f);
        for (long j = 0; j < n; j++) {
            vf term = load(ROWS(t->grad_V, j) + v) * load(ROWS(t->fh, j) + v);
            dot = dot + term;
            size = size + select_(term < 0.0f, -term, term);
            vf gj = load(ROWS(t->grad_V, j) + v);
            sq = sq + gj * gj;
        }
        vf Vv = load(t->V + v), sg = m ? load(t->sig + v) : splat(0.0f);
        vf excess = dot + alpha * Vv - sg + (size + alpha * Vv + sg) * guard;
        vf coef = min_(max_(excess, splat(0.0f)) / max_(sq, splat(FLT_MIN)), splat(sqrtf(FLT_MAX)));
        vf keep = sign_pos(load(t->dx_sq + v) + (m ? load(t->u_sq + v) : splat(0.0f)));
        for (long j = 0; j < n; j++)
            store(ROWS(f, j) + v, (load(ROWS(t->fh, j) + v) - load(ROWS(t->grad_V, j) + v) * coef) * keep);
        if (Vz) store(Vz + v, Vv);
        if (sigz && m) store(sigz + v, sg);
    }
}

/* One step of a tile from t->x (with t->u set) into t->y. */
static void step(tile_t *t, const float *noise) {
    const spec_t *s = t->s;
    long n = s->n;
    float h = t->dt;
    if (!s->rk4) {
        field(t, t->x, t->f, t->Vx, t->sig_x);
        for (long j = 0; j < n; j++) FOR_V(v) store(ROWS(t->y, j) + v, load(ROWS(t->x, j) + v) + h * load(ROWS(t->f, j) + v));
    } else {
        static const float weight[4] = {1.0f, 2.0f, 2.0f, 1.0f}, advance[3] = {0.5f, 0.5f, 1.0f};
        for (int stage = 0; stage < 4; stage++) {
            const float *z = t->x;
            if (stage) {
                for (long j = 0; j < n; j++)
                    FOR_V(v) store(ROWS(t->z, j) + v, load(ROWS(t->x, j) + v) + (advance[stage - 1] * h) * load(ROWS(t->f, j) + v));
                z = t->z;
            }
            field(t, z, t->f, stage ? NULL : t->Vx, stage ? NULL : t->sig_x);
            for (long j = 0; j < n; j++)
                FOR_V(v) store(ROWS(t->incr, j) + v, (stage ? load(ROWS(t->incr, j) + v) : splat(0.0f)) + weight[stage] * load(ROWS(t->f, j) + v));
        }
        for (long j = 0; j < n; j++) FOR_V(v) store(ROWS(t->y, j) + v, load(ROWS(t->x, j) + v) + (h / 6.0f) * load(ROWS(t->incr, j) + v));
    }
    if (s->rescale) { /* lyapunov_rescale: y' = x_eq + min(1, bound / V(y)) (y - x_eq) */
        const float *rate = t->mem + s->rate, *x_eq = t->mem + s->x_eq;
        offsets_from_eq(t, t->y);
        icnn(t, 0);
        FOR_V(v) {
            vf dy_sq = load(t->dx_sq + v);
            vf sv = select_(dy_sq == 0.0f, splat(0.0f), shifted(t, v));
            vf r = max_(sv, splat(0.0f)), mm = min_(r, splat(t->d_out));
            vf Vy = mm * (1.0f / t->d_out) * (r - 0.5f * mm) + dy_sq * t->eps;
            vf bound = rate[1] * load(t->Vx + v);
            if (s->m) bound = bound + rate[2] * load(t->sig_x + v);
            vf scale = min_(bound / max_(Vy, splat(FLT_MIN)), splat(1.0f));
            for (long j = 0; j < n; j++) store(ROWS(t->y, j) + v, x_eq[j] + scale * load(ROWS(t->dx, j) + v));
        }
    }
    if (noise && s->head.layers) { /* PETS sampling: y += exp(softplus2(half_range - softplus2(head))) * noise */
        features(t, t->x, 0, 1);
        run_net(t, &s->head, t->net_in, t->net_out);
        const float *half_range = t->mem + s->half_range;
        for (long j = 0; j < n; j++)
            FOR_V(v) {
                vf half_lv = softplus2(half_range[j] - softplus2(load(ROWS(t->net_out, j) + v)));
                store(ROWS(t->y, j) + v, load(ROWS(t->y, j) + v) + exp_(half_lv) * load(ROWS(noise, j) + v));
            }
    }
    const float pi = 3.14159265358979323846f, two_pi = 6.28318530717958647692f;
    for (long w = 0; w < s->wraps; w++) { /* to [-pi, pi), as torch.remainder(y + pi, 2 pi) - pi */
        float *row = ROWS(t->y, s->wrap[w]);
        for (long r = 0; r < t->nv * VL; r++) {
            float mod = fmodf(row[r] + pi, two_pi);
            if (mod != 0.0f && mod < 0.0f) mod += two_pi;
            row[r] = mod - pi;
        }
    }
}

/* Copy `valid` rows of `count` feature rows (stride `stride`) into a tile buffer, the last valid
 * row repeated to fill it (a state the members accept). */
static void load_tile(float *dst, const float *src, long stride, long count, long valid, long width) {
    for (long j = 0; j < count; j++) {
        memcpy(ROWS(dst, j), src + j * stride, sizeof(float) * (size_t)valid);
        for (long r = valid; r < width; r++) ROWS(dst, j)[r] = src[j * stride + valid - 1];
    }
}

static long net_width(const net_t *net) {
    long w = 0;
    for (long i = 0; i <= net->layers; i++)
        if (net->widths[i] > w) w = net->widths[i];
    return w;
}

/* A rollout's arguments, shared by the threads that work through its tiles. */
typedef struct {
    spec_t s;
    const double *consts;
    const float *weights;
    long weights_member, members, rows, horizon;
    const float *x0;
    long x0_member, x0_feature;
    const float *u;
    long u_member, u_step, u_feature;
    const float *noise;
    long noise_member, noise_step, noise_feature;
    float *out;
    long out_member, out_step, out_feature;
    long tiles, next; /* tiles in all; the next one to take (atomic) */
    int failed;       /* set (atomic) where a thread could not have its scratch memory */
} rollout_t;

/* Take tiles until none is left: each one row block of one member through the whole horizon. */
static void *rollout_worker(void *arg) {
    rollout_t *job = arg;
    const spec_t *s = &job->s;
    long n = s->n, m = s->m, H = s->hidden, hidden_rows = 0, widest = n + m + 2 * s->k;
    for (long i = 0; i < H; i++) hidden_rows += s->iw[i];
    long nets[3] = {net_width(&s->fhat), net_width(&s->sigma), net_width(&s->head)};
    for (int i = 0; i < 3; i++)
        if (nets[i] > widest) widest = nets[i];
    long icnn_widest = 1;
    for (long i = 0; i <= H; i++)
        if (s->iw[i] > icnn_widest) icnn_widest = s->iw[i];
    long cat_rows = 0;
    for (long i = 1; i <= H; i++) cat_rows += n + s->iw[i - 1];
    /* feature rows: dx, dx_sq, pre, M, D, g, dg, grad_V, V, fh, 4 x net, u, u_scaled, u_sq, sig, x, y, z, f, incr, Vx, sig_x, noise, cats */
    long total = n + 1 + icnn_widest + 2 * hidden_rows + 1 + n + n + 1 + n + 4 * widest + 2 * m + 1 + 1 + 6 * n + 2 + n + cat_rows;
    float *arena = malloc(sizeof(float) * (size_t)(total * TT));
    float **cat = malloc(sizeof(float *) * (size_t)(H + 1));
    if (!arena || !cat) {
        free(arena);
        free(cat);
        __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    memset(arena, 0, sizeof(float) * (size_t)(total * TT));
    tile_t t = {0};
    float *p = arena;
#define TAKE(field_, count) (t.field_ = p, p += (count) * TT)
    TAKE(dx, n); TAKE(dx_sq, 1); TAKE(pre, icnn_widest); TAKE(M, hidden_rows); TAKE(D, hidden_rows); TAKE(g, 1);
    TAKE(dg, n); TAKE(grad_V, n); TAKE(V, 1); TAKE(fh, n); TAKE(net_in, widest); TAKE(net_a, widest); TAKE(net_b, widest);
    TAKE(net_out, widest); TAKE(u, m); TAKE(u_scaled, m); TAKE(u_sq, 1); TAKE(sig, 1); TAKE(x, n); TAKE(y, n); TAKE(z, n);
    TAKE(f, n); TAKE(incr, n); TAKE(Vx, 1); TAKE(sig_x, 1); TAKE(noise, n);
#undef TAKE
    for (long i = 1; i <= H; i++) cat[i] = p, p += (n + s->iw[i - 1]) * TT;
    t.cat = cat;
    t.s = s;
    const double *c = job->consts;
    t.dt = (float)c[0], t.d = (float)c[1], t.d_out = (float)c[2], t.eps = (float)c[3], t.gain = (float)c[4];
    long per = tiles_per_member(job->rows);
    for (;;) {
        long gi = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);
        if (gi >= job->tiles) break;
        long e = gi / per, start, width;
        tile_span(job->rows, gi % per, &start, &width);
        long valid = job->rows - start < width ? job->rows - start : width;
        t.mem = job->weights + e * job->weights_member;
        t.layer = width == TT ? layer_wide : layer_narrow;
        t.nv = width / VL;
        const float *in_scale = t.mem + s->in_scale;
        load_tile(t.x, job->x0 + e * job->x0_member + start, job->x0_feature, n, valid, width);
        float *dst = job->out + e * job->out_member + start;
        for (long j = 0; j < n; j++) memcpy(dst + j * job->out_feature, ROWS(t.x, j), sizeof(float) * (size_t)valid);
        for (long step_ = 0; step_ < job->horizon; step_++) {
            if (m) {
                load_tile(t.u, job->u + e * job->u_member + step_ * job->u_step + start, job->u_feature, m, valid, width);
                for (long r = 0; r < width; r++) t.u_sq[r] = 0.0f;
                for (long j = 0; j < m; j++)
                    for (long r = 0; r < width; r++) {
                        float uj = ROWS(t.u, j)[r];
                        t.u_sq[r] += uj * uj;
                        ROWS(t.u_scaled, j)[r] = s->fhat_kind == FHAT_MLP ? uj : uj / in_scale[n - s->k + j];
                    }
            }
            const float *noise_tile = NULL;
            if (job->noise) {
                load_tile(t.noise, job->noise + e * job->noise_member + step_ * job->noise_step + start, job->noise_feature, n, valid,
                          width);
                noise_tile = t.noise;
            }
            step(&t, noise_tile);
            float *next = dst + (step_ + 1) * job->out_step;
            for (long j = 0; j < n; j++) memcpy(next + j * job->out_feature, ROWS(t.y, j), sizeof(float) * (size_t)valid);
            float *swap = t.x;
            t.x = t.y, t.y = swap;
        }
    }
    free(arena);
    free(cat);
    return NULL;
}

/* Returns 0, -1 where scratch memory could not be had, -2 for a structure beyond its limits
 * (nothing is then guaranteed written). x0: member e, feature j, row r at x0[e * x0_member + j *
 * x0_feature + r]; u likewise with a step stride (NULL when m = 0); noise (NULL: none) likewise;
 * out: member e, step t (0 .. horizon), feature j, row r. `threads`: how many threads share the
 * tiles (this one and threads - 1 more; fewer where there are fewer tiles): with OpenMP torch's own
 * workers (as in the training passes below; threads of our own lost up to half their time to
 * torch's workers spinning after its last parallel operation), else threads started here. */
int lyagym_model_rollout(const long *spec_words, const double *consts, const float *weights, long weights_member,
                          long members, long rows, long horizon, const float *x0, long x0_member, long x0_feature,
                          const float *u, long u_member, long u_step, long u_feature, const float *noise, long noise_member,
                          long noise_step, long noise_feature, float *out, long out_member, long out_step, long out_feature,
                          long threads) {
    rollout_t job = {.consts = consts, .weights = weights, .weights_member = weights_member, .members = members, .rows = rows,
                     .horizon = horizon, .x0 = x0, .x0_member = x0_member, .x0_feature = x0_feature, .u = u, .u_member = u_member,
                     .u_step = u_step, .u_feature = u_feature, .noise = noise, .noise_member = noise_member,
                     .noise_step = noise_step, .noise_feature = noise_feature, .out = out, .out_member = out_member,
                     .out_step = out_step, .out_feature = out_feature};
    read_spec(spec_words, &job.s);
    if (job.s.hidden > 63 || (job.s.hidden < 1 && !job.s.plain)) return -2;
    job.tiles = members * tiles_per_member(rows);
    if (threads > job.tiles) threads = job.tiles;
    if (threads > 64) threads = 64;
#ifdef _OPENMP
    /* torch's own OpenMP threads where it has loaded its libgomp (see the training passes below) */
#pragma omp parallel num_threads(threads) if (threads > 1)
    rollout_worker(&job);
#else
    pthread_t helpers[64];
    long started = 0;
    for (long i = 1; i < threads; i++, started++)
        if (pthread_create(&helpers[started], NULL, rollout_worker, &job) != 0) break; /* fewer threads: the rest still runs */
    rollout_worker(&job);
    for (long i = 0; i < started; i++) pthread_join(helpers[i], NULL);
#endif
    return job.failed ? -1 : 0;
}

/* ---------------------------------------------------------------------------------------------
 * Training E stacked MLPs (learned_models/mlp_train_native.py): the forward pass keeping each
 * hidden layer's pre-activation z and activation a, and the backward pass giving every weight's,
 * bias's and (optionally) the input's gradient. Activations are feature-major, padded to `rows`
 * (a multiple of VL): member e, feature k, row r at [(e * width + k) * rows + r]; the hidden
 * layers' z, a and gradients share one layout, layer i's features at offset hidden_offset(i). The
 * input's padded rows are zero and so are the output gradient's, so padded rows add nothing to
 * a weight's gradient. Weights and biases are torch's own (E, out, in) and (E, out), read in
 * place: the forward product reads W(j, k) = W[j][k], the backward one W^T, from the same memory.
 *
 * Both passes split their work between `threads` threads with OpenMP. Built with -fopenmp the
 * library links libgomp by its soname, so in a process where torch has loaded its own libgomp,
 * ours is that one: the threads are torch's pool (the workers that spin between its operations
 * take ours at once; a pool of our own would compete with them). Each output is computed whole
 * by one thread in a fixed order: the same bits at every thread count.
 */
typedef struct {
    const float *w;
    long sj, sk;       /* the product's matrix M(j, k) = w[j * sj + k * sk] */
    const float *bias; /* forward: J biases (NULL: none) */
    int act, backward; /* forward: z = acc + bias, a = act(z); backward: acc * act'(z), z read from zs */
    float *zs, *as;    /* z (forward: written where act != none; backward: read) and the output, this tile's first row */
    long stride;       /* their feature stride */
} product_t;

static inline vf slope(vf z, int act) {
    if (act == ACT_RELU) return select_(z > 0.0f, splat(1.0f), splat(0.0f));
    vf s = 1.0f / (1.0f + exp_(-z)); /* SiLU: d/dz z s(z) = s (1 + z (1 - s)) */
    return s * (1.0f + z * (1.0f - s));
}

static inline void finish(const product_t *o, long j, long r, vf acc) {
    float *zs = o->zs + j * o->stride + r, *as = o->as + j * o->stride + r;
    if (o->backward) {
        store(as, o->act ? acc * slope(load(zs), o->act) : acc);
        return;
    }
    vf z = o->bias ? acc + o->bias[j] : acc;
    if (o->act) store(zs, z);
    store(as, o->act ? activate(z, o->act) : z);
}

/* out[j][r] = epilogue(sum_k M(j, k) in[k][r]) for RB vectors of rows. */
#define DEFINE_PRODUCT(NAME, RB)                                                                               \
    static void NAME(const float *in, long in_stride, long K, long J, const product_t *o) {                    \
        long j0 = 0;                                                                                           \
        for (; j0 + JB <= J; j0 += JB) {                                                                       \
            const float *w = o->w + j0 * o->sj;                                                                \
            vf acc[JB][RB];                                                                                    \
            for (int j = 0; j < JB; j++)                                                                       \
                for (int r = 0; r < RB; r++) acc[j][r] = splat(0.0f);                                          \
            for (long k = 0; k < K; k++) {                                                                     \
                vf h[RB];                                                                                      \
                for (int r = 0; r < RB; r++) h[r] = load(in + k * in_stride + VL * r);                         \
                for (int j = 0; j < JB; j++) {                                                                 \
                    float s = w[j * o->sj + k * o->sk];                                                        \
                    for (int r = 0; r < RB; r++) acc[j][r] += s * h[r];                                        \
                }                                                                                              \
            }                                                                                                  \
            for (int j = 0; j < JB; j++)                                                                       \
                for (int r = 0; r < RB; r++) finish(o, j0 + j, VL * r, acc[j][r]);                             \
        }                                                                                                      \
        for (; j0 < J; j0++) {                                                                                 \
            const float *w = o->w + j0 * o->sj;                                                                \
            vf acc[RB];                                                                                        \
            for (int r = 0; r < RB; r++) acc[r] = splat(0.0f);                                                 \
            for (long k = 0; k < K; k++) {                                                                     \
                float s = w[k * o->sk];                                                                        \
                for (int r = 0; r < RB; r++) acc[r] += s * load(in + k * in_stride + VL * r);                  \
            }                                                                                                  \
            for (int r = 0; r < RB; r++) finish(o, j0, VL * r, acc[r]);                                        \
        }                                                                                                      \
    }

DEFINE_PRODUCT(product_wide, WIDE)
DEFINE_PRODUCT(product_narrow, 1)

static inline float hsum(vf v) {
    float s = 0.0f;
    for (int i = 0; i < VL; i++) s += v[i];
    return s;
}

typedef struct {
    long layers, members, rows, hidden; /* hidden: the hidden layers' features in all */
    const long *widths;                 /* layers + 1 */
    const int *acts;                    /* per hidden layer */
    const float *const *params;         /* W_0, b_0, W_1, b_1, ...: (E, out, in), (E, out) */
} train_t;

static long hidden_offset(const train_t *t, long i) { /* hidden layer i's first feature */
    long off = 0;
    for (long l = 0; l < i; l++) off += t->widths[l + 1];
    return off;
}

static long tile_of(const train_t *t, long unit, long *e, long *start) { /* its width in rows */
    long per = tiles_per_member(t->rows), width;
    *e = unit / per;
    tile_span(t->rows, unit % per, start, &width);
    return width;
}

/* out: (E, widths[L], rows); z, a: (E, hidden, rows). */
int lyagym_mlp_train_forward(long layers, const long *widths, const int *acts, const float *const *params, long members,
                             long rows, const float *in, float *z, float *a, float *out, long threads) {
    train_t t = {layers, members, rows, 0, widths, acts, params};
    t.hidden = hidden_offset(&t, layers - 1);
    long units = members * tiles_per_member(rows);
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
#endif
    for (long unit = 0; unit < units; unit++) {
        long e, start, width = tile_of(&t, unit, &e, &start);
        const float *src = in + e * widths[0] * rows + start;
        for (long i = 0; i < layers; i++) {
            long K = widths[i], J = widths[i + 1], off = hidden_offset(&t, i);
            int last = i == layers - 1;
            float *zs = z + (e * t.hidden + off) * rows + start;
            product_t o = {params[2 * i] + e * J * K, K, 1, params[2 * i + 1] ? params[2 * i + 1] + e * J : NULL,
                           last ? ACT_NONE : acts[i], 0, zs, last ? out + e * J * rows + start : a + (e * t.hidden + off) * rows + start,
                           rows};
            (width == TT ? product_wide : product_narrow)(src, rows, K, J, &o);
            src = o.as;
        }
    }
    (void)threads;
    return 0;
}

static long padded(long width) { return (width + VL - 1) / VL * VL; }

/* dst[r][k] = src[k][r] for K features (row stride src_stride) and `width` rows (a multiple of VL),
 * dst's columns K .. padded(K) zero: VL x VL blocks transposed in registers, by levels w = VL / 2,
 * .., 1 swapping the off-diagonal w x w blocks of each 2w x 2w block (2 shuffles a pair of
 * vectors and level, where a scalar copy takes a load and a store per float). */
static void transpose(const float *src, long src_stride, long K, long width, float *dst, long dst_stride) {
    vi lo[8], hi[8];
    int levels = 0;
    for (int w = VL / 2; w >= 1; w /= 2, levels++)
        for (int l = 0; l < VL; l++) {
            lo[levels][l] = l & w ? VL + l - w : l;
            hi[levels][l] = l & w ? VL + l : l + w;
        }
    for (long k0 = 0; k0 < K; k0 += VL)
        for (long r0 = 0; r0 < width; r0 += VL) {
            vf v[VL];
            for (long k = 0; k < VL; k++) v[k] = k0 + k < K ? load(src + (k0 + k) * src_stride + r0) : splat(0.0f);
            for (int w = VL / 2, level = 0; w >= 1; w /= 2, level++)
                for (int i = 0; i < VL; i++)
                    if (!(i & w)) {
                        vf a = v[i], b = v[i + w];
                        v[i] = __builtin_shuffle(a, b, lo[level]);
                        v[i + w] = __builtin_shuffle(a, b, hi[level]);
                    }
            for (long r = 0; r < VL; r++) store(dst + (r0 + r) * dst_stride + k0, v[r]);
        }
}

static long transposed_offset(const train_t *t, long i) { /* layer i's input, rows x padded(widths[i]), in `at` */
    long off = 0;
    for (long l = 0; l < i; l++) off += t->rows * padded(t->widths[l]);
    return off;
}

static long gradient_offset(const train_t *t, long i) { /* layer i's widths[i + 1] x padded(widths[i]) in `pad` */
    long off = 0;
    for (long l = 0; l < i; l++) off += t->widths[l + 1] * padded(t->widths[l]);
    return off;
}

/* A weight gradient's unit: outputs j0 .. j1 of layer i, columns c0 .. c0 + TT (or to the end). */
static long gradient_units(const train_t *t, long i) {
    long parts = t->widths[i + 1] > JB ? 2 : 1;
    return parts * ((padded(t->widths[i]) + TT - 1) / TT);
}

/* grad_out: (E, widths[L], rows); d: (E, hidden, rows), the hidden layers' dL/dz; grad_in: (E,
 * widths[0], rows) or NULL; grads: dW_0, db_0, dW_1, ... (a bias's NULL where it has none).
 * Scratch: at, E x sum_i rows x padded(widths[i]) floats (every layer's input, row-major, so a
 * weight gradient dW[j][k] = sum_r D[j][r] A[k][r] is the product kernel's with vectors along k:
 * no horizontal sums); pad, E x sum_i widths[i + 1] x padded(widths[i]) floats. */
int lyagym_mlp_train_backward(long layers, const long *widths, const int *acts, const float *const *params, long members,
                              long rows, const float *in, const float *z, const float *a, const float *grad_out, float *d,
                              float *grad_in, float *const *grads, float *at, float *pad, long threads) {
    train_t t = {layers, members, rows, 0, widths, acts, params};
    t.hidden = hidden_offset(&t, layers - 1);
    long units = members * tiles_per_member(rows), at_member = transposed_offset(&t, layers),
         pad_member = gradient_offset(&t, layers);
    /* a tile of rows at a time: every layer's input transposed, and dL/dz of every layer, back from the output */
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
#endif
    for (long unit = 0; unit < units; unit++) {
        long e, start, width = tile_of(&t, unit, &e, &start);
        for (long i = 0; i < layers; i++) {
            long K = widths[i], Kp = padded(K);
            const float *src = (i ? a + (e * t.hidden + hidden_offset(&t, i - 1)) * rows : in + e * K * rows) + start;
            float *dst = at + e * at_member + transposed_offset(&t, i) + start * Kp;
            transpose(src, rows, K, width, dst, Kp);
        }
        for (long i = layers - 1; i >= (grad_in ? 0 : 1); i--) {
            long K = widths[i + 1], J = widths[i];
            const float *src = i == layers - 1 ? grad_out + e * K * rows : d + (e * t.hidden + hidden_offset(&t, i)) * rows;
            long below = i ? hidden_offset(&t, i - 1) : 0;
            product_t o = {params[2 * i] + e * K * J, 1, J, NULL, i ? acts[i - 1] : ACT_NONE, 1,
                           (float *)z + (e * t.hidden + below) * rows + start,
                           i ? d + (e * t.hidden + below) * rows + start : grad_in + e * J * rows + start, rows};
            (width == TT ? product_wide : product_narrow)(src + start, rows, K, J, &o);
        }
    }
    /* every layer's weight gradient, by blocks of outputs and columns */
    long per_member = 0;
    for (long i = 0; i < layers; i++) per_member += gradient_units(&t, i);
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(dynamic) if (threads > 1)
#endif
    for (long unit = 0; unit < members * per_member; unit++) {
        long e = unit / per_member, b = unit % per_member, i = 0;
        while (b >= gradient_units(&t, i)) b -= gradient_units(&t, i), i++;
        long J = widths[i + 1], K = widths[i], Kp = padded(K), parts = J > JB ? 2 : 1;
        long part = b % parts, c0 = b / parts * TT, cw = Kp - c0 < TT ? Kp - c0 : TT;
        long half = (J / 2 + JB - 1) / JB * JB, j0 = part ? half : 0, j1 = parts == 1 || part ? J : half;
        const float *D = (i == layers - 1 ? grad_out + e * J * rows : d + (e * t.hidden + hidden_offset(&t, i)) * rows) + j0 * rows;
        const float *AT = at + e * at_member + transposed_offset(&t, i);
        float *P = pad + e * pad_member + gradient_offset(&t, i) + j0 * Kp, *dW = grads[2 * i] + e * J * K + j0 * K;
        for (long c = c0; c < c0 + cw; c += cw == TT ? TT : VL) {
            product_t o = {D, rows, 1, NULL, ACT_NONE, 0, P + c, P + c, Kp};
            (cw == TT ? product_wide : product_narrow)(AT + c, Kp, rows, j1 - j0, &o);
        }
        long cols = (c0 + cw < K ? c0 + cw : K) - c0;
        for (long j = 0; j < j1 - j0; j++)
            if (cols > 0) memcpy(dW + j * K + c0, P + j * Kp + c0, sizeof(float) * (size_t)cols);
        if (c0 == 0 && grads[2 * i + 1])
            for (long j = j0; j < j1; j++) {
                const float *Dj = D + (j - j0) * rows;
                vf acc = splat(0.0f);
                for (long r = 0; r < rows; r += VL) acc += load(Dj + r);
                grads[2 * i + 1][e * J + j] = hsum(acc);
            }
    }
    (void)threads;
    return 0;
}
