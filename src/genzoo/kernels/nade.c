/* NADE's logits and their gradients, fused over the hidden units (see models/autoregressive/nade.py).
 *
 * For one example the whole state is the pre-activation a (H floats): for d = 0..D-1,
 * logit_d = b_d + V_d . sigmoid(a), then a += x_d W_{:,d}. The backward pass walks d back down,
 * undoing those updates, so nothing of size D x H is ever stored. Each call handles a contiguous
 * slice of the batch; the caller runs slices on several threads, each with its own gradient
 * accumulators. The kernels see W transposed (Wt, D x H) so that W_{:,d} is contiguous, and H
 * padded to a multiple of nade_lanes() (zero columns of Wt, V and c, which change no logit);
 * nade_prepare and nade_finish convert to and from those layouts, also split over threads (by
 * rows d), so a training step runs no multithreaded PyTorch op of its own.
 *
 * Exact shortcuts for binary, sparse x (MNIST: ~13% ones), none of which assumes it:
 *  - Caching: a only changes where x_d != 0, so s = sigmoid(a) is recomputed only there, not at
 *    every d in both passes (those exps were most of the cost).
 *  - Segments: between two changes of a, sigmoid'(a) = s(1 - s) is constant, so the backward pass
 *    sums acc = sum_d g_d V_d over the segment and folds later += s(1 - s) * acc (later = dL/da)
 *    only where a changes, which is also the only place dW needs later. dx needs dL/da at every
 *    d, so when it is requested a per-example path keeps later exact at every step instead.
 *  - Blocking: BLOCK examples walk d together, so the rows V_d and dV_d (read, and for dV
 *    written, at every d) come from memory once per block rather than once per example, and each
 *    vector loaded from them feeds BLOCK independent multiply-adds. The block's s and acc are
 *    stored chunk by chunk (for each run of LANES hidden units, those of every example side by
 *    side), so the inner loops address them all from one pointer.
 *  - Pairs: where no example of the block changes a between rows d and d + 1, both rows use the
 *    same s, so they are done in one sweep that loads s (and acc) once for two rows.
 */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 9 && defined(__AVX512F__)
/* gcc's default for these CPUs is 256-bit vectors; the exp loops run faster at 512 */
#pragma GCC target("prefer-vector-width=512")
#endif
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__FMA__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#define LANES 16
#elif defined(__AVX__)
#define LANES 8
#else
#define LANES 4
#endif
#ifndef BLOCK
#define BLOCK 8 /* examples per block: their s and acc (2 x BLOCK x H floats) stay in L1 */
#endif

/* Forced inlining, so that the block size J and the row count R are constants in every copy. */
#define INLINE static inline __attribute__((always_inline))

/* A GNU C vector (gcc, clang); memcpy loads and stores compile to single unaligned moves. */
typedef float vec __attribute__((vector_size(LANES * sizeof(float))));
static inline vec vload(const float *p) {
  vec v;
  memcpy(&v, p, sizeof v);
  return v;
}
static inline void vstore(float *p, vec v) { memcpy(p, &v, sizeof v); }
/* a * b + c as one fused multiply-add: written as a * b + c, gcc's -fassociative-math rebuilds a
 * chain of them into a tree of separate multiplies and adds (twice the instructions). */
static inline vec vfma(vec a, vec b, vec c) {
#if defined(__AVX512F__)
  return _mm512_fmadd_ps(a, b, c);
#elif defined(__FMA__)
  return _mm256_fmadd_ps(a, b, c);
#else
  return a * b + c;
#endif
}
/* The sum of v's lanes: by halving (add the upper half to the lower) where the compiler has
 * __builtin_shufflevector; gcc < 12 gets a plain loop. */
static inline float hsum(vec v) {
#if defined(__clang__) || __GNUC__ >= 12
  typedef float vec4 __attribute__((vector_size(4 * sizeof(float))));
#if LANES == 16
  typedef float vec8 __attribute__((vector_size(8 * sizeof(float))));
  const vec8 v8 = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                  __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
#else
  const vec v8 = v;
#endif
#if LANES >= 8
  const vec4 v4 =
      __builtin_shufflevector(v8, v8, 0, 1, 2, 3) + __builtin_shufflevector(v8, v8, 4, 5, 6, 7);
#else
  const vec4 v4 = v;
#endif
  return (v4[0] + v4[2]) + (v4[1] + v4[3]);
#else
  float s = 0.0f;
  for (int l = 0; l < LANES; ++l) s += v[l];
  return s;
#endif
}

/* exp(v) = 2^n exp(r), |r| <= ln2 / 2, with a degree-6 polynomial for exp(r) (Cephes
 * coefficients, relative error ~2e-7); branch-free so the loops over h vectorize inline. */
static inline float fast_exp(float v) {
  v = fminf(fmaxf(v, -87.0f), 88.0f);
  const float n = nearbyintf(v * 1.44269504088896341f);
  const float r = fmaf(n, -0.693359375f, fmaf(n, 2.12194440e-4f, v));
  float p = 1.9875691500e-4f;
  p = fmaf(p, r, 1.3981999507e-3f);
  p = fmaf(p, r, 8.3334519073e-3f);
  p = fmaf(p, r, 4.1665795894e-2f);
  p = fmaf(p, r, 1.6666665459e-1f);
  p = fmaf(p, r, 5.0000001201e-1f);
  p = fmaf(p * r, r, r) + 1.0f;
  const int32_t bits = ((int32_t)n + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

static inline float sigmoid(float v) { return 1.0f / (1.0f + fast_exp(-v)); }

/* What the caller must provide: the padding unit of H, and the scratch floats per thread. */
int64_t nade_lanes(void) { return LANES; }
int64_t nade_scratch_floats(int64_t H) { return 4 * BLOCK * H; }

/* Rows [d0, d1) of Wt (D x Hp) = W^T (W is H x D) and, unless Vp is NULL, of Vp (D x Hp) = V
 * (D x H), zero in the padding columns H..Hp-1. */
void nade_prepare(const float *W, const float *V, float *Wt, float *Vp, int64_t D, int64_t H,
                  int64_t Hp, int64_t d0, int64_t d1) {
  for (int64_t d = d0; d < d1; ++d) {
    float *wt = Wt + d * Hp;
    for (int64_t h = 0; h < H; ++h) wt[h] = W[h * D + d]; /* the lines of W stay cached across d */
    memset(wt + H, 0, (Hp - H) * sizeof(float));
    if (Vp) {
      memcpy(Vp + d * Hp, V + d * H, H * sizeof(float));
      memset(Vp + d * Hp + H, 0, (Hp - H) * sizeof(float));
    }
  }
}

/* Rows [d0, d1) of the gradients from the K threads' partial sums dWt_k, dV_k (each D x Hp),
 * without the padding: dW (H x D) = sum_k dWt_k^T, dV (D x H) = sum_k dV_k, and db = the sum of
 * g (B x D) over the batch. */
void nade_finish(const float *dWt, const float *dV_parts, int64_t K, const float *g, int64_t B,
                 float *dW, float *dV, float *db, int64_t D, int64_t H, int64_t Hp, int64_t d0,
                 int64_t d1) {
  for (int64_t d = d0; d < d1; ++d) {
    float *dv = dV + d * H;
    memcpy(dv, dV_parts + d * Hp, H * sizeof(float));
    for (int64_t k = 1; k < K; ++k) {
      const float *part = dV_parts + (k * D + d) * Hp;
#pragma omp simd
      for (int64_t h = 0; h < H; ++h) dv[h] += part[h];
    }
    for (int64_t h = 0; h < H; ++h) {
      float sum = dWt[d * Hp + h];
      for (int64_t k = 1; k < K; ++k) sum += dWt[(k * D + d) * Hp + h];
      dW[h * D + d] = sum;
    }
  }
  memset(db + d0, 0, (d1 - d0) * sizeof(float));
  for (int64_t i = 0; i < B; ++i)
#pragma omp simd
    for (int64_t d = d0; d < d1; ++d) db[d] += g[i * D + d];
}

/* Whether any of the block's J examples has x_d != 0 (changes a at d). */
static inline int any_change(const float *x, int J, int64_t D, int64_t d) {
  int any = 0;
  for (int j = 0; j < J; ++j) any |= x[j * D + d] != 0.0f;
  return any;
}

/* logit_{d+r} for r < R (1 or 2) of the block's J examples, all from its current s. Reading s
 * once for two rows halves the loads per multiply-add. s[k * stride + j * LANES + l] is s_j at
 * hidden unit k * LANES + l (stride J * LANES for s alone, 2 * J * LANES for s beside acc). */
INLINE void block_logits(const float *V, const float *b, const float *s, float *logits, int J, int R,
                         int64_t d, int64_t D, int64_t H, int64_t stride) {
  const int64_t chunks = H / LANES;
  vec dot[2][BLOCK] = {{{0.0f}}};
  for (int64_t k = 0; k < chunks; ++k) {
    const float *sk = s + k * stride;
    const vec v0 = vload(V + d * H + k * LANES);
    const vec v1 = R > 1 ? vload(V + (d + 1) * H + k * LANES) : v0;
    for (int j = 0; j < J; ++j) {
      const vec sj = vload(sk + j * LANES);
      dot[0][j] = vfma(v0, sj, dot[0][j]);
      if (R > 1) dot[1][j] = vfma(v1, sj, dot[1][j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) logits[j * D + d + r] = hsum(dot[r][j]) + b[d + r];
}

/* The walk's start for J examples: a_j = c and s_j = sigmoid(c), s stored chunk by chunk. */
INLINE void start_walk(const float *c, float *a, float *s, int J, int64_t H) {
  const int64_t chunks = H / LANES, stride = J * LANES;
  for (int j = 0; j < J; ++j) {
    memcpy(a + j * H, c, H * sizeof(float));
    for (int64_t k = 0; k < chunks; ++k)
#pragma omp simd
      for (int l = 0; l < LANES; ++l) s[k * stride + j * LANES + l] = sigmoid(c[k * LANES + l]);
  }
}

/* a_j += xd w (w = W_{:,d}) and the s_j it changes, for example j of a block of J. */
INLINE void step_walk(float *aj, float *sj, const float *w, float xd, int J, int64_t H) {
  const int64_t chunks = H / LANES, stride = J * LANES;
  for (int64_t k = 0; k < chunks; ++k)
#pragma omp simd
    for (int l = 0; l < LANES; ++l) {
      const int64_t h = k * LANES + l;
      aj[h] += xd * w[h];
      sj[k * stride + l] = sigmoid(aj[h]);
    }
}

/* Forward for J consecutive examples (J = BLOCK, or 1 for the slice's last few). */
INLINE void forward_block(const float *x, const float *Wt, const float *c, const float *V,
                          const float *b, float *logits, float *a, float *s, int J, int64_t D,
                          int64_t H) {
  start_walk(c, a, s, J, H);
  for (int64_t d = 0; d < D;) {
    /* where no example changes a at d, logit_{d+1} sees the same s as logit_d */
    int64_t last = d;
    if (d + 1 < D && !any_change(x, J, D, d)) {
      block_logits(V, b, s, logits, J, 2, d, D, H, J * LANES);
      last = d + 1;
    } else {
      block_logits(V, b, s, logits, J, 1, d, D, H, J * LANES);
    }
    d = last + 1;
    for (int j = 0; j < J; ++j) {
      const float xd = x[j * D + last];
      if (xd != 0.0f) step_walk(a + j * H, s + j * LANES, Wt + last * H, xd, J, H);
    }
  }
}

/* Samples of J consecutive examples from uniforms u: the forward walk, with each x_d drawn as
 * 1[u_d < sigmoid(logit_d)] as soon as its logit is known. a and s are scratch. */
INLINE void sample_block(const float *u, const float *Wt, const float *c, const float *V,
                         const float *b, float *x, float *a, float *s, int J, int64_t D, int64_t H) {
  start_walk(c, a, s, J, H);
  for (int64_t d = 0; d < D; ++d) {
    block_logits(V, b, s, x, J, 1, d, D, H, J * LANES); /* the logit goes where its draw will */
    for (int j = 0; j < J; ++j) {
      const float logit = x[j * D + d];
      /* libm's expf, not fast_exp: the draw should match the reference's sigmoid to the last bit
       * wherever it can */
      x[j * D + d] = u[j * D + d] < 1.0f / (1.0f + expf(-logit)) ? 1.0f : 0.0f;
      if (x[j * D + d] != 0.0f) step_walk(a + j * H, s + j * LANES, Wt + d * H, 1.0f, J, H);
    }
  }
}

/* Samples x (B x D) from uniforms u (B x D); scratch holds nade_scratch_floats(H) floats. */
void nade_sample(const float *u, const float *Wt, const float *c, const float *V, const float *b,
                 float *x, float *scratch, int64_t B, int64_t D, int64_t H) {
  float *a = scratch, *s = scratch + BLOCK * H;
  int64_t i = 0;
  for (; i + BLOCK <= B; i += BLOCK) sample_block(u + i * D, Wt, c, V, b, x + i * D, a, s, BLOCK, D, H);
  for (; i < B; ++i) sample_block(u + i * D, Wt, c, V, b, x + i * D, a, s, 1, D, H);
}

/* logits (B x D); a_final (B x H) receives c + sum_d x_d W_{:,d}, the start of the backward walk. */
void nade_forward(const float *x, const float *Wt, const float *c, const float *V, const float *b,
                  float *logits, float *a_final, float *scratch, int64_t B, int64_t D, int64_t H) {
  int64_t i = 0;
  for (; i + BLOCK <= B; i += BLOCK)
    forward_block(x + i * D, Wt, c, V, b, logits + i * D, a_final + i * H, scratch, BLOCK, D, H);
  for (; i < B; ++i)
    forward_block(x + i * D, Wt, c, V, b, logits + i * D, a_final + i * H, scratch, 1, D, H);
}

/* For rows d - r, r < R (1 or 2), with the block's s unchanged over them: acc_j += g_{j,d-r} V_{d-r}
 * and dV_{d-r} += sum_j g_{j,d-r} s_j. Per chunk k of LANES hidden units, sa holds s_0..s_{J-1}
 * then acc_0..acc_{J-1}; two rows at once halve the loads and stores of acc. */
INLINE void block_accumulate(const float *g, const float *V, float *dV, float *sa, int J, int R,
                             int64_t d, int64_t D, int64_t H) {
  const int64_t chunks = H / LANES, stride = 2 * J * LANES;
  vec g0[BLOCK], g1[BLOCK];
  for (int j = 0; j < J; ++j) {
    g0[j] = (vec){0.0f} + g[j * D + d];
    g1[j] = (vec){0.0f} + (R > 1 ? g[j * D + d - 1] : 0.0f);
  }
  const float *v0 = V + d * H, *v1 = v0 - H;
  float *dv0 = dV + d * H, *dv1 = dv0 - H;
  for (int64_t k = 0; k < chunks; ++k) {
    const int64_t h = k * LANES;
    const vec v0k = vload(v0 + h), v1k = R > 1 ? vload(v1 + h) : v0k;
    vec dv0k = vload(dv0 + h), dv1k = R > 1 ? vload(dv1 + h) : dv0k;
    float *sk = sa + k * stride, *acck = sk + J * LANES;
    for (int j = 0; j < J; ++j) {
      const vec sj = vload(sk + j * LANES);
      vec acc = vfma(g0[j], v0k, vload(acck + j * LANES));
      dv0k = vfma(g0[j], sj, dv0k);
      if (R > 1) {
        acc = vfma(g1[j], v1k, acc);
        dv1k = vfma(g1[j], sj, dv1k);
      }
      vstore(acck + j * LANES, acc);
    }
    vstore(dv0 + h, dv0k);
    if (R > 1) vstore(dv1 + h, dv1k);
  }
}

/* The segment walk's start for J examples whose a (J x H) is set: s = sigmoid(a) and acc = 0 in
 * sa (chunk by chunk, s_0..s_{J-1} then acc_0..acc_{J-1}), and the running sum of dL/da (J x H)
 * at 0. */
INLINE void start_segments(const float *a, float *sum, float *sa, int J, int64_t H) {
  const int64_t chunks = H / LANES, stride = 2 * J * LANES;
  for (int j = 0; j < J; ++j) {
    memset(sum + j * H, 0, H * sizeof(float));
    for (int64_t k = 0; k < chunks; ++k)
#pragma omp simd
      for (int l = 0; l < LANES; ++l) {
        sa[k * stride + j * LANES + l] = sigmoid(a[j * H + k * LANES + l]);
        sa[k * stride + (J + j) * LANES + l] = 0.0f;
      }
  }
}

/* Example j's a changes by step * w, so its segment ends: fold it into the running sum
 * (sum += s (1 - s) acc, acc = 0), subtract step * sum from dw, and step a and s. */
INLINE void close_segment_and_step(float *aj, float *sumj, float *sj, float *accj, float *dw,
                                   const float *w, float step, int J, int64_t H) {
  const int64_t chunks = H / LANES, stride = 2 * J * LANES;
  for (int64_t k = 0; k < chunks; ++k)
#pragma omp simd
    for (int l = 0; l < LANES; ++l) {
      const int64_t h = k * LANES + l, e = k * stride + l;
      const float total = sumj[h] + sj[e] * (1.0f - sj[e]) * accj[e];
      sumj[h] = total;
      dw[h] -= step * total;
      accj[e] = 0.0f;
      aj[h] += step * w[h];
      sj[e] = sigmoid(aj[h]);
    }
}

/* The walk's end: every example's last segment folded into its running sum, which is added to dc. */
INLINE void close_last_segments(float *sum, const float *sa, float *dc, int J, int64_t H) {
  const int64_t chunks = H / LANES, stride = 2 * J * LANES;
  for (int j = 0; j < J; ++j) {
    float *sumj = sum + j * H;
    const float *sj = sa + j * LANES, *accj = sa + (J + j) * LANES;
    for (int64_t k = 0; k < chunks; ++k)
#pragma omp simd
      for (int l = 0; l < LANES; ++l) {
        const int64_t h = k * LANES + l, e = k * stride + l;
        sumj[h] += sj[e] * (1.0f - sj[e]) * accj[e];
        dc[h] += sumj[h];
      }
  }
}

/* Backward for J consecutive examples without dx, by segments (see the header); a (the walk,
 * from a copy of a_final) and later are J x H. */
INLINE void backward_block(const float *g, const float *x, const float *Wt, const float *V,
                           const float *a_final, float *dWt, float *dV, float *dc, float *scratch,
                           int J, int64_t D, int64_t H) {
  float *sa = scratch, *later = scratch + 2 * BLOCK * H;
  float *a = memcpy(scratch + 3 * BLOCK * H, a_final, J * H * sizeof(float));
  start_segments(a, later, sa, J, H);
  for (int64_t d = D - 1; d >= 0;) {
    for (int j = 0; j < J; ++j) {
      const float xd = x[j * D + d];
      /* a_d != a_{d+1}: close the segment above d, then step a (and s) down to a_d */
      if (xd != 0.0f)
        close_segment_and_step(a + j * H, later + j * H, sa + j * LANES, sa + (J + j) * LANES,
                               dWt + d * H, Wt + d * H, -xd, J, H);
    }
    /* where no example changes a at d - 1, row d - 1 sees the same s as row d */
    if (d >= 1 && !any_change(x, J, D, d - 1)) {
      block_accumulate(g, V, dV, sa, J, 2, d, D, H);
      d -= 2;
    } else {
      block_accumulate(g, V, dV, sa, J, 1, d, D, H);
      d -= 1;
    }
  }
  close_last_segments(later, sa, dc, J, H);
}

/* Backward for one example with dx: later = dL/da_{d+1} is kept exact at every d. */
static void backward_exact(const float *g, const float *x, const float *Wt, const float *V,
                           const float *a_final, float *dWt, float *dV, float *dc, float *dx,
                           float *scratch, int64_t D, int64_t H) {
  float *s = scratch, *ds = scratch + H, *later = scratch + 2 * H; /* ds = sigmoid'(a) */
  float *a = memcpy(scratch + 3 * H, a_final, H * sizeof(float));
  for (int64_t h = 0; h < H; ++h) {
    s[h] = sigmoid(a[h]);
    ds[h] = s[h] * (1.0f - s[h]);
    later[h] = 0.0f;
  }
  for (int64_t d = D - 1; d >= 0; --d) {
    const float xd = x[d];
    const float *w = Wt + d * H;
    if (xd != 0.0f) {
      float *dw = dWt + d * H;
#pragma omp simd
      for (int64_t h = 0; h < H; ++h) {
        dw[h] += xd * later[h];
        a[h] -= xd * w[h];
        s[h] = sigmoid(a[h]);
        ds[h] = s[h] * (1.0f - s[h]);
      }
    }
    float acc = 0.0f; /* later reaches x_d through W_{:,d} */
#pragma omp simd reduction(+ : acc)
    for (int64_t h = 0; h < H; ++h) acc += w[h] * later[h];
    dx[d] = acc;
    const float gd = g[d];
    const float *v = V + d * H;
    float *dv = dV + d * H;
#pragma omp simd
    for (int64_t h = 0; h < H; ++h) {
      dv[h] += gd * s[h];
      later[h] += gd * v[h] * ds[h];
    }
  }
#pragma omp simd
  for (int64_t h = 0; h < H; ++h) dc[h] += later[h];
}

/* This slice's dWt, dV (D x H) and dc (H) from g = dL/dlogits; writes dx (B x D) unless NULL.
 * scratch holds nade_scratch_floats(H) floats. */
void nade_backward(const float *g, const float *x, const float *Wt, const float *V,
                   const float *a_final, float *dWt, float *dV, float *dc, float *dx, float *scratch,
                   int64_t B, int64_t D, int64_t H) {
  memset(dWt, 0, D * H * sizeof(float));
  memset(dV, 0, D * H * sizeof(float));
  memset(dc, 0, H * sizeof(float));
  if (dx) {
    for (int64_t i = 0; i < B; ++i)
      backward_exact(g + i * D, x + i * D, Wt, V, a_final + i * H, dWt, dV, dc, dx + i * D,
                     scratch, D, H);
    return;
  }
  int64_t i = 0;
  for (; i + BLOCK <= B; i += BLOCK)
    backward_block(g + i * D, x + i * D, Wt, V, a_final + i * H, dWt, dV, dc, scratch, BLOCK, D, H);
  for (; i < B; ++i)
    backward_block(g + i * D, x + i * D, Wt, V, a_final + i * H, dWt, dV, dc, scratch, 1, D, H);
}

/* Training for J consecutive examples in one walk up d: logits, g = scale (sigmoid(logit) - x)
 * (the gradient of scale * sum_d BCE(logit_d, x_d)) and the parameter gradients, with no
 * backward walk. dL/da_d reaches W_{:,j} through every a_d with d > j, so
 * dW_{:,j} = x_j (T - P_j), where P_j is the sum of the dL/da_d for d <= j and T the sum over
 * all d: each x_j != 0 subtracts x_j P_j from its row when the walk passes j, and adds x_j T at
 * the end. dL/da_d = (g_d V_d) s_d (1 - s_d) is summed by segments, as in backward_block: acc
 * collects g_d V_d while s stays the same, and is folded into P where s changes. Compared with
 * forward then backward, each x_d != 0 costs one sigmoid instead of two. */
INLINE void train_block(const float *x, const float *Wt, const float *c, const float *V,
                        const float *b, float *logits, float *g, float *dWt, float *dV, float *dc,
                        float *scratch, float scale, int J, int64_t D, int64_t H) {
  float *sa = scratch, *prefix = scratch + 2 * BLOCK * H, *a = scratch + 3 * BLOCK * H;
  for (int j = 0; j < J; ++j) memcpy(a + j * H, c, H * sizeof(float));
  start_segments(a, prefix, sa, J, H);
  for (int64_t d = 0; d < D;) {
    /* where no example changes a at d, row d + 1 sees the same s as row d */
    const int R = d + 1 < D && !any_change(x, J, D, d) ? 2 : 1;
    block_logits(V, b, sa, logits, J, R, d, D, H, 2 * J * LANES);
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < J; ++j) {
        const int64_t e = j * D + d + r;
        g[e] = scale * (sigmoid(logits[e]) - x[e]);
      }
    const int64_t last = d + R - 1;
    block_accumulate(g, V, dV, sa, J, R, last, D, H);
    for (int j = 0; j < J; ++j) {
      const float xd = x[j * D + last];
      /* a changes after row `last`: fold its segment into P, then step a (and s) up */
      if (xd != 0.0f)
        close_segment_and_step(a + j * H, prefix + j * H, sa + j * LANES, sa + (J + j) * LANES,
                               dWt + last * H, Wt + last * H, xd, J, H);
    }
    d = last + 1;
  }
  close_last_segments(prefix, sa, dc, J, H); /* prefix now holds T */
  for (int j = 0; j < J; ++j) {
    const float *tj = prefix + j * H;
    for (int64_t d = 0; d < D; ++d) {
      const float xd = x[j * D + d];
      if (xd == 0.0f) continue;
      float *dw = dWt + d * H;
#pragma omp simd
      for (int64_t h = 0; h < H; ++h) dw[h] += xd * tj[h];
    }
  }
}

/* One walk per example for training: logits (B x D), g (B x D) = scale (sigmoid(logits) - x),
 * and this slice's dWt, dV (D x H) and dc (H) of scale * sum BCE(logits, x); see train_block.
 * scratch holds nade_scratch_floats(H) floats. */
void nade_train(const float *x, const float *Wt, const float *c, const float *V, const float *b,
                float *logits, float *g, float *dWt, float *dV, float *dc, float *scratch, float scale,
                int64_t B, int64_t D, int64_t H) {
  memset(dWt, 0, D * H * sizeof(float));
  memset(dV, 0, D * H * sizeof(float));
  memset(dc, 0, H * sizeof(float));
  int64_t i = 0;
  for (; i + BLOCK <= B; i += BLOCK)
    train_block(x + i * D, Wt, c, V, b, logits + i * D, g + i * D, dWt, dV, dc, scratch, scale, BLOCK,
                D, H);
  for (; i < B; ++i)
    train_block(x + i * D, Wt, c, V, b, logits + i * D, g + i * D, dWt, dV, dc, scratch, scale, 1, D,
                H);
}
