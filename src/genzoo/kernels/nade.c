/* NADE's logits and their gradients, fused over the hidden units (see models/autoregressive/nade.py).
 *
 * For one example the whole state is the pre-activation a (H floats, resident in L1): for
 * d = 0..D-1, logit_d = b_d + V_d . sigmoid(a), then a += x_d W_{:,d}. The backward pass walks d
 * back down, undoing those updates, so nothing of size D x H is ever stored. Each call handles a
 * contiguous slice of the batch; the caller runs slices on several threads, each with its own
 * gradient accumulators. W is passed transposed (Wt, D x H) so that W_{:,d} is contiguous.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

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

/* logits (B x D); a_final (B x H) receives c + sum_d x_d W_{:,d}, the start of the backward walk. */
void nade_forward(const float *x, const float *Wt, const float *c, const float *V, const float *b,
                  float *logits, float *a_final, int64_t B, int64_t D, int64_t H) {
  for (int64_t i = 0; i < B; ++i) {
    float *a = a_final + i * H;
    memcpy(a, c, H * sizeof(float));
    const float *xi = x + i * D;
    for (int64_t d = 0; d < D; ++d) {
      const float *v = V + d * H;
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t h = 0; h < H; ++h) acc += v[h] * sigmoid(a[h]);
      logits[i * D + d] = acc + b[d];
      const float xd = xi[d];
      if (xd != 0.0f) {
        const float *w = Wt + d * H;
#pragma omp simd
        for (int64_t h = 0; h < H; ++h) a[h] += xd * w[h];
      }
    }
  }
}

/* Accumulates dWt, dV (D x H) and dc (H) from g = dL/dlogits; writes dx (B x D) unless NULL.
 * a and later are H-float scratch buffers; a_final is consumed (walked back to c). */
void nade_backward(const float *g, const float *x, const float *Wt, const float *V, float *a_final,
                   float *dWt, float *dV, float *dc, float *dx, float *later, int64_t B, int64_t D,
                   int64_t H) {
  for (int64_t i = 0; i < B; ++i) {
    float *a = a_final + i * H;
    const float *xi = x + i * D, *gi = g + i * D;
    memset(later, 0, H * sizeof(float));
    for (int64_t d = D - 1; d >= 0; --d) {
      const float xd = xi[d];
      const float *w = Wt + d * H;
      if (xd != 0.0f) {
#pragma omp simd
        for (int64_t h = 0; h < H; ++h) a[h] -= xd * w[h];
        float *dw = dWt + d * H;
#pragma omp simd
        for (int64_t h = 0; h < H; ++h) dw[h] += xd * later[h];
      }
      if (dx) { /* later = sum_{d' > d} delta_{d'} reaches x_d through W_{:,d} */
        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (int64_t h = 0; h < H; ++h) acc += w[h] * later[h];
        dx[i * D + d] = acc;
      }
      const float gd = gi[d];
      const float *v = V + d * H;
      float *dv = dV + d * H;
#pragma omp simd
      for (int64_t h = 0; h < H; ++h) {
        const float s = sigmoid(a[h]);
        dv[h] += gd * s;
        later[h] += gd * v[h] * s * (1.0f - s);
      }
    }
#pragma omp simd
    for (int64_t h = 0; h < H; ++h) dc[h] += later[h];
  }
}
