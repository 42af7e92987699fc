/* leapdecode native kernels: batch-invariant linear, canonical-order attention, norms, activations,
 * and one whole decoder pass (model_forward) so that Python pays one call per pass, not per op.
 *
 * The one rule: a row's result never depends on how many rows run with it, nor on its position.
 * Every (row, output) dot product takes the same steps in the same order in every tile (float32 and
 * int8: LANES-wide FMA chunks in ascending k, one fixed horizontal sum, the scale, the bias; the
 * packed formats: one lane per output, see each section); tiling over rows/outputs and the threads'
 * split only regroup whole accumulators. Built by leapdecode/models/native/build.py
 * with gcc -O3 -march=native -pthread -ffp-contract=off (no -ffast-math, no implicit FMA
 * contraction: every fused multiply-add is an explicit intrinsic, so two code paths computing the
 * same value round the same way).
 */
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { F32 = 0, BF16 = 1, I8 = 2, Q8 = 3, Q4 = 4 }; /* Q8: int8 weights and int8 activations (W8A8); Q4: 4-bit
                                                  * weights in groups of 32 and int8 activations (W4A8) */

/* ---- per-category wall time (ms), filled when profiling is on ------------------------------- */
static int g_profile = 0;
static double g_times[3]; /* linear, attention, rest */
void set_profile(int on) { g_profile = on; memset(g_times, 0, sizeof g_times); }
void get_profile(double *out) { memcpy(out, g_times, sizeof g_times); }
static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
#define TIC double t0_ = g_profile ? now_s() : 0
#define TOC(cat) if (g_profile) g_times[cat] += (now_s() - t0_) * 1e3

/* ---- the threads ------------------------------------------------------------------------------
 * Our own fork-join pool, not OpenMP: libgomp (which torch loads too, under the same name) keeps a
 * pool per thread that opens a parallel region, and once it manages more threads than CPUs its
 * workers sleep between regions instead of spinning, which doubled a pass made off the main thread.
 * Here the workers spin between the regions of a pass and sleep after SPIN_NS without work, so
 * they do not take the CPUs from Python between passes. parallel_for splits [0, n) as OpenMP's
 * static schedule does (contiguous, the first n % T threads one more); any split gives every
 * output the same arithmetic. */
typedef void (*Body)(void *ctx, int lo, int hi);
enum { MAX_THREADS = 256 };
#define SPIN_NS 200000L
static int g_threads = 1, g_workers = 0;
static pthread_t g_tid[MAX_THREADS];
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_wake = PTHREAD_COND_INITIALIZER;
static atomic_long g_gen = 0;   /* bumped once per job */
static atomic_int g_done = 0;   /* workers finished with the current job */
static atomic_int g_sleepers = 0;
static long g_start[MAX_THREADS]; /* the job count a worker was started at */
static Body g_body;
static void *g_ctx;
static int g_n, g_team;

static void chunk(int t, int team, int n, int *lo, int *hi) {
    int q = n / team, r = n % team;
    *lo = t * q + (t < r ? t : r);
    *hi = *lo + q + (t < r);
}

/* the thread of a team splitting [0, n) whose range starts at lo (-1 if none) */
static int thread_of(int lo, int team, int n) {
    for (int t = 0; t < team; t++) {
        int a, b;
        chunk(t, team, n, &a, &b);
        if (a == lo) return t;
    }
    return -1;
}

static void *worker(void *arg) {
    const int t = (int)(intptr_t)arg;
    long seen = g_start[t];
    for (;;) {
        double since = now_s();
        int spins = 0;
        while (atomic_load(&g_gen) == seen) {
            _mm_pause();
            if (++spins % 1024 == 0 && (now_s() - since) * 1e9 > SPIN_NS) {
                pthread_mutex_lock(&g_mu);
                atomic_fetch_add(&g_sleepers, 1);
                while (atomic_load(&g_gen) == seen) pthread_cond_wait(&g_wake, &g_mu);
                atomic_fetch_sub(&g_sleepers, 1);
                pthread_mutex_unlock(&g_mu);
            }
        }
        seen = atomic_load(&g_gen);
        if (t < g_team) {
            int lo, hi;
            chunk(t, g_team, g_n, &lo, &hi);
            if (lo < hi) g_body(g_ctx, lo, hi);
        }
        atomic_fetch_add(&g_done, 1);
    }
    return NULL;
}

/* body(ctx, lo, hi) over [0, n) split among the threads; the caller is thread 0. One caller at a
 * time (the Python side makes every call from one thread, build.py). */
static void parallel_for(int n, Body body, void *ctx) {
    const int team = g_threads < n ? g_threads : (n > 0 ? n : 1);
    if (team <= 1 || g_workers == 0) {
        if (n > 0) body(ctx, 0, n);
        return;
    }
    g_body = body, g_ctx = ctx, g_n = n, g_team = team;
    atomic_store(&g_done, 0);
    atomic_fetch_add(&g_gen, 1);
    if (atomic_load(&g_sleepers) > 0) {
        pthread_mutex_lock(&g_mu);
        pthread_cond_broadcast(&g_wake);
        pthread_mutex_unlock(&g_mu);
    }
    int lo, hi;
    chunk(0, team, n, &lo, &hi);
    body(ctx, lo, hi);
    while (atomic_load(&g_done) < g_workers) _mm_pause();
}

/* the 4 bytes at p (any alignment) in every 32-bit lane: one broadcast activation quad or pair */
static inline __attribute__((always_inline)) __m256i bcast4_256(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}
#if defined(__AVX512F__)
static inline __attribute__((always_inline)) __m512i bcast4_512(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}
#endif

/* fixed-order horizontal sum of 8 lanes: (0+4, 1+5, 2+6, 3+7) then pairs, then the last pair */
static inline float hsum8(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    __m128 s = _mm_add_ps(lo, hi);
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* e^x on 8 lanes (exp8) and on 16 (exp16, where the CPU has AVX-512): range reduction by ln 2 and a
 * degree-5 minimax polynomial (Cephes' expf coefficients), about 1 ulp; the callers run whole
 * vectors (tails padded), so each element gets the same arithmetic wherever it sits. */
#define EXP_STEPS(W, FLOOR) /* one body for every vector width: each element takes the same steps */     \
    {                                                                                                    \
        x = _mm##W##_min_ps(_mm##W##_max_ps(x, _mm##W##_set1_ps(-87.3f)), _mm##W##_set1_ps(88.3f));        \
        __m##W n = FLOOR(_mm##W##_fmadd_ps(x, _mm##W##_set1_ps(1.44269504088896341f), _mm##W##_set1_ps(0.5f))); \
        __m##W r = _mm##W##_fnmadd_ps(n, _mm##W##_set1_ps(0.693359375f), x);                               \
        r = _mm##W##_fnmadd_ps(n, _mm##W##_set1_ps(-2.12194440e-4f), r);                                   \
        __m##W y = _mm##W##_set1_ps(1.9875691500e-4f);                                                      \
        y = _mm##W##_fmadd_ps(y, r, _mm##W##_set1_ps(1.3981999507e-3f));                                   \
        y = _mm##W##_fmadd_ps(y, r, _mm##W##_set1_ps(8.3334519073e-3f));                                   \
        y = _mm##W##_fmadd_ps(y, r, _mm##W##_set1_ps(4.1665795894e-2f));                                   \
        y = _mm##W##_fmadd_ps(y, r, _mm##W##_set1_ps(1.6666665459e-1f));                                   \
        y = _mm##W##_fmadd_ps(y, r, _mm##W##_set1_ps(5.0000001201e-1f));                                   \
        y = _mm##W##_fmadd_ps(y, _mm##W##_mul_ps(r, r), _mm##W##_add_ps(r, _mm##W##_set1_ps(1.f)));         \
        __m##W##i e = _mm##W##_slli_epi32(_mm##W##_add_epi32(_mm##W##_cvtps_epi32(n), _mm##W##_set1_epi32(127)), 23); \
        return _mm##W##_mul_ps(y, _mm##W##_castsi##W##_ps(e));                                               \
    }
static inline __m256 exp8(__m256 x) EXP_STEPS(256, _mm256_floor_ps)
#if defined(__AVX512F__)
#define FLOOR16(v) _mm512_roundscale_ps(v, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC)
static inline __m512 exp16(__m512 x) EXP_STEPS(512, FLOOR16) /* exp8 on 16 lanes */
#endif

/* v[0..m-1] = exp(v - shift) in 16- and 8-lane vectors (the tail through a padded copy) */
static void exp_shift(float *v, int m, float shift) {
    __m256 sh = _mm256_set1_ps(shift);
    int t = 0;
#if defined(__AVX512F__)
    const __m512 sh16 = _mm512_set1_ps(shift);
    for (; t + 16 <= m; t += 16) _mm512_storeu_ps(v + t, exp16(_mm512_sub_ps(_mm512_loadu_ps(v + t), sh16)));
#endif
    for (; t + 8 <= m; t += 8) _mm256_storeu_ps(v + t, exp8(_mm256_sub_ps(_mm256_loadu_ps(v + t), sh)));
    if (t < m) {
        float buf[8] = {0};
        memcpy(buf, v + t, sizeof(float) * (m - t));
        _mm256_storeu_ps(buf, exp8(_mm256_sub_ps(_mm256_loadu_ps(buf), sh)));
        memcpy(v + t, buf, sizeof(float) * (m - t));
    }
}

/* 8 weights -> fp32 lanes (all exact conversions) */
static inline __attribute__((always_inline)) __m256 loadw(int fmt, const char *w, long i) {
    if (fmt == F32) return _mm256_loadu_ps((const float *)w + i);
    __m128i b = _mm_loadl_epi64((const __m128i *)((const int8_t *)w + i));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)); /* |q| <= 127 */
}

/* The linear layers' vectors: 16 lanes where the CPU has AVX-512, else 8. The build is per CPU
 * (-march=native), so one machine always runs one of the two; both keep the rule above. */
#if defined(__AVX512F__)
#define LANES 16
typedef __m512 vec;
#define vzero _mm512_setzero_ps
#define vload _mm512_loadu_ps
#define vfma _mm512_fmadd_ps
static inline __attribute__((always_inline)) vec loadv(int fmt, const char *w, long i) {
    if (fmt == F32) return _mm512_loadu_ps((const float *)w + i);
    __m128i b = _mm_loadu_si128((const __m128i *)((const int8_t *)w + i));
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
}
/* 16 lanes -> 8: lane i + lane i+8 */
static inline __m256 fold(vec v) {
    return _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}
#define TILE_OUT 4 /* up to 6 rows x 4 outputs: 24 accumulators of the 32 registers */
#define MAX_ROWS 6
#else
#define LANES 8
typedef __m256 vec;
#define vzero _mm256_setzero_ps
#define vload _mm256_loadu_ps
#define vfma _mm256_fmadd_ps
#define loadv loadw
static inline __m256 fold(vec v) { return v; }
#define TILE_OUT 2 /* up to 4 rows x 2 outputs: 8 accumulators of the 16 registers */
#define MAX_ROWS 4
#endif

/* one dot product's end: fold to 8 lanes, the 8-lane tail of k (when in % LANES == 8), the fixed
 * horizontal sum, the scale, the bias */
static inline __attribute__((always_inline)) float finish(vec acc, int fmt, const float *x, const char *w, int in,
                                                          int inv, const float *scale, const float *bias, int o) {
    __m256 a = fold(acc);
    if (inv < in) a = _mm256_fmadd_ps(_mm256_loadu_ps(x + inv), loadw(fmt, w, inv), a);
    float s = hsum8(a);
    if (scale) s = s * scale[o];
    if (bias) s = s + bias[o];
    return s;
}

/* The next block's weights are fetched from memory while this block computes, spread evenly over
 * the block's k steps (a burst would fill the line buffers and stall the arithmetic). */
typedef struct { const char *at, *end; int per_step; } Prefetch;

static inline __attribute__((always_inline)) void prefetch_some(Prefetch *p) {
    for (int l = 0; l < p->per_step && p->at < p->end; l++, p->at += 64) _mm_prefetch(p->at, _MM_HINT_T0);
}

/* R rows (xr, stride in) against outputs wr[t..t+TILE_OUT-1] of a block (no of them valid) */
static inline __attribute__((always_inline)) void tile(int fmt, int R, const float *xr, int in, int inv,
                                                       const char *const *wr, int t, int no, Prefetch *pf,
                                                       const float *scale, const float *bias, float *y, int out,
                                                       int o0) {
    vec a[MAX_ROWS][TILE_OUT];
    for (int i = 0; i < R; i++)
        for (int u = 0; u < TILE_OUT; u++) a[i][u] = vzero();
    for (int k = 0; k < inv; k += LANES) {
        prefetch_some(pf);
        vec v[TILE_OUT];
        for (int u = 0; u < TILE_OUT; u++) v[u] = loadv(fmt, wr[t + u], k);
        for (int i = 0; i < R; i++) {
            vec xv = vload(xr + (long)i * in + k);
            for (int u = 0; u < TILE_OUT; u++) a[i][u] = vfma(xv, v[u], a[i][u]);
        }
    }
    for (int i = 0; i < R; i++)
        for (int u = 0; u < TILE_OUT && t + u < no; u++)
            y[(long)i * out + o0 + t + u] = finish(a[i][u], fmt, xr + (long)i * in, wr[t + u], in, inv, scale, bias,
                                                   o0 + t + u);
}

/* y[n, out] = x[n, in] . W[out, in]^T (* scale[out]) (+ bias[out]); in % 8 == 0.
 * Threads split the outputs in blocks of 8. Inside a block, the rows go in groups of 2..MAX_ROWS
 * (as even as possible) against TILE_OUT outputs at a time, each weight vector converted once per
 * group; a single row runs against all 8 outputs at once. Every tile computes each dot product
 * identically: the same FMAs in the same order, the same finish. */
static inline __attribute__((always_inline)) void linear_body(int fmt, const float *x, int n, int in, const void *w,
                                                              const float *scale, const float *bias, float *y, int out,
                                                              int ob_lo, int ob_hi) {
    const int wbytes = fmt == F32 ? 4 : 1;
    const char *wb = (const char *)w;
    const int blocks = (out + 7) / 8, inv = in - in % LANES;
    const int groups = (n + MAX_ROWS - 1) / MAX_ROWS;
    const long block_bytes = 8L * in * wbytes;
    const long steps = (n == 1 ? 1 : (long)groups * ((8 + TILE_OUT - 1) / TILE_OUT)) * (inv / LANES);
    const int per_step = (int)((block_bytes / 64 + steps - 1) / (steps > 0 ? steps : 1));
    (void)blocks;
    for (int ob = ob_lo; ob < ob_hi; ob++) {
        int o0 = ob * 8, no = out - o0 < 8 ? out - o0 : 8;
        const char *wr[8];
        for (int t = 0; t < 8; t++) wr[t] = wb + (long)(o0 + (t < no ? t : 0)) * in * wbytes;
        const char *next = wb + (long)(o0 + 8) * in * wbytes, *end = wb + (long)out * in * wbytes;
        Prefetch pf = {next, next + block_bytes < end ? next + block_bytes : end, per_step};
        if (n == 1) {
            vec a[8];
            for (int t = 0; t < 8; t++) a[t] = vzero();
            for (int k = 0; k < inv; k += LANES) {
                prefetch_some(&pf);
                vec xv = vload(x + k);
                for (int t = 0; t < 8; t++) a[t] = vfma(xv, loadv(fmt, wr[t], k), a[t]);
            }
            for (int t = 0; t < no; t++) y[o0 + t] = finish(a[t], fmt, x, wr[t], in, inv, scale, bias, o0 + t);
            continue;
        }
        for (int gi = 0, r = 0; gi < groups; gi++) {
            const int R = (n - r) / (groups - gi); /* sizes differ by at most one, each >= 2 when n >= 2 */
            const float *xr = x + (long)r * in;
            float *yr = y + (long)r * out;
            for (int t = 0; t < no; t += TILE_OUT) {
                switch (R) { /* a constant R per case: the tile's loops unroll into registers */
                case 1: tile(fmt, 1, xr, in, inv, wr, t, no, &pf, scale, bias, yr, out, o0); break;
                case 2: tile(fmt, 2, xr, in, inv, wr, t, no, &pf, scale, bias, yr, out, o0); break;
                case 3: tile(fmt, 3, xr, in, inv, wr, t, no, &pf, scale, bias, yr, out, o0); break;
                case 4: tile(fmt, 4, xr, in, inv, wr, t, no, &pf, scale, bias, yr, out, o0); break;
#if MAX_ROWS > 4
                case 5: tile(fmt, 5, xr, in, inv, wr, t, no, &pf, scale, bias, yr, out, o0); break;
                default: tile(fmt, 6, xr, in, inv, wr, t, no, &pf, scale, bias, yr, out, o0); break;
#else
                default: break;
#endif
                }
            }
            r += R;
        }
    }
}
typedef struct { const float *x; int n, in; const void *w; const float *s, *b; float *y; int out; } LinearArgs;
#define LINEAR(NAME, FMT)                                                                                     \
    static void NAME##_chunk(void *ctx, int lo, int hi) {                                                    \
        const LinearArgs *a = ctx;                                                                           \
        linear_body(FMT, a->x, a->n, a->in, a->w, a->s, a->b, a->y, a->out, lo, hi);                         \
    }                                                                                                        \
    void NAME(const float *x, int n, int in, const void *w, const float *s, const float *b, float *y, int out) { \
        LinearArgs a = {x, n, in, w, s, b, y, out};                                                          \
        parallel_for((out + 7) / 8, NAME##_chunk, &a);                                                       \
    }
LINEAR(linear_f32, F32)
LINEAR(linear_i8, I8)

/* ---- W8A8: int8 weights times int8 activations, integer dot products ----------------------------
 * Each row of x is quantized on its own (symmetric, scale max|x| / 127, round to nearest even). With
 * VNNI it is stored as u8 = q + 128 and a dot product is sum((q + 128) * w) - 128 * sum(w) (vpdpbusd
 * multiplies unsigned by signed bytes); without, each quad of q followed by its absolute values, ready
 * for vpmaddubsw (|q| unsigned times w with q's sign, signed): |q0 w0 + q1 w1| <= 2 * 127 * 127 never
 * saturates its 16-bit pair sums (weights are -127..127, so flipping a sign is exact), then vpmaddwd
 * by ones widens them to 32 bits. Either way a dot product is exact integer arithmetic, in any order,
 * so a row's result depends on nothing but the row and is the same on every CPU. Then
 * float(dot) * sx * sw (+ bias). */
static uint8_t *g_xq;
static float *g_sx;
static long g_xq_cap, g_sx_cap;

static int32_t *g_xs; /* W4A8: [n][stride / 32] sums of each group of 32 quantized activations */
static long g_xs_cap;

static int grow(void **p, long *cap, long need, size_t size) {
    if (need <= *cap) return 0;
    void *q = realloc(*p, size * (size_t)need);
    if (!q) return -1;
    *p = q, *cap = need;
    return 0;
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define Q8_ABS 0 /* W8A8's activations: u8 = q + 128 */
#else
#define Q8_ABS 1 /* W8A8's activations: each quad of q, then its |q| (8 bytes a quad) */
#endif

/* bytes of a quantized row for weights in format fmt (Q8: `in` bytes, or 2 * `in` with |q|; Q4: padded to
 * its groups of 32) */
static inline int quant_stride(int fmt, int in) { return fmt == Q8 ? in << Q8_ABS : (in + 31) / 32 * 32; }

/* room for n quantized rows of `in` activations for weights in format fmt (Q4: and their sums) */
static int quant_alloc(int fmt, int n, int in) {
    const int stride = quant_stride(fmt, in);
    return grow((void **)&g_xq, &g_xq_cap, (long)n * stride, 1) || grow((void **)&g_sx, &g_sx_cap, n, sizeof(float)) ||
           (fmt == Q4 && grow((void **)&g_xs, &g_xs_cap, (long)n * (stride / 32), sizeof(int32_t)));
}

/* Row xr [in] -> g_xq + r * stride: q (Q8, W8A8, stores q + 128 in unsigned bytes, or each quad of
 * q then its |q| (Q8_ABS); Q4, W4A8, q itself in signed bytes) then zeros up to stride; g_sx[r] its
 * scale; for Q4, g_xs the sums of q over each group of 32. Rows are independent: threads may
 * quantize different rows at once. */
static void quantize_row(int fmt, const float *xr, int r, int in) {
    const int stride = quant_stride(fmt, in), offset = fmt == Q8 && !Q8_ABS ? 128 : 0, sums = fmt == Q4;
    const __m256 sign = _mm256_set1_ps(-0.0f); /* in % 8 == 0 (the native linear's rule) */
    __m256 m = _mm256_setzero_ps();
    int k = 0;
#if defined(__AVX512F__) /* the same operations on 16 lanes (a max is exact in any order) */
    __m512 m16 = _mm512_setzero_ps();
    for (; k + 16 <= in; k += 16) m16 = _mm512_max_ps(m16, _mm512_abs_ps(_mm512_loadu_ps(xr + k)));
    m = _mm256_max_ps(_mm512_castps512_ps256(m16), _mm512_extractf32x8_ps(m16, 1));
#endif
    for (; k < in; k += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(xr + k)));
    float lanes[8], amax = 0.0f;
    _mm256_storeu_ps(lanes, m);
    for (int l = 0; l < 8; l++) amax = fmaxf(amax, lanes[l]);
    const __m256 inv = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    g_sx[r] = amax > 0.0f ? amax / 127.0f : 0.0f;
    uint8_t *q = g_xq + (long)r * stride;
    const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127), off = _mm256_set1_epi32(offset);
    k = 0;
#if defined(__AVX512F__) /* clamped to -127..127 (+ offset), so the truncating pack to bytes is exact */
    for (; k + 16 <= in && !(fmt == Q8 && Q8_ABS); k += 16) {
        __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xr + k), _mm512_set1_ps(inv[0])));
        v = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(v, _mm512_set1_epi32(-127)), _mm512_set1_epi32(127)),
                             _mm512_set1_epi32(offset));
        _mm_storeu_si128((__m128i *)(q + k), _mm512_cvtepi32_epi8(v));
    }
#endif
    for (; k < in; k += 8) { /* round to nearest even (the default rounding mode) */
        __m256i v = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xr + k), inv));
        v = _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(v, lo), hi), off);
        __m128i p16 = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        if (fmt == Q8 && Q8_ABS) { /* two quads of q, each followed by its |q| */
            const __m128i q8 = _mm_packs_epi16(p16, p16);
            _mm_storeu_si128((__m128i *)(q + 2 * k), _mm_unpacklo_epi32(q8, _mm_abs_epi8(q8)));
            continue;
        }
        /* q + 128 fits unsigned bytes, q signed ones */
        _mm_storel_epi64((__m128i *)(q + k), offset ? _mm_packus_epi16(p16, p16) : _mm_packs_epi16(p16, p16));
    }
    if (stride > in << (fmt == Q8 && Q8_ABS)) memset(q + in, offset, stride - in);
    if (sums)
        for (int g = 0; g < stride / 32; g++) {
            int32_t s = 0;
            for (int k = 0; k < 32; k++) s += (int8_t)q[32 * g + k];
            g_xs[(long)r * (stride / 32) + g] = s;
        }
}

static int quantize_rows(int fmt, const float *x, int n, int in) {
    if (quant_alloc(fmt, n, in)) return -1;
    for (int r = 0; r < n; r++) quantize_row(fmt, x + (long)r * in, r, in);
    return 0;
}

/* The weights are packed once at load (ops.make_weight) in panels of 16 outputs: panel p, k-quad t
 * is 64 bytes at w + (p * in / 4 + t) * 64, byte 4 * o + j holding W[16 p + o][4 t + j] (outputs
 * padded with zero rows to a multiple of 16). One multiply-add of a broadcast quad of x against a
 * panel's quad adds a 4-term dot product to each of the 16 outputs' sums, so every lane ends
 * holding one output's whole dot product: no horizontal sums. A tile is up to QROWS rows against
 * one panel (one weight load, QROWS broadcasts and QROWS multiply-adds per quad). */
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define QH 1     /* vectors per panel quad */
#define QROWS 8  /* 8 accumulators: enough in flight for vpdpbusd's latency */
typedef __m512i qacc, qw, qx;
#define qzero _mm512_setzero_si512
static inline __attribute__((always_inline)) qw qw_load(const int8_t *p) { return _mm512_loadu_si512(p); }
static inline __attribute__((always_inline)) qx qx_bcast(const uint8_t *p) { return bcast4_512(p); }
static inline __attribute__((always_inline)) qacc qmac(qacc a, qx x, qw w) { return _mm512_dpbusd_epi32(a, x, w); }
#else /* vpmaddubsw of |q| against the weights with q's signs, then vpmaddwd by ones */
#define QH 2
#define QROWS 4 /* 4 rows x 2 vectors: 8 accumulators, 2 weight and 2 activation registers of 16 */
typedef __m256i qacc, qw;
typedef struct { __m256i q, a; } qx;
#define qzero _mm256_setzero_si256
static inline __attribute__((always_inline)) qw qw_load(const int8_t *p) {
    return _mm256_loadu_si256((const __m256i *)p);
}
/* a quad of activations and its absolute values: two broadcasts from memory, no arithmetic */
static inline __attribute__((always_inline)) qx qx_bcast(const uint8_t *p) {
    return (qx){bcast4_256(p), bcast4_256(p + 4)};
}
static inline __attribute__((always_inline)) qacc qmac(qacc a, qx x, qw w) {
    const __m256i pairs = _mm256_maddubs_epi16(x.a, _mm256_sign_epi8(w, x.q)); /* exact: see above */
    return _mm256_add_epi32(a, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}
#endif
#define QX(x, r, in, k) ((x) + (((long)(r) * (in) + (k)) << Q8_ABS)) /* row r's activation k of Q8's */
#define QV (16 / QH) /* outputs per vector */
#define QAHEAD 2     /* panels the groups of rows fetch ahead */

typedef struct {
    int n, in, out;
    const int8_t *w;
    const float *s, *b;
    const int *wsum;
    float *y;
    int p_end;         /* a thread's own copy: the end of its panels, */
    const char *after; /* and what it fetches ahead past them (the next layer's first panels), or NULL */
    const void *next;  /* the Lin that runs next (model_forward), or NULL */
} QArgs;

/* y = float(dot - 128 * wsum) * sx * sw (+ b) for the QV outputs o.. of row r (the u8 offset of
 * the activations taken back out; none with Q8_ABS); only the real outputs are stored */
static inline __attribute__((always_inline)) void qfinish(const QArgs *a, qacc acc, int r, int o) {
    const float sx = g_sx[r];
    float *y = a->y + (long)r * a->out + o;
    if (a->out - o >= QV) { /* the same operations as the tail below, QV lanes at once */
#if QH == 1
        __m512i d = _mm512_sub_epi32(acc, _mm512_slli_epi32(_mm512_loadu_si512(a->wsum + o), 7));
        __m512 f = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(d), _mm512_set1_ps(sx)), _mm512_loadu_ps(a->s + o));
        if (a->b) f = _mm512_add_ps(f, _mm512_loadu_ps(a->b + o));
        _mm512_storeu_ps(y, f);
#else
        const __m256i wsum = _mm256_loadu_si256((const __m256i *)(a->wsum + o));
        const __m256i d = Q8_ABS ? acc : _mm256_sub_epi32(acc, _mm256_slli_epi32(wsum, 7));
        __m256 f = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(d), _mm256_set1_ps(sx)), _mm256_loadu_ps(a->s + o));
        if (a->b) f = _mm256_add_ps(f, _mm256_loadu_ps(a->b + o));
        _mm256_storeu_ps(y, f);
#endif
        return;
    }
    int32_t dot[QV];
    memcpy(dot, &acc, sizeof acc);
    for (int u = 0; u < a->out - o; u++) {
        float f = (float)(dot[u] - (Q8_ABS ? 0 : a->wsum[o + u] << 7)) * sx * a->s[o + u];
        y[u] = a->b ? f + a->b[o + u] : f;
    }
}

/* panel j of a thread's stream of panels: its own (below p_end), then the next layer's first ones
 * (the same panel size assumed: these are only fetched ahead), or NULL where there is none */
static inline const char *panel_at(const QArgs *a, int j, long ps) {
    return j < a->p_end ? (const char *)(a->w + (long)j * ps) : a->after ? a->after + (long)(j - a->p_end) * ps : NULL;
}

/* rows r0..r0+R-1 against panel p. The groups of rows also fetch panel p + QAHEAD, one line per
 * quad, the groups taking turns (group i the lines i, i + groups, ...): the hardware stops streaming
 * while later groups reread this panel from the cache, and without this the next panel's first group
 * waited on memory (2-3x slower passes of 9-16 rows). Spread over all the groups, not issued by the
 * first alone, the fetches keep memory busy while the later groups compute (W8A8, 30 layers' linears
 * and the head at 16 rows, medians of 15, five alternating runs each: 3.55-4.33 against 4.10-4.70 ms). */
static inline __attribute__((always_inline)) void qtile(const QArgs *a, int R, int r0, int p) {
    const int quads = a->in / 4, turns = (a->n + QROWS - 1) / QROWS;
    const long ps = (long)quads * 64;
    const int8_t *wp = a->w + (long)p * ps;
    const char *ahead = panel_at(a, p + QAHEAD, ps);
    const uint8_t *xr = QX(g_xq, r0, a->in, 0);
    qacc acc[QROWS][QH];
    for (int i = 0; i < R; i++)
        for (int h = 0; h < QH; h++) acc[i][h] = qzero();
    for (int t = 0, next = r0 / QROWS; t < quads; t++) {
        if (ahead && t == next) _mm_prefetch(ahead + (long)t * 64, _MM_HINT_T0), next += turns;
        qw wv[QH];
        for (int h = 0; h < QH; h++) wv[h] = qw_load(wp + t * 64 + h * 32);
        for (int i = 0; i < R; i++) {
            qx xv = qx_bcast(QX(xr, i, a->in, 4 * t));
            for (int h = 0; h < QH; h++) acc[i][h] = qmac(acc[i][h], xv, wv[h]);
        }
    }
    for (int i = 0; i < R; i++)
        for (int h = 0; h < QH; h++)
            if (16 * p + h * QV < a->out) qfinish(a, acc[i][h], r0 + i, 16 * p + h * QV);
}

/* rows FROM.. in groups of ROWS against panel p: a constant group size per case, so a tile's
 * accumulators stay in registers (cases past ROWS are never reached) */
#define RG(k, ROWS) ((k) < (ROWS) ? (k) : (ROWS))
#define ROW_GROUPS(TILE, a, p, ROWS, FROM)                                                                \
    for (int r0 = (FROM); r0 < (a)->n; r0 += (ROWS))                                                      \
        switch ((a)->n - r0 < (ROWS) ? (a)->n - r0 : (ROWS)) {                                            \
        case 1: TILE(a, RG(1, ROWS), r0, p); break;                                                       \
        case 2: TILE(a, RG(2, ROWS), r0, p); break;                                                       \
        case 3: TILE(a, RG(3, ROWS), r0, p); break;                                                       \
        case 4: TILE(a, RG(4, ROWS), r0, p); break;                                                       \
        case 5: TILE(a, RG(5, ROWS), r0, p); break;                                                       \
        case 6: TILE(a, RG(6, ROWS), r0, p); break;                                                       \
        case 7: TILE(a, RG(7, ROWS), r0, p); break;                                                       \
        case 8: TILE(a, RG(8, ROWS), r0, p); break;                                                       \
        case 9: TILE(a, RG(9, ROWS), r0, p); break;                                                       \
        case 10: TILE(a, RG(10, ROWS), r0, p); break;                                                     \
        case 11: TILE(a, RG(11, ROWS), r0, p); break;                                                     \
        case 12: TILE(a, RG(12, ROWS), r0, p); break;                                                     \
        case 13: TILE(a, RG(13, ROWS), r0, p); break;                                                     \
        case 14: TILE(a, RG(14, ROWS), r0, p); break;                                                     \
        case 15: TILE(a, RG(15, ROWS), r0, p); break;                                                     \
        default: TILE(a, (ROWS), r0, p); break;                                                           \
        }

/* panels p_lo..p_hi-1 (p counts them): from FROM rows on, where the CPU has AVX-512, in pairs through
 * TILE2 (R2 rows at a time; the rows left, one panel at a time, through TILE); then each panel not
 * yet done through TILE alone */
#if QH == 1
#define PANEL_PAIRS(TILE2, R2, FROM, TILE, a, p, p_hi)                                                    \
    if ((a)->n >= (FROM))                                                                                 \
        for (; (p) + 2 <= (p_hi); (p) += 2) {                                                             \
            const int full_ = (a)->n - (a)->n % (R2);                                                     \
            for (int r0 = 0; r0 < full_; r0 += (R2)) TILE2(a, r0, p);                                     \
            for (int j = (p); j < (p) + 2; j++) ROW_GROUPS(TILE, a, j, QROWS, full_)                      \
        }
#else
#define PANEL_PAIRS(TILE2, R2, FROM, TILE, a, p, p_hi)
#endif
#define PANELS(TILE2, R2, FROM, TILE, a, p_lo, p_hi)                                                      \
    {                                                                                                     \
        int p = (p_lo);                                                                                   \
        PANEL_PAIRS(TILE2, R2, FROM, TILE, a, p, p_hi)                                                    \
        for (; p < (p_hi); p++) ROW_GROUPS(TILE, a, p, QROWS, 0)                                          \
    }

#if QH == 1
/* 8 rows against panels p and p + 1: each broadcast feeds two multiply-adds (in a tile of one panel
 * the broadcasts, one per multiply-add, capped vpdpbusd's rate at about half). A lane's sum takes the
 * same steps as in qtile. The groups of rows fetch panels p + 2 and p + 3 (as in qtile), and p + 4 and
 * p + 5 into the second-level cache only (_MM_HINT_T1): a pass of 16 rows computes for longer than one
 * panel pair takes to arrive, and the nearer fetch alone left the first rows of a pair waiting (W8A8,
 * 16 rows, one process alternating builds: 4.51 -> 4.18 ms a pass; 3 or 4 pairs ahead: 4.27, 4.42;
 * in qtile, for passes of 1-15 rows, the far fetch cost 7% at 1 and 4 rows). Used for passes of
 * Q2_FROM rows or more: below, where a pass is bound by memory, it was slower (8 rows: 1.14x). */
#define Q2_FROM 16
#define ROWS8(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7)
static inline __attribute__((always_inline)) void qtile2(const QArgs *a, int r0, int p) {
    const int quads = a->in / 4;
    const long in = a->in, ps = (long)quads * 64;
    const int8_t *wp = a->w + (long)p * ps;
    const char *ahead[2] = {panel_at(a, p + 2, ps), panel_at(a, p + 3, ps)};
    const char *far[2] = {panel_at(a, p + 4, ps), panel_at(a, p + 5, ps)};
    const uint8_t *xr = g_xq + (long)r0 * in;
#define Q2_ZERO(i) qacc c##i##a = qzero(), c##i##b = qzero();
    ROWS8(Q2_ZERO)
    for (int t = 0, next = r0 / 8; t < quads; t++) {
        if (t == next) {
            for (int j = 0; j < 2; j++) {
                if (ahead[j]) _mm_prefetch(ahead[j] + (long)t * 64, _MM_HINT_T0);
                if (far[j]) _mm_prefetch(far[j] + (long)t * 64, _MM_HINT_T1);
            }
            next += a->n / 8;
        }
        const qw w0 = qw_load(wp + t * 64), w1 = qw_load(wp + ps + t * 64);
#define Q2_STEP(i)                                                                                         \
    {                                                                                                      \
        const qx xv = qx_bcast(xr + i * in + 4 * t);                                                       \
        c##i##a = qmac(c##i##a, xv, w0), c##i##b = qmac(c##i##b, xv, w1);                                  \
    }
        ROWS8(Q2_STEP)
    }
#define Q2_FINISH(i)                                                                                       \
    qfinish(a, c##i##a, r0 + i, 16 * p);                                                                   \
    if (16 * (p + 1) < a->out) qfinish(a, c##i##b, r0 + i, 16 * (p + 1));
    ROWS8(Q2_FINISH)
}
#endif

static const char *first_panels(const void *next, int p_lo, int panels);

/* Each thread fetches ahead within its own panels, and past their end the first panels that the
 * same thread will read of the next layer (not the panels after its own, which the next thread has
 * read already) */
static void linear_q8_chunk(void *ctx, int p_lo, int p_hi) {
    QArgs a = *(const QArgs *)ctx;
    a.p_end = p_hi, a.after = first_panels(a.next, p_lo, (a.out + 15) / 16);
    PANELS(qtile2, 8, Q2_FROM, qtile, (&a), p_lo, p_hi)
}

static int linear_q8_then(const float *x, int n, int in, const void *w, const float *s, const int *wsum,
                          const float *b, float *y, int out, const void *next) {
    if (x && quantize_rows(Q8, x, n, in)) return -1; /* x NULL: quantized already (by its rows' maker) */
    QArgs a = {n, in, out, w, s, b, wsum, y, 0, NULL, next};
    parallel_for((out + 15) / 16, linear_q8_chunk, &a);
    return 0;
}

/* w: packed as above ([ceil(out / 16)][in / 4][64] bytes); in % 4 == 0. Threads split the panels. */
int linear_q8(const float *x, int n, int in, const void *w, const float *s, const int *wsum, const float *b,
              float *y, int out) {
    return linear_q8_then(x, n, in, w, s, wsum, b, y, out, NULL);
}

/* ---- W4A8: 4-bit weights in groups of 32 along k, int8 activations ---------------------------
 * A weight is w = s * q + m with q in 0..15 and one (s, m) per output and group of 32 (stored as
 * float16; ops.make_weight derives them from the group's min and max, as GGUF's Q4_1 does). A row of
 * x is quantized as for W8A8 but kept signed, with each group's sum of q: then
 *   x . w = sx * sum over groups of (s * dot(q_x, q_w) + m * sum(q_x)),
 * each group's dot product exact integer arithmetic (vpdpbusd with the weights as the unsigned
 * operand, or 16-bit multiply-adds that cannot saturate: 2 * 15 * 127 < 2^15), the groups folded in
 * ascending order with explicit FMAs: a row's result depends on nothing but the row.
 * Packed in panels of 16 outputs; panel p, group g is 320 bytes at w + (p * G + g) * 320: four
 * 64-byte vectors, vector v holding quad v (k = 4v..4v+3 of the group) in its low nibbles and quad
 * v + 4 in its high ones, byte 4 * o + j for output o (the W8A8 quad layout), then the 16 scales,
 * then the 16 mins. */
#define Q4_GROUP 320
#if QH == 1
typedef __m512i q4w;
typedef __m512 qf;
#define qf_zero _mm512_setzero_ps
static inline __attribute__((always_inline)) q4w q4_nibbles(const uint8_t *p, int high) {
    __m512i v = _mm512_loadu_si512(p);
    return _mm512_and_si512(high ? _mm512_srli_epi16(v, 4) : v, _mm512_set1_epi8(15));
}
static inline __attribute__((always_inline)) q4w q4_bcast(const uint8_t *p) { return bcast4_512(p); }
static inline __attribute__((always_inline)) qacc q4mac(qacc a, q4w w, q4w x) { return _mm512_dpbusd_epi32(a, w, x); }
static inline __attribute__((always_inline)) qf qf_half(const uint8_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
static inline __attribute__((always_inline)) qf qf_group(qf f, qacc dot, qf s, qf m, float xs) {
    return _mm512_fmadd_ps(m, _mm512_set1_ps(xs), _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, f));
}
#else
typedef __m256i q4w;
typedef __m256 qf;
#define qf_zero _mm256_setzero_ps
static inline __attribute__((always_inline)) q4w q4_nibbles(const uint8_t *p, int high) {
    __m256i v = _mm256_loadu_si256((const __m256i *)p);
    return _mm256_and_si256(high ? _mm256_srli_epi16(v, 4) : v, _mm256_set1_epi8(15));
}
static inline __attribute__((always_inline)) q4w q4_bcast(const uint8_t *p) { return bcast4_256(p); }
static inline __attribute__((always_inline)) qacc q4mac(qacc a, q4w w, q4w x) {
    return _mm256_add_epi32(a, _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)));
}
static inline __attribute__((always_inline)) qf qf_half(const uint8_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
static inline __attribute__((always_inline)) qf qf_group(qf f, qacc dot, qf s, qf m, float xs) {
    return _mm256_fmadd_ps(m, _mm256_set1_ps(xs), _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, f));
}
#endif

typedef struct { int n, in, out, groups; const uint8_t *w; const float *b; float *y; } Q4Args;

/* y = f * sx (+ b) for the QV outputs o.. of row r, only the real ones */
static inline __attribute__((always_inline)) void q4store(const Q4Args *a, qf f, int r, int o) {
    if (o >= a->out) return;
    float *y = a->y + (long)r * a->out + o;
    const float sx = g_sx[r];
    if (o + QV <= a->out) { /* the same operations as the tail below, QV lanes at once */
#if QH == 1
        const __m512 v = _mm512_mul_ps(f, _mm512_set1_ps(sx));
        _mm512_storeu_ps(y, a->b ? _mm512_add_ps(v, _mm512_loadu_ps(a->b + o)) : v);
#else
        const __m256 v = _mm256_mul_ps(f, _mm256_set1_ps(sx));
        _mm256_storeu_ps(y, a->b ? _mm256_add_ps(v, _mm256_loadu_ps(a->b + o)) : v);
#endif
        return;
    }
    float v[QV];
    memcpy(v, &f, sizeof v);
    for (int u = 0; o + u < a->out; u++) y[u] = a->b ? v[u] * sx + a->b[o + u] : v[u] * sx;
}

/* rows r0..r0+R-1 against panel p (QV outputs per vector, QH vectors), the groups of rows taking
 * turns to fetch panel p + QAHEAD as in qtile */
static inline __attribute__((always_inline)) void q4tile(const Q4Args *a, int R, int r0, int p) {
    const int G = a->groups, stride = 32 * G, turns = (a->n + QROWS - 1) / QROWS;
    const uint8_t *wp = a->w + (long)p * G * Q4_GROUP;
    const char *ahead = p + QAHEAD < (a->out + 15) / 16 ? (const char *)(wp + (long)QAHEAD * G * Q4_GROUP) : NULL;
    for (int h = 0; h < QH; h++) {
        qf f[QROWS];
        for (int i = 0; i < R; i++) f[i] = qf_zero();
        for (int g = 0, next = r0 / QROWS; g < G; g++) {
            const uint8_t *blk = wp + (long)g * Q4_GROUP;
            if (ahead && h == 0 && g == next) {
                for (int l = 0; l < Q4_GROUP; l += 64) _mm_prefetch(ahead + (long)g * Q4_GROUP + l, _MM_HINT_T0);
                next += turns;
            }
            q4w wq[8];
            for (int v = 0; v < 4; v++) {
                wq[v] = q4_nibbles(blk + 64 * v + 32 * h, 0);
                wq[v + 4] = q4_nibbles(blk + 64 * v + 32 * h, 1);
            }
            const qf s = qf_half(blk + 256 + 2 * QV * h), m = qf_half(blk + 288 + 2 * QV * h);
            for (int i = 0; i < R; i++) {
                const uint8_t *xr = g_xq + (long)(r0 + i) * stride + 32 * g;
                qacc dot = q4mac(q4mac(q4mac(q4mac(qzero(), wq[0], q4_bcast(xr)), wq[1], q4_bcast(xr + 4)),
                                       wq[2], q4_bcast(xr + 8)), wq[3], q4_bcast(xr + 12));
                dot = q4mac(q4mac(q4mac(q4mac(dot, wq[4], q4_bcast(xr + 16)), wq[5], q4_bcast(xr + 20)),
                                  wq[6], q4_bcast(xr + 24)), wq[7], q4_bcast(xr + 28));
                f[i] = qf_group(f[i], dot, s, m, (float)g_xs[(long)(r0 + i) * G + g]);
            }
        }
        for (int i = 0; i < R; i++) q4store(a, f[i], r0 + i, 16 * p + QV * h);
    }
}

#if QH == 1
/* 4 rows against panels p and p + 1, as qtile2 does for W8A8: each broadcast quad feeds two
 * multiply-adds. A group's dot product is exact integer arithmetic (its order does not matter) and
 * the groups fold in ascending order as in q4tile, so the outputs are bitwise q4tile's. For passes
 * of Q4_FROM rows or more (8 to 256 rows: 0.82-0.90x q4tile's time on the Qwen 0.5B's layers). */
#define Q4_FROM 8
#define ROWS4(M) M(0) M(1) M(2) M(3)
static inline __attribute__((always_inline)) void q4tile2(const Q4Args *a, int r0, int p) {
    const int G = a->groups, stride = 32 * G;
    const long ps = (long)G * Q4_GROUP;
    const uint8_t *wa = a->w + (long)p * ps, *wb = wa + ps;
    const char *ahead = p + 3 < (a->out + 15) / 16 ? (const char *)(wa + 2 * ps) : NULL;
#define Q42_INIT(i) qf f##i##a = qf_zero(), f##i##b = qf_zero(); const uint8_t *x##i = g_xq + (long)(r0 + i) * stride;
    ROWS4(Q42_INIT)
    for (int g = 0, next = r0 / 4; g < G; g++) {
        const uint8_t *ba = wa + (long)g * Q4_GROUP, *bb = wb + (long)g * Q4_GROUP;
        if (ahead && g == next) { /* the groups of rows take turns, as in qtile */
            for (int l = 0; l < Q4_GROUP; l += 64) {
                _mm_prefetch(ahead + (long)g * Q4_GROUP + l, _MM_HINT_T0);
                _mm_prefetch(ahead + ps + (long)g * Q4_GROUP + l, _MM_HINT_T0);
            }
            next += a->n / 4;
        }
#define Q42_ZERO(i) qacc d##i##a = qzero(), d##i##b = qzero();
        ROWS4(Q42_ZERO)
        for (int v = 0; v < 4; v++) { /* quads v (low nibbles) and v + 4 (high) of both panels */
            const q4w la = q4_nibbles(ba + 64 * v, 0), ha = q4_nibbles(ba + 64 * v, 1);
            const q4w lb = q4_nibbles(bb + 64 * v, 0), hb = q4_nibbles(bb + 64 * v, 1);
#define Q42_STEP(i)                                                                                        \
    {                                                                                                      \
        const q4w xl = q4_bcast(x##i + 32 * g + 4 * v), xh = q4_bcast(x##i + 32 * g + 16 + 4 * v);         \
        d##i##a = q4mac(q4mac(d##i##a, la, xl), ha, xh), d##i##b = q4mac(q4mac(d##i##b, lb, xl), hb, xh);  \
    }
            ROWS4(Q42_STEP)
        }
        const qf sa = qf_half(ba + 256), ma = qf_half(ba + 288), sb = qf_half(bb + 256), mb = qf_half(bb + 288);
#define Q42_FOLD(i)                                                                                        \
    {                                                                                                      \
        const float xs = (float)g_xs[(long)(r0 + i) * G + g];                                              \
        f##i##a = qf_group(f##i##a, d##i##a, sa, ma, xs), f##i##b = qf_group(f##i##b, d##i##b, sb, mb, xs); \
    }
        ROWS4(Q42_FOLD)
    }
#define Q42_STORE(i) q4store(a, f##i##a, r0 + i, 16 * p), q4store(a, f##i##b, r0 + i, 16 * (p + 1));
    ROWS4(Q42_STORE)
}
#endif

static void linear_q4_chunk(void *ctx, int p_lo, int p_hi) {
    const Q4Args *a = ctx;
    PANELS(q4tile2, 4, Q4_FROM, q4tile, a, p_lo, p_hi)
}

/* w: packed as above ([ceil(out / 16)][ceil(in / 32)][320] bytes); x NULL: quantized already (by its
 * rows' maker) */
int linear_q4(const float *x, int n, int in, const void *w, const float *b, float *y, int out) {
    const int groups = (in + 31) / 32;
    if (x && quantize_rows(Q4, x, n, in)) return -1;
    Q4Args a = {n, in, out, groups, w, b, y};
    parallel_for((out + 15) / 16, linear_q4_chunk, &a);
    return 0;
}

/* ---- BF16: bfloat16 weights times bfloat16 activations, float32 sums ---------------------------
 * Each row of x is rounded to bfloat16 (nearest even, subnormals to signed zero, as the weights are
 * at load). The weights are packed at load (ops.make_weight) in panels of 16 outputs: panel p, pair
 * t is 64 bytes at w + (p * in / 2 + t) * 64, element 2 * o + j holding W[16 p + o][2 t + j]. A
 * step adds a pair's two products to each of the 16 outputs' float32 sums: the odd product, then
 * the even one, each product exact in float32 and each add rounded. AVX512-BF16's vdpbf16ps does
 * exactly that in one instruction (bitwise the same as the two FMAs below on the AMD EPYC measured,
 * except that it flushes a subnormal sum or product to zero where the FMAs keep it); other CPUs do it
 * with two FMAs. So a row's sums take the same steps in the same order whatever the pass width, and
 * every lane ends holding one output's whole dot product. A tile is up to BROWS rows against one
 * panel, the groups of rows taking turns to fetch the panel QAHEAD ahead as in qtile. The rounded rows are
 * stored pair-major, so a tile's broadcasts of one pair read adjacent words off one address; without
 * AVX-512, passes of BX_FLOATS_FROM rows or more also store each pair as the two floats it holds, so
 * that a broadcast needs no arithmetic. */

/* one float as round_bf16_rows rounds it: a subnormal to a signed zero, then to nearest even */
static inline uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if (!(u & 0x7f800000u)) u &= 0x80000000u;
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

#if defined(__AVX512F__)
#define BH 1
#define BROWS 16 /* 16 accumulators; 8 were too few to cover a pass of 9-16 rows in one group */
typedef __m512 bacc;
#define bzero _mm512_setzero_ps
#if defined(__AVX512BF16__)
typedef __m512bh bw, bx;
static inline __attribute__((always_inline)) bw bw_of(__m512i v) { return (bw)v; }
static inline __attribute__((always_inline)) bw bw_load(const uint16_t *p) { return (bw)_mm512_loadu_si512(p); }
static inline __attribute__((always_inline)) bx bx_bcast(const uint32_t *p) { return (bx)bcast4_512(p); }
static inline __attribute__((always_inline)) bacc bmac(bacc a, bx x, bw w) { return _mm512_dpbf16_ps(a, x, w); }
#else
typedef struct { __m512 e, o; } bw, bx;
static inline __attribute__((always_inline)) bw bsplit(__m512i v) {
    return (bw){_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)),
                _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xffff0000u)))};
}
#define bw_of bsplit
static inline __attribute__((always_inline)) bw bw_load(const uint16_t *p) { return bsplit(_mm512_loadu_si512(p)); }
static inline __attribute__((always_inline)) bx bx_bcast(const uint32_t *p) { return bsplit(bcast4_512(p)); }
static inline __attribute__((always_inline)) bacc bmac(bacc a, bx x, bw w) {
    return _mm512_fmadd_ps(x.e, w.e, _mm512_fmadd_ps(x.o, w.o, a));
}
#endif
#else
#define BH 2
#define BROWS 4 /* 4 rows x 2 vectors: 8 accumulators, 4 weight and 2 activation registers of 16 */
typedef __m256 bacc;
#define bzero _mm256_setzero_ps
typedef struct { __m256 e, o; } bw, bx;
static inline __attribute__((always_inline)) bw bsplit(__m256i v) {
    return (bw){_mm256_castsi256_ps(_mm256_slli_epi32(v, 16)),
                _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xffff0000u)))};
}
#define bw_of bsplit
static inline __attribute__((always_inline)) bw bw_load(const uint16_t *p) {
    return bsplit(_mm256_loadu_si256((const __m256i *)p));
}
static inline __attribute__((always_inline)) bx bx_bcast(const uint32_t *p) { return bsplit(bcast4_256(p)); }
/* tiles of BX_FLOATS_FROM rows or more read each pair as its two floats, stored apart (g_xf): a
 * broadcast with no arithmetic (AVX2-only AMD EPYC, SmolLM2 bf16, a pass of 16: 0.84-0.87x the time;
 * in tiles of 1 and 2 rows it was 5% slower, so those keep splitting the pair) */
#define BX_FLOATS_FROM 3
typedef struct { float e, o; } bxf;
static inline bxf bxf_of(uint32_t pair) {
    const uint32_t e = pair << 16, o = pair & 0xffff0000u;
    bxf f;
    memcpy(&f.e, &e, 4), memcpy(&f.o, &o, 4);
    return f;
}
static inline __attribute__((always_inline)) bx bx_floats(const bxf *p) {
    return (bx){_mm256_set1_ps(p->e), _mm256_set1_ps(p->o)};
}
static inline __attribute__((always_inline)) bacc bmac(bacc a, bx x, bw w) {
    return _mm256_fmadd_ps(x.e, w.e, _mm256_fmadd_ps(x.o, w.o, a));
}
#endif
#define BV (16 / BH) /* outputs per vector */

static uint32_t *g_xb; /* [in / 2][n]: pair t of row r (two bfloat16) at t * n + r */
static long g_xb_cap;
#if BH == 2
static bxf *g_xf; /* the same pairs as floats, where a pass has BX_FLOATS_FROM rows or more */
static long g_xf_cap;
#endif

static int round_bf16_rows(const float *x, int n, int in) {
    if (grow((void **)&g_xb, &g_xb_cap, (long)n * in / 2, sizeof(uint32_t))) return -1;
#if BH == 2
    if (n >= BX_FLOATS_FROM && grow((void **)&g_xf, &g_xf_cap, (long)n * in / 2, sizeof(bxf))) return -1;
#endif
    const __m256i expo = _mm256_set1_epi32(0x7f800000), sign = _mm256_set1_epi32((int)0x80000000u);
    const __m256i half = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1);
    for (int r = 0; r < n; r++)
        for (int k = 0; k < in; k += 8) { /* in % 8 == 0 */
            __m256i u = _mm256_loadu_si256((const __m256i *)(x + (long)r * in + k));
            const __m256i sub = _mm256_cmpeq_epi32(_mm256_and_si256(u, expo), _mm256_setzero_si256());
            u = _mm256_blendv_epi8(u, _mm256_and_si256(u, sign), sub);
            u = _mm256_add_epi32(u, _mm256_add_epi32(half, _mm256_and_si256(_mm256_srli_epi32(u, 16), one)));
            u = _mm256_srli_epi32(u, 16);
            uint32_t pairs[4];
            _mm_storeu_si128((__m128i *)pairs, _mm_packus_epi32(_mm256_castsi256_si128(u), _mm256_extracti128_si256(u, 1)));
            for (int j = 0; j < 4; j++) {
                g_xb[(long)(k / 2 + j) * n + r] = pairs[j];
#if BH == 2
                if (n >= BX_FLOATS_FROM) g_xf[(long)(k / 2 + j) * n + r] = bxf_of(pairs[j]);
#endif
            }
        }
    return 0;
}

typedef struct { int n, in, out; const uint16_t *w; const float *b; float *y; } BArgs;

static inline __attribute__((always_inline)) void btile(const BArgs *a, int R, int r0, int p) {
    const int pairs = a->in / 2;
    const uint16_t *wp = a->w + (long)p * pairs * 32;
    const char *ahead = p + QAHEAD < (a->out + 15) / 16 ? (const char *)(wp + (long)QAHEAD * pairs * 32) : NULL;
    const uint32_t *xr = g_xb + r0;
    const int turns = (a->n + BROWS - 1) / BROWS;
    bacc acc[BROWS][BH];
    for (int i = 0; i < R; i++)
        for (int h = 0; h < BH; h++) acc[i][h] = bzero();
    for (int t = 0, next = r0 / BROWS; t < pairs; t++) {
        if (ahead && t == next) _mm_prefetch(ahead + (long)t * 64, _MM_HINT_T0), next += turns;
        bw wv[BH];
        for (int h = 0; h < BH; h++) wv[h] = bw_load(wp + t * 32 + h * 16);
        for (int i = 0; i < R; i++) {
#if BH == 2
            const long at = (long)t * a->n + i;
            const bx xv = R >= BX_FLOATS_FROM ? bx_floats(g_xf + r0 + at) : bx_bcast(xr + at);
#else
            const bx xv = bx_bcast(xr + (long)t * a->n + i);
#endif
            for (int h = 0; h < BH; h++) acc[i][h] = bmac(acc[i][h], xv, wv[h]);
        }
    }
    for (int i = 0; i < R; i++)
        for (int h = 0; h < BH; h++) {
            const int o = 16 * p + h * BV;
            if (o >= a->out) continue;
            float v[BV], *y = a->y + (long)(r0 + i) * a->out + o;
            memcpy(v, &acc[i][h], sizeof v);
            for (int u = 0; u < BV && o + u < a->out; u++) y[u] = a->b ? v[u] + a->b[o + u] : v[u];
        }
}

static void linear_bf16_chunk(void *ctx, int p_lo, int p_hi) {
    const BArgs *a = ctx;
    for (int p = p_lo; p < p_hi; p++) ROW_GROUPS(btile, a, p, BROWS, 0)
}

/* w: packed as above ([ceil(out / 16)][in / 2][32] bfloat16); in % 8 == 0 */
int linear_bf16(const float *x, int n, int in, const void *w, const float *b, float *y, int out) {
    if (round_bf16_rows(x, n, in)) return -1;
    BArgs a = {n, in, out, w, b, y};
    parallel_for((out + 15) / 16, linear_bf16_chunk, &a);
    return 0;
}

typedef struct {
    const void *w;
    const float *scale, *bias; /* [out] or NULL */
    const int *wsum;           /* Q8: [out] sums of each output's int8 weights */
    int out, in, fmt, pad;
} Lin;

/* The first panels of W8A8 layer `next` (a Lin, or NULL) that the thread whose panels of this layer
 * (`panels` of them) start at p_lo will read: the same split as parallel_for's */
static const char *first_panels(const void *next, int p_lo, int panels) {
    const Lin *l = next;
    if (!l || l->fmt != Q8) return NULL;
    const int next_panels = (l->out + 15) / 16, next_team = g_threads < next_panels ? g_threads : next_panels;
    const int t = thread_of(p_lo, g_threads < panels ? g_threads : panels, panels);
    if (t < 0 || t >= next_team) return NULL; /* no panels of the next layer for this thread */
    int lo, hi;
    chunk(t, next_team, next_panels, &lo, &hi);
    return (const char *)l->w + (long)lo * l->in * 16;
}

/* The 8-bit activations of a W8A8 or W4A8 layer can be made row by row where their rows are made
 * (residual, gated_act): in parallel, by the thread that holds the row (quant_alloc before such a
 * region, quantize_row in it). prep_for(l): l if its activations are quantized, else NULL. */
static inline const Lin *prep_for(const Lin *l) { return l && (l->fmt == Q8 || l->fmt == Q4) ? l : NULL; }

/* 0, or -1 if memory ran out (the 8-bit activations of W8A8 and W4A8); next: the layer that runs
 * next (its first panels are fetched ahead), or NULL; prepared: x's rows were quantized (prep_for) */
static int linear(const Lin *l, const float *x, int n, float *y, const Lin *next, int prepared) {
    TIC;
    int err = 0;
    const float *xq = prepared && prep_for(l) ? NULL : x; /* NULL: quantized already */
    if (l->fmt == F32) linear_f32(x, n, l->in, l->w, l->scale, l->bias, y, l->out);
    else if (l->fmt == BF16) err = linear_bf16(x, n, l->in, l->w, l->bias, y, l->out);
    else if (l->fmt == I8) linear_i8(x, n, l->in, l->w, l->scale, l->bias, y, l->out);
    else if (l->fmt == Q8) err = linear_q8_then(xq, n, l->in, l->w, l->scale, l->wsum, l->bias, y, l->out, next);
    else err = linear_q4(xq, n, l->in, l->w, l->bias, y, l->out);
    TOC(0);
    return err;
}

static inline float dot(const float *a, const float *b, int d) {
    __m256 acc = _mm256_setzero_ps();
    for (int k = 0; k < d; k += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc);
    return hsum8(acc);
}

/* Attention of n queries over cache slots in canonical order; d % 8 == 0 (d % 16 == 0 where kvb).
 * q: [n, heads, d]; kc, vc: [kv_heads, max_len, d] (this layer) float32, or bfloat16 where kvb;
 * out: [n, heads, d]. With a bfloat16 cache the queries are rounded to bfloat16 too and the scores
 * are dot products of bfloat16 pairs in float32 (bmac: vdpbf16ps, or two FMAs that round the same);
 * the softmax's weights are rounded to bfloat16 and weight the values in pairs of keys, also through
 * bmac's arithmetic; the sum that normalizes them stays float32.
 * Query j sees its sequence's cached slots lo[j]..hi[j]-1 (slot lo[j] holds position 0), then the
 * slots hi[j] + extra[j, 0..count[j]-1] (its ancestors in the pass by depth, itself last: offsets
 * from the pass's first slot of its sequence, so a chain's are the same in every pass). Scores, max, exp,
 * sum and the weighted sum run in that order, so a query's result is the same whether its
 * ancestors are in the pass or already committed, and wherever its sequence sits in the cache.
 * window > 0 keeps only the cache slots of positions > pos[j] - window. */
typedef struct {
    const float *q;
    const void *kc, *vc;
    const int *lo, *hi, *extra, *count, *pos;
    float *out, scale;
    int heads, kv_heads, d, max_len, max_extra, window, cap, hs, n, rows_per_job, kvb; /* hs: heads per job */
    atomic_int failed; /* a thread's scratch could not be had */
} AttentionArgs;

static inline float *out_row(const AttentionArgs *a, int j, int h) { return a->out + ((long)j * a->heads + h) * a->d; }

/* Each job is one query row, or two (rows_per_job, AVX-512 only), and HS heads (1 to 3) of one kv
 * group: the keys' and values' loads are shared by the HS heads, the keys' for the scores also by
 * the two rows over the cached keys they both see, and every (query, head) gets the same arithmetic
 * whatever HS and the rows are. */
#define HS_MAX 3

/* scores s[i][t..t+3] from 4 keys' 8-lane accumulators: each key's lanes summed as
 * ((0+1)+(2+3)) + ((4+5)+(6+7)) (the one reduction of every score), times the scale */
static inline __attribute__((always_inline)) void qk_store4(int HS, __m256 (*acc)[4], float *const *s, int t,
                                                            __m128 scale) {
    for (int i = 0; i < HS; i++) { /* lanes 0-3 of h: each key's (0+1)+(2+3); lanes 4-7: (4+5)+(6+7) */
        __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(acc[i][0], acc[i][1]), _mm256_hadd_ps(acc[i][2], acc[i][3]));
        __m128 r = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        _mm_storeu_ps(s[i] + t, _mm_mul_ps(r, scale));
    }
}

/* the scores of keys slot[t..t+3] for the HS heads (queries qv[], scores s[] + t): each key's dot
 * product in 8 lanes over d (ascending), then qk_store4's sums */
static inline __attribute__((always_inline)) void qk_block4(int HS, const float *const *qv, float *const *s,
                                                            const float *kb, const int *slot, int t, int d,
                                                            __m128 scale) {
    __m256 acc[HS_MAX][4];
    const float *k0 = kb + (long)slot[t] * d, *k1 = kb + (long)slot[t + 1] * d;
    const float *k2 = kb + (long)slot[t + 2] * d, *k3 = kb + (long)slot[t + 3] * d;
    for (int i = 0; i < HS; i++)
        for (int u = 0; u < 4; u++) acc[i][u] = _mm256_setzero_ps();
    for (int k = 0; k < d; k += 8) {
        const __m256 v0 = _mm256_loadu_ps(k0 + k), v1 = _mm256_loadu_ps(k1 + k);
        const __m256 v2 = _mm256_loadu_ps(k2 + k), v3 = _mm256_loadu_ps(k3 + k);
        for (int i = 0; i < HS; i++) {
            const __m256 qk = _mm256_loadu_ps(qv[i] + k);
            acc[i][0] = _mm256_fmadd_ps(qk, v0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(qk, v1, acc[i][1]);
            acc[i][2] = _mm256_fmadd_ps(qk, v2, acc[i][2]);
            acc[i][3] = _mm256_fmadd_ps(qk, v3, acc[i][3]);
        }
    }
    qk_store4(HS, acc, s, t, scale);
}

#if !defined(__AVX512F__)
/* qk_block4 over bfloat16 keys and queries: lane l of a key's accumulator takes the pairs (k + 2l,
 * k + 2l + 1) for k = 0, 16, 32, .. ascending, through bmac; then the same sums */
static inline __attribute__((always_inline)) void qk_block4b(int HS, const uint16_t *const *qv, float *const *s,
                                                             const uint16_t *kb, const int *slot, int t, int d,
                                                             __m128 scale) {
    __m256 acc[HS_MAX][4];
    const uint16_t *kr[4];
    for (int u = 0; u < 4; u++) kr[u] = kb + (long)slot[t + u] * d;
    for (int i = 0; i < HS; i++)
        for (int u = 0; u < 4; u++) acc[i][u] = _mm256_setzero_ps();
    for (int k = 0; k < d; k += 16) {
        bw v[4];
        for (int u = 0; u < 4; u++) v[u] = bw_of(_mm256_loadu_si256((const __m256i *)(kr[u] + k)));
        for (int i = 0; i < HS; i++) {
            const bx qk = bw_of(_mm256_loadu_si256((const __m256i *)(qv[i] + k)));
            for (int u = 0; u < 4; u++) acc[i][u] = bmac(acc[i][u], qk, v[u]);
        }
    }
    qk_store4(HS, acc, s, t, scale);
}
#endif

#if defined(__AVX512F__)
/* qk_block4's arithmetic for keys slot[t..t+7], two keys per 16-lane vector (a key's 8 lanes in one
 * half): the same FMAs per lane, and the same sums, ((0+1)+(2+3))+((4+5)+(6+7)), by 16-lane
 * shuffles in place of hadd; half the instructions */
static inline __m512 hadd16(__m512 a, __m512 b) { /* _mm256_hadd_ps on each 256-bit half */
    return _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
}
/* qk_store4's sums for 8 keys, two per 16-lane accumulator */
static inline __attribute__((always_inline)) void qk_store8(int HS, __m512 (*acc)[4], float *const *s, int t,
                                                            __m128 scale) {
    /* 128-bit lanes of g: [k0 k2 k4 k6] low halves' sums, the same high, [k1 k3 k5 k7] low, high */
    const __m512i order = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m256 sc = _mm256_set_m128(scale, scale);
    for (int i = 0; i < HS; i++) {
        const __m512 g = hadd16(hadd16(acc[i][0], acc[i][1]), hadd16(acc[i][2], acc[i][3]));
        const __m512 r = _mm512_add_ps(g, _mm512_shuffle_f32x4(g, g, _MM_SHUFFLE(2, 3, 0, 1)));
        _mm256_storeu_ps(s[i] + t, _mm256_mul_ps(_mm512_castps512_ps256(_mm512_permutexvar_ps(order, r)), sc));
    }
}
static inline __attribute__((always_inline)) void qk_block8(int HS, const float *const *qv, float *const *s,
                                                            const float *kb, const int *slot, int t, int d,
                                                            __m128 scale) {
    __m512 acc[2 * HS_MAX][4]; /* up to two queries' HS_MAX heads: 24 accumulators */
    const float *kr[8];
    for (int u = 0; u < 8; u++) kr[u] = kb + (long)slot[t + u] * d;
    for (int i = 0; i < HS; i++)
        for (int u = 0; u < 4; u++) acc[i][u] = _mm512_setzero_ps();
    for (int k = 0; k < d; k += 8) {
        if (k % 16 == 0) /* the next block's keys, where they follow in the cache (a line per 16 floats) */
            for (int u = 0; u < 8; u++) _mm_prefetch((const char *)(kr[u] + 8 * d + k), _MM_HINT_T0);
        __m512 v[4];
        for (int u = 0; u < 4; u++)
            v[u] = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(kr[2 * u] + k)), _mm256_loadu_ps(kr[2 * u + 1] + k), 1);
        for (int i = 0; i < HS; i++) {
            const __m512 qk = _mm512_broadcast_f32x8(_mm256_loadu_ps(qv[i] + k));
            for (int u = 0; u < 4; u++) acc[i][u] = _mm512_fmadd_ps(qk, v[u], acc[i][u]);
        }
    }
    qk_store8(HS, acc, s, t, scale);
}

/* qk_block4b's arithmetic for keys slot[t..t+7], two keys per vector as in qk_block8 */
static inline __attribute__((always_inline)) void qk_block8b(int HS, const uint16_t *const *qv, float *const *s,
                                                             const uint16_t *kb, const int *slot, int t, int d,
                                                             __m128 scale) {
    __m512 acc[2 * HS_MAX][4];
    const uint16_t *kr[8];
    for (int u = 0; u < 8; u++) kr[u] = kb + (long)slot[t + u] * d;
    for (int i = 0; i < HS; i++)
        for (int u = 0; u < 4; u++) acc[i][u] = _mm512_setzero_ps();
    for (int k = 0; k < d; k += 16) {
        if (k % 32 == 0) /* the next block's keys (a line per 32 bfloat16) */
            for (int u = 0; u < 8; u++) _mm_prefetch((const char *)(kr[u] + 8 * d + k), _MM_HINT_T0);
        bw v[4];
        for (int u = 0; u < 4; u++)
            v[u] = bw_of(_mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(kr[2 * u] + k))),
                                            _mm256_loadu_si256((const __m256i *)(kr[2 * u + 1] + k)), 1));
        for (int i = 0; i < HS; i++) {
            const bx qk = bw_of(_mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(qv[i] + k))));
            for (int u = 0; u < 4; u++) acc[i][u] = bmac(acc[i][u], qk, v[u]);
        }
    }
    qk_store8(HS, acc, s, t, scale);
}
#endif

/* The weighted sum of values: o[i][k0 .. k0 + 8C) = inv[i] * sum over t of p[i][t] * V[slot[t]][k0 ..],
 * one FMA per key in order of t; with a bfloat16 cache (KVB; p then bfloat16 too) one bmac step per
 * pair of keys (t, t + 1), t from t0 (even), the key after an odd count being padding of weight 0.
 * A sum may run in two spans of keys (PV_RESUME: start from the sums
 * a PV_PARTIAL sweep of the keys before left in o, unscaled; a float's store and load are exact), so a
 * span of keys that several queries see is swept once for all of them: every lane takes the same
 * FMAs in the same order either way. */
enum { PV_RESUME = 1, PV_PARTIAL = 2 };
#define PV_MAX (2 * HS_MAX) /* queries per sweep: HS heads of one row, or of two */
/* values i .. i + 7 (or + 15) of vb, float32 or (KVB) bfloat16 widened exactly */
static inline __attribute__((always_inline)) __m256 value8(int KVB, const void *vb, long i) {
    if (!KVB) return _mm256_loadu_ps((const float *)vb + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)vb + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
#if defined(__AVX512F__)
static inline __attribute__((always_inline)) __m512 value16(int KVB, const void *vb, long i) {
    if (!KVB) return _mm512_loadu_ps((const float *)vb + i);
    const __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)vb + i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
#endif
static inline float bf16_float(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline __attribute__((always_inline)) void pv_sweep(int HS, int C, int KVB, const void *const *p, int t0,
                                                           int t1, const int *slot, const void *vb, int d, int k0,
                                                           const __m256 *inv, float *const *o, int mode) {
    __m256 acc[PV_MAX][8];
    for (int i = 0; i < HS; i++)
        for (int c = 0; c < C; c++)
            acc[i][c] = mode & PV_RESUME ? _mm256_loadu_ps(o[i] + k0 + 8 * c) : _mm256_setzero_ps();
    if (KVB) /* keys in pairs (t, t + 1) as bmac takes them: t + 1's product first */
        for (int t = t0; t < t1; t += 2) {
            const long va = (long)slot[t] * d + k0, vz = (long)slot[t + 1] * d + k0;
            __m256 v[8], w[8];
            for (int c = 0; c < C; c++) v[c] = value8(1, vb, va + 8 * c), w[c] = value8(1, vb, vz + 8 * c);
            for (int i = 0; i < HS; i++) {
                const uint16_t *ph = p[i];
                const __m256 pa = _mm256_set1_ps(bf16_float(ph[t])), pz = _mm256_set1_ps(bf16_float(ph[t + 1]));
                for (int c = 0; c < C; c++) acc[i][c] = _mm256_fmadd_ps(pa, v[c], _mm256_fmadd_ps(pz, w[c], acc[i][c]));
            }
        }
    else
        for (int t = t0; t < t1; t++) {
            const long vr = (long)slot[t] * d + k0;
            __m256 v[8];
            for (int c = 0; c < C; c++) v[c] = value8(0, vb, vr + 8 * c);
            for (int i = 0; i < HS; i++) {
                const __m256 pt = _mm256_set1_ps(((const float *)p[i])[t]);
                for (int c = 0; c < C; c++) acc[i][c] = _mm256_fmadd_ps(pt, v[c], acc[i][c]);
            }
        }
    for (int i = 0; i < HS; i++)
        for (int c = 0; c < C; c++)
            _mm256_storeu_ps(o[i] + k0 + 8 * c, mode & PV_PARTIAL ? acc[i][c] : _mm256_mul_ps(acc[i][c], inv[i]));
}

#if defined(__AVX512F__)
/* pv_sweep in 16-lane vectors: each output lane takes the same FMAs in the same order */
static inline __attribute__((always_inline)) void pv_sweep16(int HS, int C, int KVB, const void *const *p, int t0,
                                                             int t1, const int *slot, const void *vb, int d, int k0,
                                                             const __m256 *inv, float *const *o, int mode) {
    __m512 acc[PV_MAX][8];
    for (int i = 0; i < HS; i++)
        for (int c = 0; c < C; c++)
            acc[i][c] = mode & PV_RESUME ? _mm512_loadu_ps(o[i] + k0 + 16 * c) : _mm512_setzero_ps();
    if (KVB) /* keys in pairs (t, t + 1), as pv_sweep */
        for (int t = t0; t < t1; t += 2) {
            const uint16_t *va = (const uint16_t *)vb + (long)slot[t] * d + k0;
            const uint16_t *vz = (const uint16_t *)vb + (long)slot[t + 1] * d + k0;
            for (int c = 0; c < C; c += 2) /* 8 slots on, a line at a time */
                _mm_prefetch((const char *)(va + 8 * d + 16 * c), _MM_HINT_T0),
                _mm_prefetch((const char *)(vz + 8 * d + 16 * c), _MM_HINT_T0);
#if defined(__AVX512BF16__)
            bw w[8]; /* lane l: the pair (V[t][l], V[t + 1][l]) */
            for (int c = 0; c < C; c++)
                w[c] = bw_of(_mm512_or_si512(
                    _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(va + 16 * c))),
                    _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(vz + 16 * c))), 16)));
            for (int i = 0; i < HS; i++) {
                const bx pp = bw_of(bcast4_512((const uint16_t *)p[i] + t));
                for (int c = 0; c < C; c++) acc[i][c] = bmac(acc[i][c], pp, w[c]);
            }
#else
            __m512 v[8], w[8];
            for (int c = 0; c < C; c++) v[c] = value16(1, va, 16 * c), w[c] = value16(1, vz, 16 * c);
            for (int i = 0; i < HS; i++) {
                const uint16_t *ph = p[i];
                const __m512 pa = _mm512_set1_ps(bf16_float(ph[t])), pz = _mm512_set1_ps(bf16_float(ph[t + 1]));
                for (int c = 0; c < C; c++) acc[i][c] = _mm512_fmadd_ps(pa, v[c], _mm512_fmadd_ps(pz, w[c], acc[i][c]));
            }
#endif
        }
    else
        for (int t = t0; t < t1; t++) {
            const long vr = (long)slot[t] * d + k0;
            __m512 v[8];
            for (int c = 0; c < C; c++) _mm_prefetch((const char *)vb + (vr + 8 * d + 16 * c) * 4, _MM_HINT_T0);
            for (int c = 0; c < C; c++) v[c] = value16(0, vb, vr + 16 * c);
            for (int i = 0; i < HS; i++) {
                const __m512 pt = _mm512_set1_ps(((const float *)p[i])[t]);
                for (int c = 0; c < C; c++) acc[i][c] = _mm512_fmadd_ps(pt, v[c], acc[i][c]);
            }
        }
    for (int i = 0; i < HS; i++) {
        const __m512 s = _mm512_broadcastss_ps(_mm256_castps256_ps128(inv[i]));
        for (int c = 0; c < C; c++)
            _mm512_storeu_ps(o[i] + k0 + 16 * c, mode & PV_PARTIAL ? acc[i][c] : _mm512_mul_ps(acc[i][c], s));
    }
}
#endif

/* the values of HS queries over keys t0..t1-1: sweeps of up to 8 lane groups (one query) or 4
 * (several), a constant count per case so the accumulators stay in registers (lane groups of 16
 * where the CPU has AVX-512; a last group of 8 then goes as below) */
#define PV_CASES(SWEEP, W)                                                                               \
    while (d - k0 >= (W)) {                                                                              \
        const int c = (d - k0) / (W) < most ? (d - k0) / (W) : most;                                     \
        switch (c) {                                                                                     \
        case 1: SWEEP(HS, 1, KVB, p, t0, t1, slot, vb, d, k0, inv, o, mode); break;                      \
        case 2: SWEEP(HS, 2, KVB, p, t0, t1, slot, vb, d, k0, inv, o, mode); break;                      \
        case 3: SWEEP(HS, 3, KVB, p, t0, t1, slot, vb, d, k0, inv, o, mode); break;                      \
        case 4: SWEEP(HS, 4, KVB, p, t0, t1, slot, vb, d, k0, inv, o, mode); break;                      \
        case 5: SWEEP(HS, 5, KVB, p, t0, t1, slot, vb, d, k0, inv, o, mode); break;                      \
        case 6: SWEEP(HS, 6, KVB, p, t0, t1, slot, vb, d, k0, inv, o, mode); break;                      \
        case 7: SWEEP(HS, 7, KVB, p, t0, t1, slot, vb, d, k0, inv, o, mode); break;                      \
        default: SWEEP(HS, 8, KVB, p, t0, t1, slot, vb, d, k0, inv, o, mode); break;                     \
        }                                                                                                \
        k0 += (W) * c;                                                                                   \
    }
static inline __attribute__((always_inline)) void pv_all(int HS, int KVB, const void *const *p, int t0, int t1,
                                                         const int *slot, const void *vb, int d, const __m256 *inv,
                                                         float *const *o, int mode) {
    const int most = HS == 1 ? 8 : 4;
    int k0 = 0;
#if defined(__AVX512F__)
    PV_CASES(pv_sweep16, 16)
#endif
    PV_CASES(pv_sweep, 8)
}

/* pv_all for a count of queries and a value format known only at run time */
#define PV_COUNTS(KVB)                                                                                   \
    switch (nq) {                                                                                        \
    case 1: pv_all(1, KVB, p, t0, t1, slot, vb, d, inv, o, mode); break;                                 \
    case 2: pv_all(2, KVB, p, t0, t1, slot, vb, d, inv, o, mode); break;                                 \
    case 3: pv_all(3, KVB, p, t0, t1, slot, vb, d, inv, o, mode); break;                                 \
    case 4: pv_all(4, KVB, p, t0, t1, slot, vb, d, inv, o, mode); break;                                 \
    default: pv_all(6, KVB, p, t0, t1, slot, vb, d, inv, o, mode); break;                                \
    }
static void pv_any(int nq, int kvb, const void *const *p, int t0, int t1, const int *slot, const void *vb, int d,
                   const __m256 *inv, float *const *o, int mode) {
    if (kvb) PV_COUNTS(1) else PV_COUNTS(0)
}

/* one row's keys in canonical order: its cached slots (from `first`), then its ancestors in the pass;
 * padded to whole blocks of 8 by repeating the last. Returns the count. */
static int key_slots(const AttentionArgs *a, int j, int first, int *slot) {
    const int hi = a->hi[j], count = a->count[j]; /* read once: slot[] might alias them */
    const int *extra = a->extra + j * a->max_extra;
    int m = 0;
    for (int i = first; i < hi; i++) slot[m++] = i;
    for (int e = 0; e < count; e++) slot[m++] = hi + extra[e];
    for (int t = m; t < ((m + 7) & ~7); t++) slot[t] = slot[m - 1]; /* padding: dropped below */
    return m;
}

/* the first cached slot query j sees: its sequence's first, or the sliding window's */
static inline int first_slot(const AttentionArgs *a, int j) {
    int first = a->lo[j];
    if (a->window > 0 && a->pos[j] - a->window + 1 > 0) first = a->lo[j] + a->pos[j] - a->window + 1;
    return first > a->hi[j] ? a->hi[j] : first;
}

/* the scores of blocks t0 .. t1-1 (multiples of 8) of keys slot[] for NQ query vectors (float32, or
 * bfloat16 where kvb) */
#if defined(__AVX512F__)
#define QK_COUNTS(BLOCK, T)                                                                              \
    for (int t = t0; t < t1; t += 8) {                                                                   \
        switch (NQ) {                                                                                    \
        case 1: BLOCK(1, (const T *const *)qv, s, (const T *)kb, slot, t, d, scale); break;              \
        case 2: BLOCK(2, (const T *const *)qv, s, (const T *)kb, slot, t, d, scale); break;              \
        case 3: BLOCK(3, (const T *const *)qv, s, (const T *)kb, slot, t, d, scale); break;              \
        case 4: BLOCK(4, (const T *const *)qv, s, (const T *)kb, slot, t, d, scale); break;              \
        case 5: BLOCK(5, (const T *const *)qv, s, (const T *)kb, slot, t, d, scale); break;              \
        default: BLOCK(6, (const T *const *)qv, s, (const T *)kb, slot, t, d, scale); break;             \
        }                                                                                                \
    }
#define QK_F32 QK_COUNTS(qk_block8, float)
#define QK_BF16 QK_COUNTS(qk_block8b, uint16_t)
#else
#define QK_COUNTS(BLOCK, T)                                                                              \
    for (int t = t0; t < t1; t += 4) {                                                                   \
        if (NQ == 1) BLOCK(1, (const T *const *)qv, s, (const T *)kb, slot, t, d, scale);                \
        else if (NQ == 2) BLOCK(2, (const T *const *)qv, s, (const T *)kb, slot, t, d, scale);           \
        else BLOCK(3, (const T *const *)qv, s, (const T *)kb, slot, t, d, scale);                        \
    }
#define QK_F32 QK_COUNTS(qk_block4, float)
#define QK_BF16 QK_COUNTS(qk_block4b, uint16_t)
#endif
static inline void qk_span(int NQ, int kvb, const void *const *qv, float *const *s, const void *kb, const int *slot,
                           int t0, int t1, int d, __m128 scale) {
    if (kvb) { QK_BF16 } else { QK_F32 }
}

/* softmax of HS heads' scores s[i][0..m-1] (padded to whole blocks of 8) in place, inv[i] = 1 / their
 * sum; the heads' loops interleaved so that their max and sum chains overlap, each head's steps the
 * same as alone */
static inline __attribute__((always_inline)) void softmax_heads(int HS, float *const *s, int m, __m256 *inv) {
    const int m8 = (m + 7) & ~7;
    __m256 mx[HS_MAX], sum[HS_MAX];
    for (int i = 0; i < HS; i++) mx[i] = _mm256_set1_ps(-INFINITY); /* the padding repeats the last score */
    for (int t = 0; t < m8; t += 8)
        for (int i = 0; i < HS; i++) mx[i] = _mm256_max_ps(mx[i], _mm256_loadu_ps(s[i] + t));
    for (int i = 0; i < HS; i++) {
        float lanes[8], top = -INFINITY;
        _mm256_storeu_ps(lanes, mx[i]);
        for (int l = 0; l < 8; l++) top = fmaxf(top, lanes[l]);
        exp_shift(s[i], m, top);
        for (int t = m; t < m8; t++) s[i][t] = 0.f;
        sum[i] = _mm256_setzero_ps();
    }
    /* the sum: element t in lane t % 8, in order, then hsum8 (padding adds exact zeros) */
    for (int t = 0; t < m8; t += 8)
        for (int i = 0; i < HS; i++) sum[i] = _mm256_add_ps(sum[i], _mm256_loadu_ps(s[i] + t));
    for (int i = 0; i < HS; i++) inv[i] = _mm256_set1_ps(1.f / hsum8(sum[i]));
}

/* each thread's scratch for attention_chunk, kept from call to call */
static __thread char *t_scratch;
static __thread long t_scratch_cap;

static void attention_chunk(void *ctx, int job_lo, int job_hi) {
    AttentionArgs *a = ctx;
    const int heads = a->heads, d = a->d, max_len = a->max_len, R = a->rows_per_job;
    const int group = heads / a->kv_heads, hs = a->hs, per_group = (group + hs - 1) / hs, units = (a->n + R - 1) / R;
    const __m128 scale = _mm_set1_ps(a->scale);
    const long row = a->cap + 8, size = a->kvb ? 2 : 4; /* size: bytes of a key's or value's element */
    /* scores, slots, and with a bfloat16 cache the queries and the softmax's weights in bfloat16 */
    const long nbuf = row * HS_MAX * 2 * 4, nslots = row * 2 * 4, nqb = a->kvb ? (long)d * HS_MAX * 2 * 2 : 0;
    if (grow((void **)&t_scratch, &t_scratch_cap, nbuf + nslots + nqb + (a->kvb ? row * HS_MAX * 2 * 2 : 0), 1)) {
        atomic_store(&a->failed, 1);
        return;
    }
    float *buf = (float *)t_scratch;
    int *slots = (int *)(t_scratch + nbuf);
    uint16_t *qb = a->kvb ? (uint16_t *)(t_scratch + nbuf + nslots) : NULL;
    uint16_t *pb = a->kvb ? (uint16_t *)(t_scratch + nbuf + nslots + nqb) : NULL;
    for (int job = job_lo; job < job_hi; job++) { /* rows u R .. u R + R - 1; heads h0 .. h0 + n_h - 1 of group g */
        const int g = job / (units * per_group), u = job / per_group % units; /* group-major: a thread's
            jobs share their groups' keys and values, which are then read from memory by fewer threads */
        const int h0 = g * group + job % per_group * hs, n_h = group - (h0 - g * group) < hs ? group - (h0 - g * group) : hs;
        const void *kb = (const char *)a->kc + (long)g * max_len * d * size;
        const void *vb = (const char *)a->vc + (long)g * max_len * d * size;
        const int rows = a->n - u * R < R ? a->n - u * R : R;
        int m[2], first[2], *slot[2];
        const void *qv[2 * HS_MAX], *pv[2 * HS_MAX]; /* pv: the values' weights, s or (kvb) pb */
        float *s[2 * HS_MAX], *o[2 * HS_MAX];
        for (int r = 0; r < rows; r++) {
            const int j = u * R + r;
            slot[r] = slots + r * row;
            first[r] = first_slot(a, j);
            m[r] = key_slots(a, j, first[r], slot[r]);
            for (int i = 0; i < n_h; i++) {
                const float *qf = a->q + ((long)j * heads + h0 + i) * d;
                if (a->kvb) {
                    uint16_t *b = qb + (r * n_h + i) * d;
                    for (int k = 0; k < d; k++) b[k] = to_bf16(qf[k]);
                    qv[r * n_h + i] = b;
                } else qv[r * n_h + i] = qf;
                s[r * n_h + i] = buf + (r * HS_MAX + i) * row;
                pv[r * n_h + i] = a->kvb ? (const void *)(pb + (r * HS_MAX + i) * row) : s[r * n_h + i];
                o[r * n_h + i] = out_row(a, j, h0 + i);
            }
        }
        /* the whole blocks of cached keys that both rows see, once for both */
        int shared = 0;
        if (rows == 2 && a->lo[u * R] == a->lo[u * R + 1] && a->hi[u * R] == a->hi[u * R + 1] && first[0] == first[1])
            shared = (a->hi[u * R] - first[0]) & ~7;
        if (shared) qk_span(2 * n_h, a->kvb, qv, s, kb, slot[0], 0, shared, d, scale);
        __m256 inv[PV_MAX];
        for (int r = 0; r < rows; r++) {
            const int mr = m[r], m8 = (mr + 7) & ~7;
            float *const *sr = s + r * n_h;
            qk_span(n_h, a->kvb, qv + r * n_h, sr, kb, slot[r], shared, m8, d, scale);
            if (n_h == 1) softmax_heads(1, sr, mr, inv + r * n_h);
            else if (n_h == 2) softmax_heads(2, sr, mr, inv + r * n_h);
            else softmax_heads(3, sr, mr, inv + r * n_h);
            if (a->kvb) /* the weights (exp(score - max), padding 0) in bfloat16; the sum stays float32's */
                for (int i = 0; i < n_h; i++) {
                    uint16_t *ph = pb + (r * HS_MAX + i) * row;
                    for (int t = 0; t < m8; t++) ph[t] = to_bf16(sr[i][t]);
                }
        }
        /* the values: the shared cached keys once for both rows, then each row's own */
        if (shared) pv_any(2 * n_h, a->kvb, pv, 0, shared, slot[0], vb, d, inv, o, PV_PARTIAL);
        for (int r = 0; r < rows; r++)
            pv_any(n_h, a->kvb, pv + r * n_h, shared, m[r], slot[r], vb, d, inv + r * n_h, o + r * n_h,
                   shared ? PV_RESUME : 0);
    }
}

/* 0, or -1 if memory ran out */
int attention(const float *q, int n, int heads, int kv_heads, int d, const void *kc, const void *vc,
              int max_len, const int *lo, const int *hi, const int *extra, const int *count, int max_extra,
              float scale, int window, const int *pos, float *out, int kvb) {
    int widest = 0;
    for (int j = 0; j < n; j++) if (hi[j] - lo[j] > widest) widest = hi[j] - lo[j];
    /* up to 3 heads of a group per job, fewer where that leaves some threads without two jobs */
    const int group = heads / kv_heads;
    int hs = group < HS_MAX ? group : HS_MAX;
    while (hs > 1 && n * kv_heads * ((group + hs - 1) / hs) < 2 * g_threads) hs--;
    /* two rows a job where that still leaves every thread two jobs (AVX-512: registers for 6 queries) */
    int rows_per_job = 1;
#if defined(__AVX512F__)
    if ((n + 1) / 2 * kv_heads * ((group + hs - 1) / hs) >= 2 * g_threads) rows_per_job = 2;
#endif
    AttentionArgs a = {q, kc, vc, lo, hi, extra, count, pos, out, scale, heads, kv_heads, d, max_len, max_extra,
                       window, widest + max_extra + 1, hs, n, rows_per_job, kvb, 0};
    parallel_for((n + rows_per_job - 1) / rows_per_job * kv_heads * ((group + hs - 1) / hs), attention_chunk, &a);
    return atomic_load(&a.failed) ? -1 : 0;
}

/* y[n, d] = x * rsqrt(mean(x^2) + eps) * (w + offset); offset = 1 for Gemma's (1 + w) */
static inline void rmsnorm_row(const float *x, int d, const float *w, float eps, float offset, float *y) {
    const float inv = 1.f / sqrtf(dot(x, x, d) / d + eps);
    int k = 0; /* y = x * inv * (w + offset), the same two products and sum per element at any width */
#if defined(__AVX512F__)
    for (; k + 16 <= d; k += 16)
        _mm512_storeu_ps(y + k, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + k), _mm512_set1_ps(inv)),
                                              _mm512_add_ps(_mm512_loadu_ps(w + k), _mm512_set1_ps(offset))));
#endif
    for (; k < d; k++) y[k] = x[k] * inv * (w[k] + offset);
}

void rmsnorm(const float *x, int n, int d, const float *w, float eps, float offset, float *y) {
    for (int r = 0; r < n; r++) rmsnorm_row(x + (long)r * d, d, w, eps, offset, y + (long)r * d);
}

/* The step between two of a layer's linears, each row on its own (threads split the rows):
 * add = rmsnorm(add, post) (Gemma's post-norms; none: unchanged), x += add, y = rmsnorm(x, norm)
 * (none: y untouched), then y's row prepared for linear `prep` (prep_for; NULL: none). With add
 * NULL only the last norm runs. */
typedef struct { float *x, *add, *y; const float *post, *norm; int d; float eps, offset; const Lin *prep; } ResArgs;

static void residual_chunk(void *ctx, int r_lo, int r_hi) {
    const ResArgs *a = ctx;
    const int d = a->d;
    for (int r = r_lo; r < r_hi; r++) {
        float *xr = a->x + (long)r * d;
        if (a->add) {
            float *ar = a->add + (long)r * d;
            if (a->post) rmsnorm_row(ar, d, a->post, a->eps, a->offset, ar);
            for (int k = 0; k < d; k++) xr[k] += ar[k];
        }
        if (a->norm) rmsnorm_row(xr, d, a->norm, a->eps, a->offset, a->y + (long)r * d);
        if (a->prep) quantize_row(a->prep->fmt, a->y + (long)r * d, r, a->prep->in);
    }
}

static int residual(float *x, float *add, const float *post, const float *norm, int n, int d, float eps,
                    float offset, float *y, const Lin *prep) {
    ResArgs a = {x, add, y, post, norm, d, eps, offset, norm ? prep : NULL};
    if (a.prep && quant_alloc(a.prep->fmt, n, a.prep->in)) return -1;
    parallel_for(n, residual_chunk, &a);
    return 0;
}

/* gu: [n, 2*m] (gate then up), m % 8 == 0; y[n, m] = act(gate) * up; act 0 = silu, 1 = gelu-tanh
 * (tanh z = 1 - 2 / (e^(2z) + 1)); each row of y then prepared for linear `prep` (as residual's) */
typedef struct { const float *gu; int m, act; float *y; const Lin *prep; } ActArgs;

static void gated_act_chunk(void *ctx, int r_lo, int r_hi) {
    const ActArgs *p = ctx;
    const float *gu = p->gu;
    const int m = p->m, act = p->act;
    float *y = p->y;
    const __m256 one = _mm256_set1_ps(1.f), half = _mm256_set1_ps(0.5f), two = _mm256_set1_ps(2.f);
    for (int r = r_lo; r < r_hi; r++) {
        int k = 0;
#if defined(__AVX512F__)
        if (act == 0) /* silu in 16 lanes: the same steps per element as below */
            for (; k + 16 <= m; k += 16) {
                __m512 g = _mm512_loadu_ps(gu + (long)r * 2 * m + k), u = _mm512_loadu_ps(gu + (long)r * 2 * m + m + k);
                __m512 a = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
                _mm512_storeu_ps(y + (long)r * m + k, _mm512_mul_ps(a, u));
            }
#endif
        for (; k < m; k += 8) {
            __m256 g = _mm256_loadu_ps(gu + (long)r * 2 * m + k), u = _mm256_loadu_ps(gu + (long)r * 2 * m + m + k), a;
            if (act == 0) {
                a = _mm256_div_ps(g, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
            } else {
                __m256 g3 = _mm256_mul_ps(_mm256_mul_ps(g, g), g);
                __m256 z = _mm256_mul_ps(_mm256_set1_ps(0.7978845608028654f), _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), g3, g));
                __m256 th = _mm256_sub_ps(one, _mm256_div_ps(two, _mm256_add_ps(exp8(_mm256_mul_ps(two, z)), one)));
                a = _mm256_mul_ps(_mm256_mul_ps(half, g), _mm256_add_ps(one, th));
            }
            _mm256_storeu_ps(y + (long)r * m + k, _mm256_mul_ps(a, u));
        }
        if (p->prep) quantize_row(p->prep->fmt, y + (long)r * m, r, p->prep->in);
    }
}

static int gated_act_then(const float *gu, int n, int m, int act, float *y, const Lin *prep) {
    ActArgs a = {gu, m, act, y, prep};
    if (prep && quant_alloc(prep->fmt, n, prep->in)) return -1;
    parallel_for(n, gated_act_chunk, &a);
    return 0;
}

void gated_act(const float *gu, int n, int m, int act, float *y) { gated_act_then(gu, n, m, act, y, NULL); }

/* x[d] rotated by halves in place: (a, b) -> (a cos - b sin, b cos + a sin) */
static void rope(float *x, int d, const float *cos, const float *sin) {
    int half = d / 2, i = 0;
    for (; i + 8 <= half; i += 8) { /* the same two products and sum per element as below */
        const __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + half);
        _mm256_storeu_ps(x + i, _mm256_sub_ps(_mm256_mul_ps(a, _mm256_loadu_ps(cos + i)),
                                              _mm256_mul_ps(b, _mm256_loadu_ps(sin + i))));
        _mm256_storeu_ps(x + i + half, _mm256_add_ps(_mm256_mul_ps(b, _mm256_loadu_ps(cos + i + half)),
                                                     _mm256_mul_ps(a, _mm256_loadu_ps(sin + i + half))));
    }
    for (; i < half; i++) {
        float a = x[i], b = x[i + half];
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

/* x[r] = table[tokens[r]] * scale for r < n (rows of `hidden` floats; scale 1: an exact copy) */
void embed_rows(const float *table, int hidden, const int *tokens, int n, float scale, float *x) {
    for (int r = 0; r < n; r++) {
        const float *row = table + (long)tokens[r] * hidden;
        float *out = x + (long)r * hidden;
        if (scale == 1.f) memcpy(out, row, sizeof(float) * hidden);
        else for (int k = 0; k < hidden; k++) out[k] = row[k] * scale;
    }
}

/* ---- one decoder pass ---------------------------------------------------------------------- */
typedef struct {
    const float *attn_norm, *post_attn_norm, *mlp_norm, *post_mlp_norm; /* [hidden]; post_* may be NULL */
    const float *q_norm, *k_norm;                                       /* [d] per-head norms or NULL */
    Lin qkv, o, gu, down;
    void *kc, *vc;           /* [kv_heads, max_len, d] float32, or bfloat16 where the model's kv_bf16 */
    const float *cos, *sin;  /* [max_len, d] rope tables for this layer */
    int window, pad;         /* sliding window (0 = global) */
} LayerW;

typedef struct {
    int n_layers, hidden, heads, kv_heads, d, inter, max_len, act;
    float eps, norm_offset, attn_scale;
    int kv_bf16; /* keys and values cached in bfloat16 (see attention) */
    const LayerW *layers;
    const float *final_norm; /* [hidden] */
    Lin head;                /* [vocab, hidden] */
} ModelW;

/* rows j of a pass's fused q|k|v outputs: q (normed if the model norms it, rotated) to q, k (the
 * same) and v to cache slot slot[j] */
typedef struct { const ModelW *m; const LayerW *L; const float *qkv; float *q; const int *slot, *pos; } QkvArgs;

static void qkv_rows_chunk(void *ctx, int j_lo, int j_hi) {
    const QkvArgs *a = ctx;
    const ModelW *m = a->m;
    const LayerW *L = a->L;
    const int h = m->heads, kv = m->kv_heads, d = m->d, qkvw = (h + 2 * kv) * d, size = m->kv_bf16 ? 2 : 4;
    float kf[d];
    for (int j = j_lo; j < j_hi; j++) {
        const float *row = a->qkv + (long)j * qkvw;
        const float *c = L->cos + (long)a->pos[j] * d, *s = L->sin + (long)a->pos[j] * d;
        for (int hh = 0; hh < h; hh++) {
            float *qh = a->q + ((long)j * h + hh) * d;
            if (L->q_norm) rmsnorm_row(row + hh * d, d, L->q_norm, m->eps, m->norm_offset, qh);
            else memcpy(qh, row + hh * d, sizeof(float) * d);
            rope(qh, d, c, s);
        }
        for (int g = 0; g < kv; g++) {
            const long at = ((long)g * m->max_len + a->slot[j]) * d * size;
            char *kd = (char *)L->kc + at, *vd = (char *)L->vc + at;
            float *k = m->kv_bf16 ? kf : (float *)kd;
            const float *v = row + (h + kv + g) * d;
            if (L->k_norm) rmsnorm_row(row + (h + g) * d, d, L->k_norm, m->eps, m->norm_offset, k);
            else memcpy(k, row + (h + g) * d, sizeof(float) * d);
            rope(k, d, c, s);
            if (m->kv_bf16)
                for (int i = 0; i < d; i++) ((uint16_t *)kd)[i] = to_bf16(k[i]), ((uint16_t *)vd)[i] = to_bf16(v[i]);
            else memcpy(vd, v, sizeof(float) * d);
        }
    }
}

/* x [n, hidden]: the embedded inputs, replaced by the last hidden state (before the final norm).
 * Input j sits at position pos[j] and is written to cache slot slot[j] of every layer; it attends
 * to slots lo[j]..hi[j]-1 (its sequence's cache) and hi[j] + extra[j, 0..count[j]-1]. Inputs of several
 * sequences may share a pass: no row's arithmetic depends on the others. With `logits`
 * [n - head_from, vocab] (else NULL, as in a prefill) the final norm and the head fill it for
 * inputs head_from..n-1. Returns 0, or -1 if memory ran out. */
int model_forward(const ModelW *m, float *x, int n, const int *slot, const int *lo, const int *hi,
                  const int *pos, const int *extra, const int *count, int max_extra, int head_from,
                  float *logits) {
    const int H = m->hidden, h = m->heads, kv = m->kv_heads, d = m->d, qkvw = (h + 2 * kv) * d;
    const float eps = m->eps, off = m->norm_offset;
    static float *g_fw; /* the pass's buffers, kept from pass to pass (one caller at a time) */
    static long g_fw_cap;
    if (grow((void **)&g_fw, &g_fw_cap, (long)n * (2 * H + qkvw + 2 * h * d + 3 * m->inter), sizeof(float))) return -1;
    float *t1 = g_fw, *t2 = t1 + (long)n * H, *qkv = t2 + (long)n * H, *att = qkv + (long)n * qkvw;
    float *gu = att + (long)n * h * d, *act = gu + (long)n * 2 * m->inter, *q = act + (long)n * m->inter;
    /* each step runs while every step before succeeded (ok: no allocation failed); a linear's
     * activations are prepared by the step that makes its rows (prep_for), except o's and the head's */
    int ok = 1;
    if (m->n_layers > 0) {
        TIC;
        ok = !residual(x, NULL, NULL, m->layers[0].attn_norm, n, H, eps, off, t1, prep_for(&m->layers[0].qkv));
        TOC(2);
    }
    for (int li = 0; ok && li < m->n_layers; li++) {
        const LayerW *L = &m->layers[li], *L2 = li + 1 < m->n_layers ? &m->layers[li + 1] : NULL;
        ok = !linear(&L->qkv, t1, n, qkv, &L->o, 1);
        if (ok) {
            { TIC; QkvArgs qa = {m, L, qkv, q, slot, pos}; parallel_for(n, qkv_rows_chunk, &qa); TOC(2); }
            TIC;
            ok = !attention(q, n, h, kv, d, L->kc, L->vc, m->max_len, lo, hi, extra, count, max_extra, m->attn_scale,
                            L->window, pos, att, m->kv_bf16);
            TOC(1);
        }
        ok = ok && !linear(&L->o, att, n, t2, &L->gu, 0);
        if (ok) { TIC; ok = !residual(x, t2, L->post_attn_norm, L->mlp_norm, n, H, eps, off, t1, prep_for(&L->gu)); TOC(2); }
        ok = ok && !linear(&L->gu, t1, n, gu, &L->down, 1);
        if (ok) { TIC; ok = !gated_act_then(gu, n, m->inter, m->act, act, prep_for(&L->down)); TOC(2); }
        ok = ok && !linear(&L->down, act, n, t2, L2 ? &L2->qkv : logits ? &m->head : NULL, 1);
        if (ok) {
            TIC;
            ok = !residual(x, t2, L->post_mlp_norm, L2 ? L2->attn_norm : NULL, n, H, eps, off, t1,
                           L2 ? prep_for(&L2->qkv) : NULL);
            TOC(2);
        }
    }
    if (ok && logits && head_from < n) {
        const int rows = n - head_from;
        { TIC; rmsnorm(x + (long)head_from * H, rows, H, m->final_norm, eps, off, t1); TOC(2); }
        ok = !linear(&m->head, t1, rows, logits, NULL, 0);
    }
    return ok ? 0 : -1;
}

/* ---- each row's argmax and top k (the engine's verification, Token Recycling's successors) ----
 * Over rows of m floats, one thread a row: torch.argmax's result (the first of tied maxima: the
 * largest value, then the first index holding it), and the top k by value, ties by the lower
 * index. A row with a NaN makes the call return -1 (the caller then asks torch, whose NaN order
 * these do not copy). */
typedef struct { const float *v; int m, k; int64_t *out; atomic_int nan; } RowArgs;

static void argmax_chunk(void *ctx, int r_lo, int r_hi) {
    RowArgs *a = ctx;
    const int m = a->m, m32 = m & ~31;
    for (int r = r_lo; r < r_hi; r++) {
        const float *v = a->v + (long)r * m;
        /* the largest value (four independent chains of 8 lanes; NaNs noted apart, max_ps drops them) */
        __m256 mx[4], bad = _mm256_setzero_ps();
        for (int c = 0; c < 4; c++) mx[c] = _mm256_set1_ps(-INFINITY);
        int t = 0;
        for (; t < m32; t += 32)
            for (int c = 0; c < 4; c++) {
                const __m256 x = _mm256_loadu_ps(v + t + 8 * c);
                mx[c] = _mm256_max_ps(mx[c], x);
                bad = _mm256_or_ps(bad, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
            }
        float lanes[8], top = -INFINITY;
        _mm256_storeu_ps(lanes, _mm256_max_ps(_mm256_max_ps(mx[0], mx[1]), _mm256_max_ps(mx[2], mx[3])));
        int nan = _mm256_movemask_ps(bad);
        for (int l = 0; l < 8; l++) top = lanes[l] > top ? lanes[l] : top;
        for (; t < m; t++) {
            if (isnan(v[t])) nan = 1;
            else if (v[t] > top) top = v[t];
        }
        /* then its first index (-0 and +0 are equal, as in torch's comparisons) */
        const __m256 want = _mm256_set1_ps(top);
        for (t = 0; t + 8 <= m; t += 8) {
            const int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(v + t), want, _CMP_EQ_OQ));
            if (hit) break;
        }
        while (t < m && v[t] != top) t++;
        if (nan) atomic_store(&a->nan, 1);
        a->out[r] = t < m ? t : 0;
    }
}

/* row r's top k into out[r * k ..]: a list sorted by value (ties: lower index first) that an element
 * enters only if larger than its last, which 8-lane compares rule out for most elements */
static void topk_chunk(void *ctx, int r_lo, int r_hi) {
    RowArgs *a = ctx;
    const int m = a->m, k = a->k;
    float val[64];
    for (int r = r_lo; r < r_hi; r++) {
        const float *v = a->v + (long)r * m;
        int64_t *idx = a->out + (long)r * k;
        int filled = 0, nan = 0;
        for (int t = 0; t < m; t++) {
            const float x = v[t];
            if (isnan(x)) { nan = 1; break; }
            if (filled == k && !(x > val[k - 1])) {
                /* x is out; then skip 8 at a time while none beats the last of the list (or is a NaN) */
                const __m256 thr = _mm256_set1_ps(val[k - 1]);
                for (t++; t + 8 <= m; t += 8) {
                    const __m256 y = _mm256_loadu_ps(v + t);
                    if (_mm256_movemask_ps(_mm256_or_ps(_mm256_cmp_ps(y, thr, _CMP_GT_OQ),
                                                        _mm256_cmp_ps(y, y, _CMP_UNORD_Q)))) break;
                }
                t--; /* the loop's t++ comes back to the first element not ruled out */
                continue;
            }
            int p = filled < k ? filled : k - 1; /* x's place: after every value >= x */
            while (p > 0 && val[p - 1] < x) {
                val[p] = val[p - 1], idx[p] = idx[p - 1];
                p--;
            }
            val[p] = x, idx[p] = t;
            if (filled < k) filled++;
        }
        if (nan) atomic_store(&a->nan, 1);
    }
}

/* out[n]: each row's argmax; 0, or -1 if a row holds a NaN */
int argmax_rows(const float *v, int n, int m, int64_t *out) {
    RowArgs a = {v, m, 1, out, 0};
    parallel_for(n, argmax_chunk, &a);
    return atomic_load(&a.nan) ? -1 : 0;
}

/* out[n][k]: each row's k largest (1 <= k <= 64, k <= m), largest first; 0, or -1 if a row holds a NaN */
int topk_rows(const float *v, int n, int m, int k, int64_t *out) {
    if (k < 1 || k > 64 || k > m) return -2;
    RowArgs a = {v, m, k, out, 0};
    parallel_for(n, topk_chunk, &a);
    return atomic_load(&a.nan) ? -1 : 0;
}

/* the sum of n floats, read once: the memory bandwidth probe of `leapdecode profile` */
typedef struct { const float *x; int team, chunks; double part[MAX_THREADS]; } SumArgs;

static void stream_sum_chunk(void *ctx, int c_lo, int c_hi) {
    SumArgs *p = ctx;
    double total = 0;
    for (long c = c_lo; c < c_hi; c++) {
        __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
        const float *q = p->x + c * 4096;
        for (int k = 0; k < 4096; k += 16) {
            a = _mm256_add_ps(a, _mm256_loadu_ps(q + k));
            b = _mm256_add_ps(b, _mm256_loadu_ps(q + k + 8));
        }
        total += hsum8(_mm256_add_ps(a, b));
    }
    const int t = thread_of(c_lo, p->team, p->chunks); /* this chunk's thread */
    if (t >= 0) p->part[t] = total;
}

double stream_sum(const float *x, long n) {
    SumArgs a;
    memset(&a, 0, sizeof a);
    a.x = x, a.chunks = (int)(n / 4096);
    a.team = g_threads < a.chunks ? g_threads : (a.chunks > 0 ? a.chunks : 1);
    parallel_for(a.chunks, stream_sum_chunk, &a);
    double total = 0;
    for (int t = 0; t < a.team; t++) total += a.part[t];
    return total;
}

/* The arithmetic probe of `leapdecode profile`: every thread runs `steps` rounds of the kernels' own
 * multiply-add step for weights of format fmt (float32 and int8: an fp32 FMA; bfloat16: bmac; W8A8
 * and W4A8: qmac) on 12 independent register accumulators. Returns the multiply-adds done (the
 * caller times the call). */
typedef struct { int fmt; long steps; float out[MAX_THREADS]; } PeakArgs;

#define PEAK12(T, INIT, STEP) /* INIT(i): distinct starts, so the compiler keeps 12 chains */        \
    {                                                                                                \
        T a0 = INIT(0), a1 = INIT(1), a2 = INIT(2), a3 = INIT(3), a4 = INIT(4), a5 = INIT(5);        \
        T a6 = INIT(6), a7 = INIT(7), a8 = INIT(8), a9 = INIT(9), a10 = INIT(10), a11 = INIT(11);    \
        for (long i = 0; i < p->steps; i++) {                                                        \
            a0 = STEP(a0); a1 = STEP(a1); a2 = STEP(a2); a3 = STEP(a3); a4 = STEP(a4); a5 = STEP(a5);   \
            a6 = STEP(a6); a7 = STEP(a7); a8 = STEP(a8); a9 = STEP(a9); a10 = STEP(a10); a11 = STEP(a11); \
        }                                                                                            \
        sum = first_f(&a0) + first_f(&a1) + first_f(&a2) + first_f(&a3) + first_f(&a4) + first_f(&a5) + \
              first_f(&a6) + first_f(&a7) + first_f(&a8) + first_f(&a9) + first_f(&a10) + first_f(&a11); \
    }

static inline float first_f(const void *v) { float f; memcpy(&f, v, sizeof f); return f; } /* keeps a result */

static void peak_chunk(void *ctx, int t_lo, int t_hi) {
    PeakArgs *p = ctx;
    static const uint8_t bytes[64] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    static const uint16_t halves[32] = {0x3f80, 0x3f80};
    static const uint32_t pair = 0x3f803f80u;
    for (int t = t_lo; t < t_hi; t++) {
        float sum = 0;
        if (p->fmt == BF16) {
            const bx x = bx_bcast(&pair);
            const bw w = bw_load(halves);
#define BSTEP(a) bmac(a, x, w)
#define BINIT(i) ((bacc){(float)(i)})
            PEAK12(bacc, BINIT, BSTEP)
        } else if (p->fmt == Q8 || p->fmt == Q4) {
            const qx x = qx_bcast(bytes);
            const qw w = qw_load((const int8_t *)bytes);
#define QSTEP(a) qmac(a, x, w)
#define QINIT(i) ((qacc){i})
            PEAK12(qacc, QINIT, QSTEP)
        } else {
            const vec x = loadv(F32, (const char *)halves, 0), w = x;
#define FSTEP(a) vfma(x, w, a)
#define FINIT(i) ((vec){(float)(i)})
            PEAK12(vec, FINIT, FSTEP)
        }
        p->out[t] = sum;
    }
}

double peak_macs(int fmt, long steps) {
    PeakArgs a;
    memset(&a, 0, sizeof a);
    a.fmt = fmt, a.steps = steps;
    parallel_for(g_threads, peak_chunk, &a);
    const double per = fmt == BF16 ? sizeof(bacc) / 4 * 2 : fmt == Q8 || fmt == Q4 ? sizeof(qacc) / 4 * 4 : LANES;
    return (double)g_threads * steps * 12 * per;
}

/* the threads of every kernel above, the caller included (the split never changes an output's
 * arithmetic); workers are started once and kept */
void set_threads(int n) {
    if (n < 1) n = 1;
    if (n > MAX_THREADS) n = MAX_THREADS;
    while (g_workers < n - 1) {
        g_start[g_workers + 1] = atomic_load(&g_gen);
        pthread_create(&g_tid[g_workers], NULL, worker, (void *)(intptr_t)(g_workers + 1));
        g_workers++;
    }
    g_threads = n;
}
