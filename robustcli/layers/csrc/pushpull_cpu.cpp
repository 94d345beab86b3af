// Fused CPU kernel for push-pull responses (see robustcli/layers/fused.py for the maths).
//
// For push weights K (O x C x k x k) and pull bases A_i (S_i x k, the bilinear resize matrices),
// every image is processed in cache:
//   M    = K' X                  one GEMM, K' = K reshaped to (k*k*O) x C: M[t][o] = sum_c K[o,c,t]
//   X_c P    = sum_t shift_t(M_t)     the push X * K          (a fixed stencil over the k*k taps)
//   Q_i  = sum_ab (A_i[:,a] A_i[:,b]^T) (*) M_ab          the pull X * up_i(K), separable stencil
// The backward pass applies the transposed stencils to the incoming gradients (giving dL/dM),
// then dL/dX = K'^T dL/dM and dL/dK' = sum_n dL/dM X^T: two more GEMMs. In total the GEMM work
// equals one plain k x k convolution (forward + backward), for the push and all pulls together.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <vector>

namespace {

struct Geometry {
  int64_t C, O, H, W, k, s, p, Ho, Wo;
};

// Output positions x in [lo, hi) whose input position x*s + off lies in [0, size).
inline void valid_range(int64_t off, int64_t s, int64_t size, int64_t n_out, int64_t& lo,
                        int64_t& hi) {
  lo = off >= 0 ? 0 : (-off + s - 1) / s;
  hi = size - 1 - off < 0 ? 0 : (size - 1 - off) / s + 1;
  hi = std::min(hi, n_out);
  lo = std::min(lo, hi);
}

// dst[x] += w * src[x*s + off] for the valid x.
template <typename T>
inline void axpy_row(T* __restrict dst, const T* __restrict src, T w, int64_t off, int64_t s,
                     int64_t in_size, int64_t n_out) {
  int64_t lo, hi;
  valid_range(off, s, in_size, n_out, lo, hi);
  if (s == 1) {
    const T* sp = src + off;
    for (int64_t x = lo; x < hi; ++x) dst[x] += w * sp[x];
  } else {
    for (int64_t x = lo; x < hi; ++x) dst[x] += w * src[x * s + off];
  }
}

// dst[x*s + off] += w * src[x] for the valid x (the transpose of axpy_row).
template <typename T>
inline void axpy_row_t(T* __restrict dst, const T* __restrict src, T w, int64_t off, int64_t s,
                       int64_t in_size, int64_t n_out) {
  int64_t lo, hi;
  valid_range(off, s, in_size, n_out, lo, hi);
  if (s == 1) {
    T* dp = dst + off;
    for (int64_t x = lo; x < hi; ++x) dp[x] += w * src[x];
  } else {
    for (int64_t x = lo; x < hi; ++x) dst[x * s + off] += w * src[x];
  }
}

// Push: P[o][y][:] = sum_ab M[ab][o][y*s - p + a][(:)*s - p + b].
template <typename T>
void push_forward_generic(const T* M, T* P, const Geometry& g) {
  const int64_t HW = g.H * g.W, plane = g.Ho * g.Wo;
  std::fill(P, P + g.O * plane, T(0));
  for (int64_t o = 0; o < g.O; ++o)
    for (int64_t y = 0; y < g.Ho; ++y)
      for (int64_t a = 0; a < g.k; ++a) {
        const int64_t h = y * g.s - g.p + a;
        if (h < 0 || h >= g.H) continue;
        for (int64_t b = 0; b < g.k; ++b) {
          const T* src = M + ((a * g.k + b) * g.O + o) * HW + h * g.W;
          axpy_row(P + o * plane + y * g.Wo, src, T(1), b - g.p, g.s, g.W, g.Wo);
        }
      }
}

template <typename T>
void push_backward_generic(const T* gP, T* gM, const Geometry& g) {
  const int64_t HW = g.H * g.W, plane = g.Ho * g.Wo;
  for (int64_t o = 0; o < g.O; ++o)
    for (int64_t y = 0; y < g.Ho; ++y)
      for (int64_t a = 0; a < g.k; ++a) {
        const int64_t h = y * g.s - g.p + a;
        if (h < 0 || h >= g.H) continue;
        for (int64_t b = 0; b < g.k; ++b) {
          T* dst = gM + ((a * g.k + b) * g.O + o) * HW + h * g.W;
          axpy_row_t(dst, gP + o * plane + y * g.Wo, T(1), b - g.p, g.s, g.W, g.Wo);
        }
      }
}

// Pull at one scale. A is S x k (row-major). R is scratch of size k*O*H*Wo.
template <typename T>
void pull_forward_generic(const T* M, const T* A, int64_t S, T* R, T* Q, const Geometry& g) {
  const int64_t HW = g.H * g.W, plane = g.Ho * g.Wo, q = S / 2 - g.k / 2 + g.p;
  std::fill(R, R + g.k * g.O * g.H * g.Wo, T(0));
  // horizontal pass: R[a][o][h][x] = sum_b sum_j A[j,b] M[ab][o][h][x*s - q + j]
  for (int64_t a = 0; a < g.k; ++a)
    for (int64_t o = 0; o < g.O; ++o)
      for (int64_t h = 0; h < g.H; ++h) {
        T* dst = R + ((a * g.O + o) * g.H + h) * g.Wo;
        for (int64_t b = 0; b < g.k; ++b) {
          const T* src = M + ((a * g.k + b) * g.O + o) * HW + h * g.W;
          for (int64_t j = 0; j < S; ++j) {
            const T w = A[j * g.k + b];
            if (w != T(0)) axpy_row(dst, src, w, j - q, g.s, g.W, g.Wo);
          }
        }
      }
  // vertical pass: Q[o][y][:] = sum_a sum_i A[i,a] R[a][o][y*s - q + i][:]
  std::fill(Q, Q + g.O * plane, T(0));
  for (int64_t o = 0; o < g.O; ++o)
    for (int64_t y = 0; y < g.Ho; ++y) {
      T* dst = Q + o * plane + y * g.Wo;
      for (int64_t a = 0; a < g.k; ++a)
        for (int64_t i = 0; i < S; ++i) {
          const int64_t h = y * g.s - q + i;
          const T w = A[i * g.k + a];
          if (h < 0 || h >= g.H || w == T(0)) continue;
          const T* src = R + ((a * g.O + o) * g.H + h) * g.Wo;
          for (int64_t x = 0; x < g.Wo; ++x) dst[x] += w * src[x];
        }
    }
}

template <typename T>
void pull_backward_generic(const T* gQ, const T* A, int64_t S, T* gR, T* gM, const Geometry& g) {
  const int64_t HW = g.H * g.W, plane = g.Ho * g.Wo, q = S / 2 - g.k / 2 + g.p;
  std::fill(gR, gR + g.k * g.O * g.H * g.Wo, T(0));
  for (int64_t o = 0; o < g.O; ++o)
    for (int64_t y = 0; y < g.Ho; ++y) {
      const T* src = gQ + o * plane + y * g.Wo;
      for (int64_t a = 0; a < g.k; ++a)
        for (int64_t i = 0; i < S; ++i) {
          const int64_t h = y * g.s - q + i;
          const T w = A[i * g.k + a];
          if (h < 0 || h >= g.H || w == T(0)) continue;
          T* dst = gR + ((a * g.O + o) * g.H + h) * g.Wo;
          for (int64_t x = 0; x < g.Wo; ++x) dst[x] += w * src[x];
        }
    }
  for (int64_t a = 0; a < g.k; ++a)
    for (int64_t o = 0; o < g.O; ++o)
      for (int64_t h = 0; h < g.H; ++h) {
        const T* src = gR + ((a * g.O + o) * g.H + h) * g.Wo;
        for (int64_t b = 0; b < g.k; ++b) {
          T* dst = gM + ((a * g.k + b) * g.O + o) * HW + h * g.W;
          for (int64_t j = 0; j < S; ++j) {
            const T w = A[j * g.k + b];
            if (w != T(0)) axpy_row_t(dst, src, w, j - q, g.s, g.W, g.Wo);
          }
        }
      }
}

// ---- Fast path (stride 1, "same" padding): planes are stored with P zero columns on each side
// of every row (row stride Wp = W + 2P), so a horizontal shift by d is a flat offset of d and a
// vertical shift by d a flat offset of d*Wp. Every stencil pass is then a few calls of `gather`
// over whole planes, accumulating its taps in registers. ----

template <typename T>
struct Taps {
  std::vector<const T*> src;
  std::vector<T> w;
  Taps() {
    src.reserve(64);
    w.reserve(64);
  }
  void clear() {
    src.clear();
    w.clear();
  }
  void add(const T* p, T weight) {
    src.push_back(p);
    w.push_back(weight);
  }
};

// SIMD helpers on GCC/Clang vector extensions (64-byte vectors; the compiler splits them where
// the target has narrower registers).
template <typename T>
struct Simd {
  typedef T v __attribute__((vector_size(64)));
  static constexpr int64_t L = 64 / sizeof(T);
};
template <typename T>
inline typename Simd<T>::v load(const T* p) {
  typename Simd<T>::v r;
  std::memcpy(&r, p, sizeof(r));
  return r;
}
template <typename T>
inline void store(T* p, typename Simd<T>::v v) {
  std::memcpy(p, &v, sizeof(v));
}

// out[x] = sum_t w_t * src_t[x + shift], x in [0, n), accumulated in registers.
template <typename T>
inline void gather(T* __restrict out, int64_t n, const Taps<T>& taps, int64_t shift = 0) {
  using V = typename Simd<T>::v;
  constexpr int64_t L = Simd<T>::L;
  const int64_t nt = static_cast<int64_t>(taps.src.size());
  const T* const* src = taps.src.data();
  const T* w = taps.w.data();
  int64_t x = 0;
  for (; x + 4 * L <= n; x += 4 * L) {
    V a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int64_t t = 0; t < nt; ++t) {
      const T* sp = src[t] + shift + x;
      a0 += w[t] * load<T>(sp);
      a1 += w[t] * load<T>(sp + L);
      a2 += w[t] * load<T>(sp + 2 * L);
      a3 += w[t] * load<T>(sp + 3 * L);
    }
    store<T>(out + x, a0);
    store<T>(out + x + L, a1);
    store<T>(out + x + 2 * L, a2);
    store<T>(out + x + 3 * L, a3);
  }
  for (; x + 2 * L <= n; x += 2 * L) {
    V a0 = {}, a1 = {};
    for (int64_t t = 0; t < nt; ++t) {
      const T* sp = src[t] + shift + x;
      a0 += w[t] * load<T>(sp);
      a1 += w[t] * load<T>(sp + L);
    }
    store<T>(out + x, a0);
    store<T>(out + x + L, a1);
  }
  for (; x + L <= n; x += L) {
    V a0 = {};
    for (int64_t t = 0; t < nt; ++t) a0 += w[t] * load<T>(src[t] + shift + x);
    store<T>(out + x, a0);
  }
  for (; x < n; ++x) {
    T acc = 0;
    for (int64_t t = 0; t < nt; ++t) acc += w[t] * src[t][shift + x];
    out[x] = acc;
  }
}

// Small dense products for the per-band GEMMs (a library call per band costs more than the
// arithmetic at these sizes). Row-major, explicit leading dimensions.

// out[r][f0 .. f0 + NV*L) = sum_c W[r][c] X[c][..] for RB rows (NV vectors wide).
template <typename T, int RB, int NV>
__attribute__((always_inline)) inline void gemm_tile(const T* W, int64_t ldw, const T* X,
                                                     int64_t ldx, T* out, int64_t ldo, int64_t K) {
  using V = typename Simd<T>::v;
  constexpr int64_t L = Simd<T>::L;
  V acc[RB][NV] = {};
  for (int64_t c = 0; c < K; ++c) {
    V xv[NV];
    for (int v = 0; v < NV; ++v) {
      xv[v] = load<T>(X + c * ldx + v * L);
      asm volatile("" : "+v"(xv[v]));  // keep it in a register (GCC would reload it per row)
    }
    for (int r = 0; r < RB; ++r) {
      const T w = W[r * ldw + c];
      for (int v = 0; v < NV; ++v) acc[r][v] += w * xv[v];
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < NV; ++v) store<T>(out + r * ldo + v * L, acc[r][v]);
}

template <typename T, int NV>
__attribute__((noinline)) void gemm_strip(const T* W, int64_t ldw, const T* X, int64_t ldx, T* out,
                                          int64_t ldo, int64_t R, int64_t K) {
  int64_t r = 0;
  for (; r + 4 <= R; r += 4) gemm_tile<T, 4, NV>(W + r * ldw, ldw, X, ldx, out + r * ldo, ldo, K);
  for (; r < R; ++r) gemm_tile<T, 1, NV>(W + r * ldw, ldw, X, ldx, out + r * ldo, ldo, K);
}

// out (R x F) = W (R x K) X (K x F), in column strips so a strip of X stays in L1.
template <typename T>
__attribute__((noinline)) void gemm_nn(const T* W, int64_t ldw, const T* X, int64_t ldx, T* out,
                                       int64_t ldo, int64_t R, int64_t K, int64_t F) {
  constexpr int64_t L = Simd<T>::L;
  int64_t f = 0;
  for (; f + 4 * L <= F; f += 4 * L) gemm_strip<T, 4>(W, ldw, X + f, ldx, out + f, ldo, R, K);
  for (; f + 2 * L <= F; f += 2 * L) gemm_strip<T, 2>(W, ldw, X + f, ldx, out + f, ldo, R, K);
  for (; f + L <= F; f += L) gemm_strip<T, 1>(W, ldw, X + f, ldx, out + f, ldo, R, K);
  for (; f < F; ++f)
    for (int64_t r = 0; r < R; ++r) {
      T acc = 0;
      for (int64_t c = 0; c < K; ++c) acc += W[r * ldw + c] * X[c * ldx + f];
      out[r * ldo + f] = acc;
    }
}

// acc[r][c] (vectors of L partial sums) += sum_f A[r][f] B[c][f] for an RB x CB block; the
// lanes are summed once at the end (gemm_nt_finish), not per band.
template <typename T, int RB, int CB>
__attribute__((always_inline)) inline void gemm_nt_block(const T* A, int64_t lda, const T* B,
                                                         int64_t ldb, T* acc_out, int64_t ld_acc,
                                                         int64_t F) {
  using V = typename Simd<T>::v;
  constexpr int64_t L = Simd<T>::L;
  V acc[RB][CB] = {};
  int64_t f = 0;
  for (; f + L <= F; f += L) {
    V b[CB];
    for (int c = 0; c < CB; ++c) {
      b[c] = load<T>(B + c * ldb + f);
      asm volatile("" : "+v"(b[c]));
    }
    for (int r = 0; r < RB; ++r) {
      V a = load<T>(A + r * lda + f);
      asm volatile("" : "+v"(a));
      for (int c = 0; c < CB; ++c) acc[r][c] += a * b[c];
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < CB; ++c) {
      T* dst = acc_out + (r * ld_acc + c) * L;
      for (int64_t ff = f; ff < F; ++ff) acc[r][c][0] += A[r * lda + ff] * B[c * ldb + ff];
      store<T>(dst, load<T>(dst) + acc[r][c]);
    }
}

// acc (R x C vectors of L lanes) += A (R x F) B^T, B being C x F.
template <typename T>
__attribute__((noinline)) void gemm_nt_acc(const T* A, int64_t lda, const T* B, int64_t ldb, T* acc,
                                           int64_t R, int64_t C, int64_t F) {
  constexpr int64_t L = Simd<T>::L;
  int64_t r = 0;
  for (; r + 4 <= R; r += 4) {
    int64_t c = 0;
    for (; c + 4 <= C; c += 4)
      gemm_nt_block<T, 4, 4>(A + r * lda, lda, B + c * ldb, ldb, acc + (r * C + c) * L, C, F);
    for (; c < C; ++c)
      gemm_nt_block<T, 4, 1>(A + r * lda, lda, B + c * ldb, ldb, acc + (r * C + c) * L, C, F);
  }
  for (; r < R; ++r)
    for (int64_t c = 0; c < C; ++c)
      gemm_nt_block<T, 1, 1>(A + r * lda, lda, B + c * ldb, ldb, acc + (r * C + c) * L, C, F);
}

// out (R x C) += the lane sums of acc.
template <typename T>
void gemm_nt_finish(const T* acc, T* out, int64_t n) {
  constexpr int64_t L = Simd<T>::L;
  for (int64_t i = 0; i < n; ++i) {
    T sum = 0;
    for (int64_t v = 0; v < L; ++v) sum += acc[i * L + v];
    out[i] += sum;
  }
}

struct Padded {
  int64_t P, Wp, plane, band, ldm;  // pad, padded row stride, H*Wp, rows per band, band*Wp
};

// Band rows <-> padded band rows (k*k*O planes of hb rows): the GEMMs run on unpadded rows.
template <typename T>
void expand_band(const T* src, T* dst, int64_t planes, int64_t hb, int64_t W, const Padded& d) {
  for (int64_t t = 0; t < planes; ++t)
    for (int64_t h = 0; h < hb; ++h) {
      const T* s = src + (t * hb + h) * W;
      std::copy(s, s + W, dst + t * d.ldm + h * d.Wp + d.P);
    }
}
template <typename T>
void compress_band(const T* src, T* dst, int64_t planes, int64_t hb, int64_t W, const Padded& d) {
  for (int64_t t = 0; t < planes; ++t)
    for (int64_t h = 0; h < hb; ++h) {
      const T* s = src + t * d.ldm + h * d.Wp + d.P;
      std::copy(s, s + W, dst + (t * hb + h) * W);
    }
}

// Forward, horizontal pass over a band of hb image rows starting at row h0. Mb: the GEMM output
// for the band, (k*k*O) x (hb*Wp), computed from the padded image (its pad columns are zero).
// R: per scale k*O planes of (H + 2P) rows (pad rows zero); Rp: the same for the push.
template <typename T>
__attribute__((noinline)) void forward_band(const T* Mb, int64_t ldm, int64_t h0, int64_t hb,
                                            const std::vector<const T*>& A,
                                            const std::vector<int64_t>& S, T* Rp, T* R,
                                            const Geometry& g, const Padded& d) {
  const int64_t m = static_cast<int64_t>(A.size()), k = g.k;
  const int64_t rplane = (g.H + 2 * d.P) * d.Wp, rblock = k * g.O * rplane;
  const int64_t len = hb * d.Wp, lo = d.P, n = len - 2 * d.P;  // taps stay inside the band
  Taps<T> taps;
  for (int64_t a = 0; a < k; ++a)
    for (int64_t o = 0; o < g.O; ++o) {
      const int64_t dst = (a * g.O + o) * rplane + (d.P + h0) * d.Wp + lo;
      taps.clear();
      for (int64_t b = 0; b < k; ++b)
        taps.add(Mb + ((a * k + b) * g.O + o) * ldm + lo + b - g.p, T(1));
      gather(Rp + dst, n, taps);
      for (int64_t i = 0; i < m; ++i) {
        const int64_t q = S[i] / 2;
        taps.clear();
        for (int64_t b = 0; b < k; ++b)
          for (int64_t j = 0; j < S[i]; ++j)
            if (A[i][j * k + b] != T(0))
              taps.add(Mb + ((a * k + b) * g.O + o) * ldm + lo + j - q, A[i][j * k + b]);
        gather(R + i * rblock + dst, n, taps);
      }
    }
}

// Forward, vertical pass, one output row at a time (writes the unpadded outputs P and Q_i).
template <typename T>
__attribute__((noinline)) void forward_vertical(const T* Rp, const T* R,
                                                const std::vector<const T*>& A,
                                                const std::vector<int64_t>& S, T* P,
                                                const std::vector<T*>& Q, const Geometry& g,
                                                const Padded& d) {
  const int64_t m = static_cast<int64_t>(A.size()), k = g.k;
  const int64_t rplane = (g.H + 2 * d.P) * d.Wp, rblock = k * g.O * rplane;
  Taps<T> taps;
  for (int64_t o = 0; o < g.O; ++o) {
    taps.clear();
    for (int64_t a = 0; a < k; ++a)
      taps.add(Rp + (a * g.O + o) * rplane + (d.P - g.p + a) * d.Wp + d.P, T(1));
    for (int64_t y = 0; y < g.H; ++y) gather(P + (o * g.H + y) * g.W, g.W, taps, y * d.Wp);
    for (int64_t i = 0; i < m; ++i) {
      const int64_t q = S[i] / 2;
      taps.clear();
      for (int64_t a = 0; a < k; ++a)
        for (int64_t ii = 0; ii < S[i]; ++ii)
          if (A[i][ii * k + a] != T(0))
            taps.add(R + i * rblock + (a * g.O + o) * rplane + (d.P - q + ii) * d.Wp + d.P,
                     A[i][ii * k + a]);
      for (int64_t y = 0; y < g.H; ++y) gather(Q[i] + (o * g.H + y) * g.W, g.W, taps, y * d.Wp);
    }
  }
}

// Backward, vertical transposes: gR_i[a][o][h] = sum_ii A_i[ii,a] gQ_i[o][h + q - ii], from the
// incoming gradients copied into zero-padded planes of (H + 2P) x Wp (null when absent).
// gR: per scale k*O planes of H x Wp; their pad columns come out zero.
template <typename T>
__attribute__((noinline)) void backward_vertical(const std::vector<const T*>& gQp,
                                                 const std::vector<const T*>& A,
                                                 const std::vector<int64_t>& S, T* gR,
                                                 const Geometry& g, const Padded& d) {
  const int64_t m = static_cast<int64_t>(A.size()), k = g.k;
  const int64_t gplane = (g.H + 2 * d.P) * d.Wp, rblock = k * g.O * d.plane;
  Taps<T> taps;
  for (int64_t i = 0; i < m; ++i) {
    if (gQp[i] == nullptr) continue;
    const int64_t q = S[i] / 2;
    for (int64_t a = 0; a < k; ++a)
      for (int64_t o = 0; o < g.O; ++o) {
        taps.clear();
        for (int64_t ii = 0; ii < S[i]; ++ii)
          if (A[i][ii * k + a] != T(0))
            taps.add(gQp[i] + o * gplane + (d.P + q - ii) * d.Wp, A[i][ii * k + a]);
        gather(gR + i * rblock + (a * g.O + o) * d.plane, d.plane, taps);
      }
  }
}

// Backward, horizontal transposes and the push's transpose for a band of hb rows from h0:
// gMb = dL/dM for the band, (k*k*O) rows of stride ldm.
template <typename T>
__attribute__((noinline)) void backward_band(const T* gPp, const std::vector<const T*>& gQp,
                                             const T* gR, int64_t ldm, int64_t h0, int64_t hb,
                                             const std::vector<const T*>& A,
                                             const std::vector<int64_t>& S, T* gMb,
                                             const Geometry& g, const Padded& d) {
  const int64_t m = static_cast<int64_t>(A.size()), k = g.k;
  const int64_t gplane = (g.H + 2 * d.P) * d.Wp, rblock = k * g.O * d.plane;
  const int64_t len = hb * d.Wp, lo = d.P, n = len - 2 * d.P, base = h0 * d.Wp + lo;
  Taps<T> taps;
  for (int64_t a = 0; a < k; ++a)
    for (int64_t b = 0; b < k; ++b)
      for (int64_t o = 0; o < g.O; ++o) {
        taps.clear();
        if (gPp != nullptr)
          taps.add(gPp + o * gplane + (d.P + g.p - a) * d.Wp + base + g.p - b, T(1));
        for (int64_t i = 0; i < m; ++i) {
          if (gQp[i] == nullptr) continue;
          const int64_t q = S[i] / 2;
          for (int64_t j = 0; j < S[i]; ++j)
            if (A[i][j * k + b] != T(0))
              taps.add(gR + i * rblock + (a * g.O + o) * d.plane + base + q - j, A[i][j * k + b]);
        }
        gather(gMb + ((a * k + b) * g.O + o) * ldm + lo, n, taps);
      }
}

// out = relu(P) - alpha_o * relu(-Q) over one image (O planes of n values); mask records the
// signs the backward pass needs (bit 0: P > 0, bit 1: Q < 0), a byte instead of two floats.
template <typename T>
__attribute__((noinline)) void relu_epilogue(const T* P, const T* Q, const T* alpha, T* out,
                                             uint8_t* mask, int64_t O, int64_t n) {
  for (int64_t o = 0; o < O; ++o) {
    const T a = alpha[o];
    const T* p = P + o * n;
    const T* q = Q + o * n;
    T* r = out + o * n;
    uint8_t* mk = mask + o * n;
    for (int64_t x = 0; x < n; ++x) {
      r[x] = std::max(p[x], T(0)) - a * std::max(-q[x], T(0));
      mk[x] = static_cast<uint8_t>((p[x] > T(0)) | ((q[x] < T(0)) << 1));
    }
  }
}

// Its backward, written into the zero-padded gradient planes of the push and the pull:
// dL/dP = g [P > 0],  dL/dQ = alpha_o g [Q < 0].
template <typename T>
__attribute__((noinline)) void relu_epilogue_backward(const T* grad, const uint8_t* mask,
                                                      const T* alpha, T* gPp, T* gQp,
                                                      const Geometry& g, const Padded& d) {
  const int64_t gplane = (g.H + 2 * d.P) * d.Wp;
  for (int64_t o = 0; o < g.O; ++o) {
    const T a = alpha[o];
    for (int64_t y = 0; y < g.H; ++y) {
      const int64_t src = (o * g.H + y) * g.W, dst = o * gplane + (d.P + y) * d.Wp + d.P;
      for (int64_t x = 0; x < g.W; ++x) {
        const T gv = grad[src + x];
        const uint8_t mk = mask[src + x];
        gPp[dst + x] = (mk & 1) ? gv : T(0);
        gQp[dst + x] = (mk & 2) ? a * gv : T(0);
      }
    }
  }
}

// The fast path: stride 1 and "same" padding (outputs as large as inputs).
bool fast_path(const Geometry& g) { return g.s == 1 && g.p == g.k / 2; }

Padded padding_for(const Geometry& g, const std::vector<at::Tensor>& bases) {
  int64_t P = g.p;
  for (const auto& b : bases) P = std::max(P, b.size(0) / 2);
  const int64_t Wp = g.W + 2 * P;
  // rows per band: the band's GEMM output (k*k*O x band*Wp) should stay in the L2 cache (~96 KB)
  const int64_t band = std::clamp<int64_t>((96 * 1024) / (g.k * g.k * g.O * Wp * 4), 1, g.H);
  return {P, Wp, g.H * Wp, band, band * Wp};
}

// A gradient passed as an empty tensor stands for zeros (that output was not used).
inline bool present(const at::Tensor& t) { return t.defined() && t.numel() > 0; }

Geometry geometry(const at::Tensor& x, const at::Tensor& weight, int64_t stride, int64_t padding) {
  TORCH_CHECK(x.dim() == 4 && weight.dim() == 4, "push-pull kernel: x and weight must be 4-D");
  TORCH_CHECK(weight.size(2) == weight.size(3) && weight.size(2) % 2 == 1,
              "push-pull kernel: square odd kernels only");
  TORCH_CHECK(weight.size(1) == x.size(1), "push-pull kernel: channel mismatch");
  Geometry g;
  g.C = x.size(1);
  g.H = x.size(2);
  g.W = x.size(3);
  g.O = weight.size(0);
  g.k = weight.size(2);
  g.s = stride;
  g.p = padding;
  g.Ho = (g.H + 2 * g.p - g.k) / g.s + 1;
  g.Wo = (g.W + 2 * g.p - g.k) / g.s + 1;
  TORCH_CHECK(g.Ho > 0 && g.Wo > 0, "push-pull kernel: input smaller than the kernel");
  return g;
}

// Per-channel alpha as O contiguous values (a scalar alpha is broadcast).
at::Tensor channel_alpha(const at::Tensor& alpha, const at::Tensor& x, int64_t O) {
  return alpha.detach().to(x.scalar_type()).reshape({-1}).expand({O}).contiguous();
}

// Raw pointers and sizes S_i of the bases (each S_i x k, contiguous, of type T).
template <typename T>
void basis_views(const std::vector<at::Tensor>& bases, std::vector<const T*>& A,
                 std::vector<int64_t>& S) {
  for (const auto& b : bases) {
    A.push_back(b.const_data_ptr<T>());
    S.push_back(b.size(0));
  }
}

// weight (O, C, k, k) -> K' ((k*k*O) x C), row (a*k + b)*O + o.
at::Tensor tap_major(const at::Tensor& weight) {
  return weight.permute({2, 3, 0, 1}).reshape({-1, weight.size(1)}).contiguous();
}

// What forward and backward both derive from their arguments.
struct Call {
  at::Tensor x, weight, kp;  // detached (worker threads run with grad mode on), contiguous
  std::vector<at::Tensor> bases;
  Geometry g;
  Padded d;
  bool fast;
  int64_t N, m, kk;
};

Call prepare(const at::Tensor& x_in, const at::Tensor& weight_in, std::vector<at::Tensor> bases,
             int64_t stride, int64_t padding) {
  Call c;
  c.x = x_in.detach().contiguous();
  c.weight = weight_in.detach().to(c.x.scalar_type()).contiguous();
  c.g = geometry(c.x, c.weight, stride, padding);
  c.kp = tap_major(c.weight);
  for (auto& b : bases) b = b.detach().to(c.x.scalar_type()).contiguous();
  c.bases = std::move(bases);
  c.fast = fast_path(c.g);
  c.d = padding_for(c.g, c.bases);
  c.N = c.x.size(0);
  c.m = static_cast<int64_t>(c.bases.size());
  c.kk = c.g.k * c.g.k;
  return c;
}

// Returns [P, Q_1, ..., Q_m]; with relu_alpha (fast path, one scale) [out, mask] (plus Q when
// keep_pull) where out = relu(P) - alpha * relu(-Q) is the rectified push-pull output
// (Strisciuglio 2020) and mask the uint8 sign mask for the backward pass.
std::vector<at::Tensor> pp_forward(const at::Tensor& x_in, const at::Tensor& weight_in,
                                   std::vector<at::Tensor> bases_in, int64_t stride,
                                   int64_t padding, const std::optional<at::Tensor>& relu_alpha,
                                   bool keep_pull) {
  at::NoGradGuard no_grad;  // autograd is handled in Python (fused.py)
  const Call c = prepare(x_in, weight_in, std::move(bases_in), stride, padding);
  const at::Tensor &x = c.x, &kp = c.kp;
  const std::vector<at::Tensor>& bases = c.bases;
  const Geometry& g = c.g;
  const Padded& d = c.d;
  const bool fast = c.fast;
  const int64_t N = c.N, m = c.m, kk = c.kk;
  const bool relu = relu_alpha.has_value();
  std::vector<at::Tensor> outs;
  at::Tensor alpha;
  if (relu) {
    TORCH_CHECK(fast && m == 1, "push-pull kernel: relu epilogue needs stride 1, same padding");
    alpha = channel_alpha(*relu_alpha, x, g.O);
    outs.push_back(at::empty({N, g.O, g.Ho, g.Wo}, x.options()));
    outs.push_back(at::empty({N, g.O, g.Ho, g.Wo}, x.options().dtype(at::kByte)));
    if (keep_pull) outs.push_back(at::empty({N, g.O, g.Ho, g.Wo}, x.options()));
  } else {
    for (int64_t i = 0; i <= m; ++i) outs.push_back(at::empty({N, g.O, g.Ho, g.Wo}, x.options()));
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pushpull_forward", [&] {
    std::vector<const scalar_t*> A;
    std::vector<int64_t> S;
    basis_views(bases, A, S);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      const int64_t rplane = (g.H + 2 * d.P) * d.Wp;
      // scratch, allocated once per task; the zero borders are never written
      // M: the GEMM output (unpadded rows); Mp: its band with padded rows (pad columns zero)
      at::Tensor M = at::empty({kk * g.O, fast ? d.band * g.W : g.H * g.W}, x.options());
      at::Tensor Mp = at::zeros({fast ? kk * g.O * d.ldm : 0}, x.options());
      at::Tensor R = at::zeros({std::max<int64_t>(m, 1) * g.k * g.O * (fast ? rplane : g.H * g.Wo)},
                               x.options());
      at::Tensor Rp = at::zeros({fast ? g.k * g.O * rplane : 0}, x.options());
      // with the ReLU epilogue, P and Q live in per-task scratch (Q in the output if kept)
      at::Tensor scratch = relu ? at::empty({2, g.O * g.Ho * g.Wo}, x.options()) : at::Tensor();
      for (int64_t n = begin; n < end; ++n) {
        scalar_t* pp;
        std::vector<scalar_t*> qs;
        if (relu) {
          pp = scratch[0].mutable_data_ptr<scalar_t>();
          qs.push_back(keep_pull ? outs[2][n].mutable_data_ptr<scalar_t>()
                                 : scratch[1].mutable_data_ptr<scalar_t>());
        } else {
          pp = outs[0][n].mutable_data_ptr<scalar_t>();
          for (int64_t i = 0; i < m; ++i) qs.push_back(outs[i + 1][n].mutable_data_ptr<scalar_t>());
        }
        if (fast) {
          const scalar_t* xn = x[n].const_data_ptr<scalar_t>();
          for (int64_t h0 = 0; h0 < g.H; h0 += d.band) {
            const int64_t hb = std::min(d.band, g.H - h0), len = hb * g.W;
            scalar_t* mb = M.mutable_data_ptr<scalar_t>();
            gemm_nn(kp.const_data_ptr<scalar_t>(), g.C, xn + h0 * g.W, g.H * g.W, mb, len, kk * g.O,
                    g.C, len);
            expand_band(mb, Mp.mutable_data_ptr<scalar_t>(), kk * g.O, hb, g.W, d);
            forward_band<scalar_t>(Mp.const_data_ptr<scalar_t>(), d.ldm, h0, hb, A, S,
                                   Rp.mutable_data_ptr<scalar_t>(), R.mutable_data_ptr<scalar_t>(),
                                   g, d);
          }
          forward_vertical(Rp.const_data_ptr<scalar_t>(), R.const_data_ptr<scalar_t>(), A, S, pp,
                           qs, g, d);
          if (relu)
            relu_epilogue(pp, qs[0], alpha.const_data_ptr<scalar_t>(),
                          outs[0][n].mutable_data_ptr<scalar_t>(),
                          outs[1][n].mutable_data_ptr<uint8_t>(), g.O, g.H * g.W);
        } else {
          at::mm_out(M, kp, x[n].view({g.C, g.H * g.W}));
          const scalar_t* mp = M.const_data_ptr<scalar_t>();
          push_forward_generic(mp, pp, g);
          for (int64_t i = 0; i < m; ++i)
            pull_forward_generic(mp, A[i], S[i], R.mutable_data_ptr<scalar_t>(), qs[i], g);
        }
      }
    });
  });
  return outs;
}

// grads: [dL/dP, dL/dQ_1, ...] (empty tensors count as zero). Returns (dL/dx, dL/dweight).
// With relu_alpha: grads = [dL/dout] and saved = [mask] from the forward pass.
std::vector<at::Tensor> pp_backward(std::vector<at::Tensor> grads, const at::Tensor& x_in,
                                    const at::Tensor& weight_in, std::vector<at::Tensor> bases_in,
                                    int64_t stride, int64_t padding, bool need_x, bool need_w,
                                    std::vector<at::Tensor> saved,
                                    const std::optional<at::Tensor>& relu_alpha) {
  at::NoGradGuard no_grad;
  const Call c = prepare(x_in, weight_in, std::move(bases_in), stride, padding);
  const at::Tensor& x = c.x;
  const std::vector<at::Tensor>& bases = c.bases;
  const Geometry& g = c.g;
  const Padded& d = c.d;
  const bool fast = c.fast;
  const int64_t N = c.N, m = c.m, kk = c.kk;
  const bool relu = relu_alpha.has_value();
  TORCH_CHECK(static_cast<int64_t>(grads.size()) == (relu ? 1 : m + 1),
              "push-pull kernel: wrong grad count");
  for (auto& gr : grads)
    if (present(gr)) gr = gr.detach().to(x.scalar_type()).contiguous();
  const at::Tensor kpt = c.kp.t().contiguous();
  at::Tensor gx = need_x ? at::empty_like(x) : at::Tensor();
  at::Tensor gk_parts =
      need_w ? at::zeros({at::get_num_threads(), kk * g.O, g.C}, x.options()) : at::Tensor();
  at::Tensor alpha;
  if (relu) {
    TORCH_CHECK(fast && m == 1 && saved.size() == 1, "push-pull kernel: bad relu backward call");
    alpha = channel_alpha(*relu_alpha, x, g.O);
    for (auto& t : saved) t = t.detach().contiguous();
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pushpull_backward", [&] {
    std::vector<const scalar_t*> A;
    std::vector<int64_t> S;
    basis_views(bases, A, S);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      // gM: dL/dM (unpadded rows; the whole image on the generic path, a band on the fast one);
      // gMp: the band with padded rows as backward_band writes it
      at::Tensor gM = at::zeros({kk * g.O, (fast ? d.band : g.H) * g.W}, x.options());
      at::Tensor gMp = at::zeros({fast ? kk * g.O * d.ldm : 0}, x.options());
      at::Tensor gR = at::zeros(
          {std::max<int64_t>(m, 1) * g.k * g.O * (fast ? d.plane : g.H * g.Wo)}, x.options());
      // zero-padded copies of the incoming gradients (fast path)
      std::vector<at::Tensor> gpad;
      if (fast)
        for (int64_t i = 0; i <= m; ++i)
          gpad.push_back(relu || present(grads[i])
                             ? at::zeros({g.O, g.H + 2 * d.P, d.Wp}, x.options())
                             : at::Tensor());
      at::Tensor gk_local, gk_lanes;
      if (need_w) gk_local = gk_parts[at::get_thread_num()];
      if (need_w && fast) gk_lanes = at::zeros({kk * g.O * g.C * Simd<scalar_t>::L}, x.options());
      for (int64_t n = begin; n < end; ++n) {
        scalar_t* gmp = gM.mutable_data_ptr<scalar_t>();
        if (fast) {
          std::vector<const scalar_t*> gq(m, nullptr);
          const scalar_t* gp = nullptr;
          if (relu) {
            relu_epilogue_backward(
                grads[0][n].const_data_ptr<scalar_t>(), saved[0][n].const_data_ptr<uint8_t>(),
                alpha.const_data_ptr<scalar_t>(), gpad[0].mutable_data_ptr<scalar_t>(),
                gpad[1].mutable_data_ptr<scalar_t>(), g, d);
            gp = gpad[0].const_data_ptr<scalar_t>();
            gq[0] = gpad[1].const_data_ptr<scalar_t>();
          } else {
            for (int64_t i = 0; i <= m; ++i) {
              if (!present(grads[i])) continue;
              gpad[i].narrow(1, d.P, g.H).narrow(2, d.P, g.W).copy_(grads[i][n]);
              (i == 0 ? gp : gq[i - 1]) = gpad[i].const_data_ptr<scalar_t>();
            }
          }
          backward_vertical(gq, A, S, gR.mutable_data_ptr<scalar_t>(), g, d);
          const scalar_t* xn = x[n].const_data_ptr<scalar_t>();
          for (int64_t h0 = 0; h0 < g.H; h0 += d.band) {
            const int64_t hb = std::min(d.band, g.H - h0), len = hb * g.W;
            backward_band(gp, gq, gR.const_data_ptr<scalar_t>(), d.ldm, h0, hb, A, S,
                          gMp.mutable_data_ptr<scalar_t>(), g, d);
            compress_band(gMp.const_data_ptr<scalar_t>(), gmp, kk * g.O, hb, g.W, d);
            if (need_x)
              gemm_nn(kpt.const_data_ptr<scalar_t>(), kk * g.O, gmp, len,
                      gx[n].mutable_data_ptr<scalar_t>() + h0 * g.W, g.H * g.W, g.C, kk * g.O, len);
            if (need_w)
              gemm_nt_acc(gmp, len, xn + h0 * g.W, g.H * g.W, gk_lanes.mutable_data_ptr<scalar_t>(),
                          kk * g.O, g.C, len);
          }
        } else {
          gM.zero_();
          if (present(grads[0]))
            push_backward_generic(grads[0][n].const_data_ptr<scalar_t>(), gmp, g);
          for (int64_t i = 0; i < m; ++i)
            if (present(grads[i + 1]))
              pull_backward_generic(grads[i + 1][n].const_data_ptr<scalar_t>(), A[i], S[i],
                                    gR.mutable_data_ptr<scalar_t>(), gmp, g);
          const at::Tensor xn = x[n].view({g.C, g.H * g.W});
          if (need_x) {
            at::Tensor gxn = gx[n].view({g.C, g.H * g.W});
            at::mm_out(gxn, kpt, gM);
          }
          if (need_w) gk_local.addmm_(gM, xn.t());
        }
      }
      if (need_w && fast)
        gemm_nt_finish(gk_lanes.const_data_ptr<scalar_t>(), gk_local.mutable_data_ptr<scalar_t>(),
                       kk * g.O * g.C);
    });
  });
  at::Tensor gw;
  if (need_w) gw = gk_parts.sum(0).view({g.k, g.k, g.O, g.C}).permute({2, 3, 0, 1}).contiguous();
  return {gx, gw};
}

}  // namespace

TORCH_LIBRARY(robustcli_pushpull, m) {
  m.def("forward", &pp_forward);
  m.def("backward", &pp_backward);
}
