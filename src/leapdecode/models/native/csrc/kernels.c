/* leapdecode native kernels: batch-invariant linear, canonical-order attention, norms, activations.
 *
 * The one rule: a row's result never depends on how many rows run with it, nor on its position.
 * Every (row, output) dot product runs over k in 8-lane FMA chunks in ascending k, then one fixed
 * horizontal sum; tiling over rows/outputs and the OpenMP split only regroup whole accumulators.
 * Built by leapdecode/models/native/build.py with gcc -O3 -march=native -fopenmp (no -ffast-math:
 * it would let the compiler reorder sums).
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* fixed-order horizontal sum of 8 lanes: (0+4, 1+5, 2+6, 3+7) then pairs, then the last pair */
static inline float hsum8(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    __m128 s = _mm_add_ps(lo, hi);
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* 8 weights -> fp32 lanes, one loader per storage format */
static inline __m256 load_f32(const void *w, long i) { return _mm256_loadu_ps((const float *)w + i); }
static inline __m256 load_bf16(const void *w, long i) {
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); /* exact */
}
static inline __m256 load_i8(const void *w, long i) {
    __m128i b = _mm_loadl_epi64((const __m128i *)((const int8_t *)w + i));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)); /* exact: |q| <= 127 */
}

/* y[n, out] = x[n, in] . W[out, in]^T (* scale[out]) (+ bias[out]).
 * Register tile: 4 outputs x 2 rows (8 accumulators), weights read once per row pair. */
#define LINEAR_KERNEL(NAME, LOAD, WBYTES)                                                         \
void NAME(const float *x, int n, int in, const void *w, const float *scale, const float *bias,    \
          float *y, int out) {                                                                    \
    const char *wb = (const char *)w;                                                             \
    _Pragma("omp parallel for schedule(static)")                                                  \
    for (int ob = 0; ob < (out + 3) / 4; ob++) {                                                  \
        int o0 = ob * 4, no = out - o0 < 4 ? out - o0 : 4;                                        \
        const void *wr[4];                                                                        \
        for (int t = 0; t < 4; t++) wr[t] = wb + (long)(o0 + (t < no ? t : 0)) * in * WBYTES;     \
        for (int r = 0; r < n; r += 2) {                                                          \
            const float *x0 = x + (long)r * in, *x1 = r + 1 < n ? x0 + in : x0;                   \
            __m256 a[2][4];                                                                       \
            for (int t = 0; t < 4; t++) a[0][t] = a[1][t] = _mm256_setzero_ps();                  \
            for (int k = 0; k < in; k += 8) {                                                     \
                __m256 v0 = _mm256_loadu_ps(x0 + k), v1 = _mm256_loadu_ps(x1 + k);                \
                for (int t = 0; t < 4; t++) {                                                     \
                    __m256 wv = LOAD(wr[t], k);                                                   \
                    a[0][t] = _mm256_fmadd_ps(v0, wv, a[0][t]);                                   \
                    a[1][t] = _mm256_fmadd_ps(v1, wv, a[1][t]);                                   \
                }                                                                                 \
            }                                                                                     \
            for (int rr = 0; rr < 2 && r + rr < n; rr++)                                          \
                for (int t = 0; t < no; t++) {                                                    \
                    float s = hsum8(a[rr][t]);                                                    \
                    if (scale) s *= scale[o0 + t];                                                \
                    if (bias) s += bias[o0 + t];                                                  \
                    y[(long)(r + rr) * out + o0 + t] = s;                                         \
                }                                                                                 \
        }                                                                                         \
    }                                                                                             \
}
LINEAR_KERNEL(linear_f32, load_f32, 4)
LINEAR_KERNEL(linear_bf16, load_bf16, 2)
LINEAR_KERNEL(linear_i8, load_i8, 1)

static inline float dot(const float *a, const float *b, int d) {
    __m256 acc = _mm256_setzero_ps();
    for (int k = 0; k < d; k += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc);
    return hsum8(acc);
}

/* Attention of n queries over cache slots in canonical order.
 * q: [n, heads, d]; kc, vc: [kv_heads, max_len, d] (this layer); out: [n, heads, d].
 * Query j sees slots 0..cached-1, then the slots extra[j, 0..count[j]-1] (its ancestors in the
 * pass by depth, itself last). Scores, max, exp, sum and the weighted sum run in that order.
 * window > 0 keeps only keys whose position is > pos[j] - window (slot = position here).
 * scratch: [threads, max_len] floats. */
void attention(const float *q, int n, int heads, int kv_heads, int d, const float *kc, const float *vc,
               int max_len, int cached, const int *extra, const int *count, int max_extra,
               float scale, int window, const int *pos, float *out, float *scratch, int threads) {
    int group = heads / kv_heads;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int jh = 0; jh < n * heads; jh++) {
        int j = jh / heads, h = jh % heads, g = h / group;
        extern int omp_get_thread_num(void);
        float *s = scratch + (long)omp_get_thread_num() * (max_len + max_extra);
        const float *qv = q + (long)jh * d, *kb = kc + (long)g * max_len * d, *vb = vc + (long)g * max_len * d;
        int first = 0;
        if (window > 0 && pos[j] - window + 1 > 0) first = pos[j] - window + 1;
        int m = 0;
        int slots[1]; (void)slots;
        float mx = -INFINITY;
        for (int i = first; i < cached; i++, m++) { s[m] = dot(qv, kb + (long)i * d, d) * scale; if (s[m] > mx) mx = s[m]; }
        for (int e = 0; e < count[j]; e++, m++) {
            int i = extra[j * max_extra + e];
            s[m] = dot(qv, kb + (long)i * d, d) * scale; if (s[m] > mx) mx = s[m];
        }
        float sum = 0.f;
        for (int t = 0; t < m; t++) { s[t] = expf(s[t] - mx); sum += s[t]; }
        float inv = 1.f / sum;
        float *o = out + (long)jh * d;
        for (int k = 0; k < d; k += 8) {
            __m256 acc = _mm256_setzero_ps();
            int t = 0;
            for (int i = first; i < cached; i++, t++)
                acc = _mm256_fmadd_ps(_mm256_set1_ps(s[t]), _mm256_loadu_ps(vb + (long)i * d + k), acc);
            for (int e = 0; e < count[j]; e++, t++)
                acc = _mm256_fmadd_ps(_mm256_set1_ps(s[t]), _mm256_loadu_ps(vb + (long)extra[j * max_extra + e] * d + k), acc);
            _mm256_storeu_ps(o + k, _mm256_mul_ps(acc, _mm256_set1_ps(inv)));
        }
    }
}

/* y[n, d] = x * rsqrt(mean(x^2) + eps) * (w + offset); offset = 1 for Gemma's (1 + w) */
void rmsnorm(const float *x, int n, int d, const float *w, float eps, float offset, float *y) {
    for (int r = 0; r < n; r++) {
        const float *xr = x + (long)r * d;
        float inv = 1.f / sqrtf(dot(xr, xr, d) / d + eps);
        for (int k = 0; k < d; k++) y[(long)r * d + k] = xr[k] * inv * (w[k] + offset);
    }
}

/* gu: [n, 2*m] (gate then up); y[n, m] = act(gate) * up; act 0 = silu, 1 = gelu-tanh */
void gated_act(const float *gu, int n, int m, int act, float *y) {
    for (int r = 0; r < n; r++)
        for (int k = 0; k < m; k++) {
            float g = gu[(long)r * 2 * m + k], u = gu[(long)r * 2 * m + m + k], a;
            if (act == 0) a = g / (1.f + expf(-g));
            else a = 0.5f * g * (1.f + tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g)));
            y[(long)r * m + k] = a * u;
        }
}

/* the OpenMP team size for every kernel above (the split never changes an output's arithmetic) */
extern void omp_set_num_threads(int);
void set_threads(int n) { omp_set_num_threads(n); }
