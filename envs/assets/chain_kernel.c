/* The structured n-link pendulum (lyagym.envs.structured) in C: the O(n) articulated sweep,
 * RK4 / Euler steps, for one state or a batch of states, float64.
 *
 * The chain is given by its tables at one parameter value:
 *   r, mu, dmu (n) mass matrix M_ij = r_i r_j mu_max(i,j) cos(q_i - q_j), dmu_i = mu_i - mu_{i+1}
 *   G_r      (n)   gravity coefficient / r_i            (f_i += G_i sin q_i)
 *   Dlo_r, Dd_r, Dup_r (n)  damping bands / r_i          (f_i += D_{i,i-1} w_{i-1} + ...)
 *   E_r      (n*m) motor coefficients / r_i, row-major   (f_i += sum_k E_ik u_k)
 * Built at run time by lyagym.envs.native with the system C compiler; nothing here is
 * generated. */
#include <math.h>
#include <stddef.h>

typedef struct {
    int n, m;
    const double *r, *mu, *dmu, *G_r, *Dlo_r, *Dd_r, *Dup_r, *E_r;
} chain_t;

/* qddot from (q, w) and the motor part tau_r = E_r u (constant over a step).
 * work: 8n doubles. */
static void accel(const chain_t *ch, const double *q, const double *w, const double *tau_r, double *a, double *work)
{
    const int n = ch->n;
    double *c = work, *s = work + n, *g = work + 2 * n, *sig = work + 3 * n;
    double *ntx = work + 4 * n, *nty = work + 5 * n, *X = work + 6 * n, *Y = work + 7 * n;
    /* centripetal: -sum_{j != i} mu_max(i,j) z_j sin(q_i - q_j), z = r w^2, from exclusive
     * prefix sums (links before i, weight mu_i) and suffix sums (after i, weight mu_j) */
    double px = 0.0, py = 0.0;
    for (int i = 0; i < n; i++) {
        s[i] = sin(q[i]);
        c[i] = cos(q[i]);
        X[i] = px;
        Y[i] = py;
        double z = ch->r[i] * w[i] * w[i];
        px += z * c[i];
        py += z * s[i];
    }
    double sx = 0.0, sy = 0.0;
    for (int i = n - 1; i >= 0; i--) {
        double mu = ch->mu[i];
        double xi = mu * X[i] + sx, yi = mu * Y[i] + sy;
        double gi = c[i] * yi - s[i] * xi + ch->G_r[i] * s[i] + ch->Dd_r[i] * w[i] + tau_r[i];
        if (i > 0) gi += ch->Dlo_r[i] * w[i - 1];
        if (i + 1 < n) gi += ch->Dup_r[i] * w[i + 1];
        g[i] = gi;
        double z = mu * ch->r[i] * w[i] * w[i];
        sx += z * c[i];
        sy += z * s[i];
    }
    /* backward sweep: phi_i = K_i v_{i-1} + beta_i, from the tip inwards */
    double Kxx = 0.0, Kxy = 0.0, Kyy = 0.0, bx = 0.0, by = 0.0;
    for (int i = n - 1; i >= 0; i--) {
        double Nxx = Kxx + ch->dmu[i], Nxy = Kxy, Nyy = Kyy + ch->dmu[i];
        double tx = Nxx * c[i] + Nxy * s[i], ty = Nxy * c[i] + Nyy * s[i];
        double inv = 1.0 / (tx * c[i] + ty * s[i]);
        double gam = g[i] - (bx * c[i] + by * s[i]);
        double k = gam * inv;
        bx += tx * k;
        by += ty * k;
        Kxx = Nxx - tx * tx * inv;
        Kxy = Nxy - tx * ty * inv;
        Kyy = Nyy - ty * ty * inv;
        ntx[i] = tx;
        nty[i] = ty;
        sig[i] = inv;
        g[i] = gam;
    }
    /* forward sweep: velocities of the bobs, root to tip */
    double vx = 0.0, vy = 0.0;
    for (int i = 0; i < n; i++) {
        double y = (g[i] - (ntx[i] * vx + nty[i] * vy)) * sig[i];
        a[i] = y / ch->r[i];
        vx += c[i] * y;
        vy += s[i] * y;
    }
}

/* One step of x (2n) in place; method 0 = RK4, 1 = Euler. work: 17n doubles. */
static void step_one(const chain_t *ch, double *x, const double *tau_r, double h, int method, double *work)
{
    const int n = ch->n;
    double *a1 = work + 8 * n, *a2 = a1 + n, *a3 = a2 + n, *a4 = a3 + n;
    double *qs = a4 + n;  /* stage angles, then the stage rates w2, w3, w4: work >= 17n */
    double *q = x, *w = x + n;
    if (method == 1) {
        accel(ch, q, w, tau_r, a1, work);
        for (int i = 0; i < n; i++) {
            q[i] += h * w[i];
            w[i] += h * a1[i];
        }
        return;
    }
    const double h2 = 0.5 * h, h6 = h / 6.0;
    double *w2 = qs + n, *w3 = w2 + n, *w4 = w3 + n;
    accel(ch, q, w, tau_r, a1, work);
    for (int i = 0; i < n; i++) { qs[i] = q[i] + h2 * w[i]; w2[i] = w[i] + h2 * a1[i]; }
    accel(ch, qs, w2, tau_r, a2, work);
    for (int i = 0; i < n; i++) { qs[i] = q[i] + h2 * w2[i]; w3[i] = w[i] + h2 * a2[i]; }
    accel(ch, qs, w3, tau_r, a3, work);
    for (int i = 0; i < n; i++) { qs[i] = q[i] + h * w3[i]; w4[i] = w[i] + h * a3[i]; }
    accel(ch, qs, w4, tau_r, a4, work);
    for (int i = 0; i < n; i++) {
        q[i] += h6 * (w[i] + 2.0 * (w2[i] + w3[i]) + w4[i]);
        w[i] += h6 * (a1[i] + 2.0 * (a2[i] + a3[i]) + a4[i]);
    }
}

/* The tables, built once per model by the caller (ctypes), so a call passes one pointer. */
typedef struct {
    long n, m;
    const double *r, *mu, *dmu, *G_r, *Dlo_r, *Dd_r, *Dup_r, *E_r;
} lyagym_chain_tables;

/* x: (batch, 2n) row-major, stepped in place `steps` times by h; u: (batch, m) row-major,
 * or one row for all states when u_stride == 0; NULL means zero torques. Returns 0, or -1 when
 * n is out of the supported range. */
int lyagym_chain_step(const lyagym_chain_tables *t, long batch, double *x, const double *u, long u_stride,
                      double h, long steps, long method)
{
    const int n = (int)t->n, m = (int)t->m;
    if (n < 1 || n > 512) return -1;  /* the work arrays live on the stack */
    chain_t ch = {n, m, t->r, t->mu, t->dmu, t->G_r, t->Dlo_r, t->Dd_r, t->Dup_r, t->E_r};
    double work[17 * n], tau_r[n];
    for (long b = 0; b < batch; b++) {
        const double *ub = u ? u + b * u_stride : NULL;
        for (int i = 0; i < n; i++) {
            double acc = 0.0;
            if (ub) for (int k = 0; k < m; k++) acc += t->E_r[i * m + k] * ub[k];
            tau_r[i] = acc;
        }
        double *xb = x + b * 2 * (long)n;
        for (long k = 0; k < steps; k++) step_one(&ch, xb, tau_r, h, (int)method, work);
    }
    return 0;
}

/* One state, one RK4 step of h: the single environment's call (fewest ctypes arguments). */
int lyagym_chain_rk4(const lyagym_chain_tables *t, double *x, const double *u, double h)
{
    return lyagym_chain_step(t, 1, x, u, 0, h, 1, 0);
}
