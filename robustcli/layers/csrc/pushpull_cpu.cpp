// Fused CPU kernel for push-pull responses (see robustcli/layers/fused.py for the maths).
//
// For push weights K (O x C x k x k) and pull bases A_i (S_i x k, the bilinear resize matrices):
//   M    = X K'                  one GEMM; per pixel, M[ab][o] = sum_c X[c] K[o, c, a, b]
//   P    = sum_ab shift_ab(M_ab)                         the push X * K (a fixed k x k stencil)
//   Q_i  = sum_ab (A_i[:,a] A_i[:,b]^T) (*) M_ab          the pull X * up_i(K), separable stencils
// The backward pass applies the transposed stencils to the incoming gradients (giving dL/dM),
// then dL/dX = dL/dM K'^T and dL/dK' = sum X^T dL/dM: two more GEMMs. In total the GEMM work
// equals one plain k x k convolution (forward + backward), for the push and all pulls together.
//
// Fast path (stride 1, same padding): channels_last data, one image per task and one image row at
// a time, output channels in SIMD lanes. Other geometries: a generic NCHW path with library GEMMs.
// The fast path's GEMMs are register-tiled microkernels sized to the target's vector registers
// (e.g. 6 rows x 2 ymm with AVX2, 9 rows x 3 zmm with AVX-512), called per image row so that
// their operands stay in L1 (on a loaded AVX2 host these tiles matched or beat torch.bmm, i.e.
// MKL, on the layers' GEMM shapes with 16-64 channels).
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

// ---- Fast path (stride 1, "same" padding) on channels_last data. ----
// Each image is processed one row at a time with the output channels in SIMD lanes: O is padded
// to Op, a multiple of the vector length L (the pad lanes carry zero weights, compute zeros and
// are never stored). Per image, with R = max(p, S_i / 2) the widest stencil reach:
//   X      H x W x C                    the input (channels_last)
//   Mrow   (W + 2R) x kk x Op           one row of M, R zero columns each side
//   Hr_j   (H + 2R) x W x k x Op        horizontal pass of response j (push, pull scales)
//   G_j    (H + 2R) x (W + 2R) x Op     backward: zero-bordered incoming gradients
//   U_j    (W + 2R) x k x Op            backward: vertical transposes of one row
//   dMrow  W x kk x Op                  backward: dL/dM for one row

// SIMD helpers on GCC/Clang vector extensions, one native register wide (the -march=native
// build sees the target). Wider vector types are not an option: GCC lowers a 64-byte vector on an
// AVX2 machine through the stack (an A/B on a loaded AVX2 host: the kernel with 64-byte vectors
// took 8-16x the time of this one). kRegs, the number of vector registers, sizes the GEMM's
// register tiles.
#if defined(__AVX512F__)
constexpr int kRegBytes = 64, kRegs = 32;
#elif defined(__AVX__)
constexpr int kRegBytes = 32, kRegs = 16;
#elif defined(__aarch64__)
constexpr int kRegBytes = 16, kRegs = 32;
#else
constexpr int kRegBytes = 16, kRegs = 16;
#endif
template <typename T>
struct Simd {
  typedef T v __attribute__((vector_size(kRegBytes)));
  static constexpr int64_t L = kRegBytes / sizeof(T);
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

// Weighted taps of a stencil: out[x] = sum_t w_t * src_t[x * stride].
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

// P output positions of one vector: out[x * os ...] (+)= sum_t w_t * src_t[base + x * ss ...].
template <typename T, int P, bool ACC>
__attribute__((always_inline)) inline void stencil_block(T* __restrict out, int64_t os,
                                                         int64_t ss, int64_t base, int64_t nt,
                                                         const T* const* src, const T* w) {
  using Vec = typename Simd<T>::v;
  Vec acc[P] = {};
  for (int64_t t = 0; t < nt; ++t) {
    const T* sp = src[t] + base;
    for (int i = 0; i < P; ++i) acc[i] += w[t] * load<T>(sp + i * ss);
  }
  for (int i = 0; i < P; ++i) store<T>(out + i * os, ACC ? load<T>(out + i * os) + acc[i] : acc[i]);
}

// out[x * os + v*L ...] (+)= sum_t w_t * src_t[x * ss + v*L ...] for x < n and V vectors, eight
// positions at a time: independent accumulators hide the FMA latency (two FMA pipes of latency
// four need eight).
template <typename T, bool ACC>
__attribute__((noinline)) void stencil(T* __restrict out, int64_t os, int64_t ss, int64_t n,
                                       int64_t V, const Taps<T>& taps) {
  constexpr int64_t L = Simd<T>::L;
  const int64_t nt = static_cast<int64_t>(taps.src.size());
  const T* const* src = taps.src.data();
  const T* w = taps.w.data();
  for (int64_t v = 0; v < V; ++v) {
    int64_t x = 0;
    for (; x + 8 <= n; x += 8)
      stencil_block<T, 8, ACC>(out + x * os + v * L, os, ss, x * ss + v * L, nt, src, w);
    for (; x + 4 <= n; x += 4)
      stencil_block<T, 4, ACC>(out + x * os + v * L, os, ss, x * ss + v * L, nt, src, w);
    for (; x < n; ++x)
      stencil_block<T, 1, ACC>(out + x * os + v * L, os, ss, x * ss + v * L, nt, src, w);
  }
}

// ---- Small dense products (the channel GEMMs) ----
// Tile shape: NV native vectors of columns (at most 4 with 32 registers, 2 with 16) by NP rows,
// with NP*NV accumulators + NV vectors of B + 1 broadcast of A within the registers.
constexpr int gemm_max_nv() { return kRegs >= 32 ? 4 : 2; }
constexpr int gemm_rows(int nv) {
  const int r = (kRegs - 1 - nv) / nv;
  return r > 12 ? 12 : r;
}

// One register tile, NP rows x NV native vectors:
// out[r][0 .. NV*L) (+)= sum_k A[r*ars + k*aks] B[k][0 .. NV*L)
template <typename T, int NP, int NV, bool ACC>
__attribute__((always_inline)) inline void gemm_tile(const T* A, int64_t ars, int64_t aks,
                                                     const T* B, int64_t ldb, T* out, int64_t ldo,
                                                     int64_t K) {
  using Vec = typename Simd<T>::v;
  constexpr int64_t L = Simd<T>::L;
  Vec acc[NP][NV] = {};
  for (int64_t k = 0; k < K; ++k) {
    Vec b[NV];
    for (int v = 0; v < NV; ++v) {
      b[v] = load<T>(B + k * ldb + v * L);
#if defined(__x86_64__)
      asm volatile("" : "+v"(b[v]));  // keep it in a register (GCC would reload it per row)
#elif defined(__aarch64__)
      asm volatile("" : "+w"(b[v]));
#endif
    }
    for (int r = 0; r < NP; ++r) {
      const T a = A[r * ars + k * aks];
      for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < NP; ++r)
    for (int v = 0; v < NV; ++v) {
      T* op = out + r * ldo + v * L;
      store<T>(op, ACC ? load<T>(op) + acc[r][v] : acc[r][v]);
    }
}

// The last rows % NP rows, as one tile of exactly that many rows.
template <typename T, int NP, int NV, bool ACC>
__attribute__((always_inline)) inline void gemm_tail(int64_t rows, const T* A, int64_t ars,
                                                     int64_t aks, const T* B, int64_t ldb, T* out,
                                                     int64_t ldo, int64_t K) {
  if constexpr (NP > 0) {
    if (rows == NP) return gemm_tile<T, NP, NV, ACC>(A, ars, aks, B, ldb, out, ldo, K);
    gemm_tail<T, NP - 1, NV, ACC>(rows, A, ars, aks, B, ldb, out, ldo, K);
  }
}

template <typename T, int NV, bool ACC>
__attribute__((noinline)) void gemm_cols(const T* A, int64_t ars, int64_t aks, const T* B,
                                         int64_t ldb, T* out, int64_t ldo, int64_t rows,
                                         int64_t K) {
  constexpr int NP = gemm_rows(NV);
  int64_t r = 0;
  for (; r + NP <= rows; r += NP)
    gemm_tile<T, NP, NV, ACC>(A + r * ars, ars, aks, B, ldb, out + r * ldo, ldo, K);
  gemm_tail<T, NP - 1, NV, ACC>(rows - r, A + r * ars, ars, aks, B, ldb, out + r * ldo, ldo, K);
}

// out (rows x ncol*L) (+)= A (rows x K, element (r, k) at A[r*ars + k*aks]) B (K x ncol*L). The
// columns go in chunks of at most gemm_max_nv() vectors, of balanced widths; each chunk sweeps
// all rows with B's chunk (K x chunk) staying in L1.
template <typename T, bool ACC>
void gemm(const T* A, int64_t ars, int64_t aks, const T* B, int64_t ldb, T* out, int64_t ldo,
          int64_t rows, int64_t K, int64_t ncol) {
  constexpr int64_t L = Simd<T>::L, maxnv = gemm_max_nv();
  const int64_t n = ncol, chunks = (n + maxnv - 1) / maxnv, width = (n + chunks - 1) / chunks;
  for (int64_t c0 = 0; c0 < n; c0 += width) {
    const int64_t nv = std::min(width, n - c0);
    const T* b = B + c0 * L;
    T* o = out + c0 * L;
    if constexpr (maxnv >= 4) {
      if (nv == 4) gemm_cols<T, 4, ACC>(A, ars, aks, b, ldb, o, ldo, rows, K);
      if (nv == 3) gemm_cols<T, 3, ACC>(A, ars, aks, b, ldb, o, ldo, rows, K);
    }
    if (nv == 2) gemm_cols<T, 2, ACC>(A, ars, aks, b, ldb, o, ldo, rows, K);
    if (nv == 1) gemm_cols<T, 1, ACC>(A, ars, aks, b, ldb, o, ldo, rows, K);
  }
}

template <typename T>
inline typename Simd<T>::v load_n(const T* p, int64_t n) {
  typename Simd<T>::v r = {};
  std::memcpy(&r, p, n * sizeof(T));
  return r;
}
template <typename T>
inline void store_n(T* p, typename Simd<T>::v v, int64_t n) {
  std::memcpy(p, &v, n * sizeof(T));
}

// dst[x*ds .. x*ds + n) = src[x*ss .. x*ss + n) for x < count: n values per pixel between two
// pixel layouts (the kernel's padded lanes and a tensor's channels).
template <typename T>
inline void copy_pixels(T* __restrict dst, int64_t ds, const T* __restrict src, int64_t ss,
                        int64_t count, int64_t n) {
  // a plain loop, not memcpy: a library call per pixel for a few dozen values cost ~6% (perf)
  for (int64_t x = 0; x < count; ++x)
    for (int64_t c = 0; c < n; ++c) dst[x * ds + c] = src[x * ss + c];
}

struct Fast {
  int64_t R, Op, Cp, Wr;  // halo, O and C padded to the vector length, row length W + 2R
};

// Forward for one image (xn: H x W x C). For every output row y, emit(y, rows) receives the
// push (rows[0 .. W*Op)) and pull responses (the next W*Op blocks), W x Op each.
// Mrow: (W + 2R) x kk x Op with zero pad columns; Hr: (1 + m) x (H + 2R) x W x k x Op with zero
// pad rows; rows: (1 + m) x W x Op.
template <typename T, typename Emit>
void forward_image(const T* xn, const T* KT, const std::vector<const T*>& A,
                   const std::vector<int64_t>& S, T* Mrow, T* Hr, T* rows, const Geometry& g,
                   const Fast& f, Emit&& emit) {
  constexpr int64_t L = Simd<T>::L;
  const int64_t k = g.k, m = static_cast<int64_t>(A.size()), V = f.Op / L, p = g.p;
  const int64_t ms = k * k * f.Op, hs = k * f.Op, hrow = g.W * hs;
  const int64_t hplane = (g.H + 2 * f.R) * hrow;
  Taps<T> taps;
  // horizontal passes, one input row at a time: M row = X row K'^T, then the stencils
  for (int64_t y = 0; y < g.H; ++y) {
    gemm<T, false>(xn + y * g.W * g.C, g.C, 1, KT, ms, Mrow + f.R * ms, ms, g.W, g.C, ms / L);
    T* out = Hr + (f.R + y) * hrow;
    for (int64_t a = 0; a < k; ++a) {
      taps.clear();
      for (int64_t b = 0; b < k; ++b)
        taps.add(Mrow + (f.R + b - p) * ms + (a * k + b) * f.Op, T(1));
      stencil<T, false>(out + a * f.Op, hs, ms, g.W, V, taps);
      for (int64_t i = 0; i < m; ++i) {
        const int64_t q = S[i] / 2;
        taps.clear();
        for (int64_t b = 0; b < k; ++b)
          for (int64_t j = 0; j < S[i]; ++j)
            if (A[i][j * k + b] != T(0))
              taps.add(Mrow + (f.R + j - q) * ms + (a * k + b) * f.Op, A[i][j * k + b]);
        stencil<T, false>(out + (i + 1) * hplane + a * f.Op, hs, ms, g.W, V, taps);
      }
    }
  }
  // vertical passes, one output row at a time
  for (int64_t y = 0; y < g.H; ++y) {
    taps.clear();
    for (int64_t a = 0; a < k; ++a) taps.add(Hr + (f.R + y + a - p) * hrow + a * f.Op, T(1));
    stencil<T, false>(rows, f.Op, hs, g.W, V, taps);
    for (int64_t i = 0; i < m; ++i) {
      const int64_t q = S[i] / 2;
      taps.clear();
      for (int64_t a = 0; a < k; ++a)
        for (int64_t ii = 0; ii < S[i]; ++ii)
          if (A[i][ii * k + a] != T(0))
            taps.add(Hr + (i + 1) * hplane + (f.R + y + ii - q) * hrow + a * f.Op,
                     A[i][ii * k + a]);
      stencil<T, false>(rows + (i + 1) * g.W * f.Op, f.Op, hs, g.W, V, taps);
    }
    emit(y, rows);
  }
}

// Backward for one image. G: (1 + m) zero-bordered incoming gradients, (H + 2R) x (W + 2R) x Op
// each (G[j] null: no gradient for response j); U: m x (W + 2R) x k x Op with zero pad columns;
// dMrow: W x kk x Op. Per row: dL/dM row, then gx row (W x Cp, written to gxrow(y), then done(y))
// = dM row K' and gk (C x kk*Op) += X row^T dM row.
template <typename T, typename GxRow, typename Done>
void backward_image(const T* xn, const T* Kp, const std::vector<const T*>& G,
                    const std::vector<const T*>& A, const std::vector<int64_t>& S, T* U, T* dMrow,
                    T* gk, const Geometry& g, const Fast& f, GxRow&& gxrow, Done&& done) {
  constexpr int64_t L = Simd<T>::L;
  const int64_t k = g.k, m = static_cast<int64_t>(A.size()), V = f.Op / L, p = g.p;
  const int64_t ms = k * k * f.Op, us = k * f.Op, uplane = f.Wr * us, grow = f.Wr * f.Op;
  Taps<T> taps;
  for (int64_t y = 0; y < g.H; ++y) {
    // vertical transposes: U_i[x][a] = sum_ii A_i[ii, a] G_i[y - ii + q][x]
    for (int64_t i = 0; i < m; ++i) {
      if (G[i + 1] == nullptr) continue;
      const int64_t q = S[i] / 2;
      for (int64_t a = 0; a < k; ++a) {
        taps.clear();
        for (int64_t ii = 0; ii < S[i]; ++ii)
          if (A[i][ii * k + a] != T(0))
            taps.add(G[i + 1] + (f.R + y - ii + q) * grow + f.R * f.Op, A[i][ii * k + a]);
        stencil<T, false>(U + i * uplane + f.R * us + a * f.Op, us, f.Op, g.W, V, taps);
      }
    }
    // horizontal transposes: dM[x][ab] = G_0[y - a + p][x - b + p]
    //                                   + sum_i sum_j A_i[j, b] U_i[x - j + q][a]
    for (int64_t a = 0; a < k; ++a)
      for (int64_t b = 0; b < k; ++b) {
        T* out = dMrow + (a * k + b) * f.Op;
        taps.clear();
        if (G[0] != nullptr) taps.add(G[0] + (f.R + y - a + p) * grow + (f.R + p - b) * f.Op, T(1));
        stencil<T, false>(out, ms, f.Op, g.W, V, taps);
        taps.clear();
        for (int64_t i = 0; i < m; ++i) {
          if (G[i + 1] == nullptr) continue;
          const int64_t q = S[i] / 2;
          for (int64_t j = 0; j < S[i]; ++j)
            if (A[i][j * k + b] != T(0))
              taps.add(U + i * uplane + (f.R + q - j) * us + a * f.Op, A[i][j * k + b]);
        }
        if (!taps.src.empty()) stencil<T, true>(out, ms, us, g.W, V, taps);
      }
    if (T* gx = gxrow(y)) {
      gemm<T, false>(dMrow, ms, 1, Kp, f.Cp, gx, f.Cp, g.W, ms, f.Cp / L);
      done(y);
    }
    if (gk != nullptr)  // rows c of X^T: element (c, x) at xn[(y*W + x)*C + c]
      gemm<T, true>(xn + y * g.W * g.C, 1, g.C, dMrow, ms, gk, ms, g.C, g.W, ms / L);
  }
}

// out = relu(P) - alpha_o * relu(-Q) for one row (O valid lanes of Op per pixel), and the sign
// mask the backward pass needs (bit 0: P > 0, bit 1: Q < 0), one byte per value.
template <typename T>
void relu_row(const T* P, const T* Q, const T* alpha, T* out, uint8_t* mask, int64_t W, int64_t O,
              int64_t Op) {
  using Vec = typename Simd<T>::v;
  constexpr int64_t L = Simd<T>::L;
  typedef uint8_t Bytes __attribute__((vector_size(L)));
  const Vec zero = {};
  for (int64_t x = 0; x < W; ++x)
    for (int64_t v = 0; v * L < O; ++v) {
      const int64_t n = std::min<int64_t>(L, O - v * L), at = x * Op + v * L, to = x * O + v * L;
      const Vec pv = load<T>(P + at), qv = load<T>(Q + at);
      const Vec r = (pv > zero ? pv : zero) - load<T>(alpha + v * L) * (qv < zero ? -qv : zero);
      const auto bits = ((pv > zero) & 1) | ((qv < zero) & 2);
      const Bytes b = __builtin_convertvector(bits, Bytes);
      if (n == L) {  // full vectors as fixed-size moves (a variable-length copy is a slow loop)
        store<T>(out + to, r);
        std::memcpy(mask + to, &b, L);
      } else {
        store_n<T>(out + to, r, n);
        std::memcpy(mask + to, &b, n);
      }
    }
}

// Its backward into the zero-bordered gradient rows: G_0 = g [P > 0], G_1 = alpha_o g [Q < 0].
template <typename T>
void relu_row_backward(const T* grad, const uint8_t* mask, const T* alpha, T* G0, T* G1, int64_t W,
                       int64_t O, int64_t Op) {
  using Vec = typename Simd<T>::v;
  constexpr int64_t L = Simd<T>::L;
  typedef uint8_t Bytes __attribute__((vector_size(L)));
  using Ints = decltype(Vec{} > Vec{});
  const Vec zero = {};
  for (int64_t x = 0; x < W; ++x)
    for (int64_t v = 0; v * L < O; ++v) {
      const int64_t n = std::min<int64_t>(L, O - v * L), at = x * Op + v * L, from = x * O + v * L;
      Vec gv;
      Bytes b = {};
      if (n == L) {  // full vectors as fixed-size moves (as in relu_row)
        gv = load<T>(grad + from);
        std::memcpy(&b, mask + from, L);
      } else {
        gv = load_n<T>(grad + from, n);
        std::memcpy(&b, mask + from, n);
      }
      const Ints bits = __builtin_convertvector(b, Ints);
      store<T>(G0 + at, (bits & 1) != 0 ? gv : zero);
      store<T>(G1 + at, (bits & 2) != 0 ? load<T>(alpha + v * L) * gv : zero);
    }
}

// The fast path: stride 1 and "same" padding (outputs as large as inputs).
bool fast_path(const Geometry& g) { return g.s == 1 && g.p == g.k / 2; }

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

// Raw pointers and sizes S_i of the bases (each S_i x k, contiguous, of type T).
template <typename T>
void basis_views(const std::vector<at::Tensor>& bases, std::vector<const T*>& A,
                 std::vector<int64_t>& S) {
  for (const auto& b : bases) {
    A.push_back(b.const_data_ptr<T>());
    S.push_back(b.size(0));
  }
}

// What forward and backward both derive from their arguments.
struct Call {
  at::Tensor x;   // detached (worker threads run with grad mode on); NHWC on the fast path
  at::Tensor kp;  // generic: K' (kk*O x C), row (a*k + b)*O + o; fast: K' padded (kk*Op x Cp)
  at::Tensor kt;  // fast path: K'^T padded, C x (kk*Op)
  std::vector<at::Tensor> bases;
  Geometry g;
  Fast f;
  bool fast;
  int64_t N, m, kk;
  at::TensorOptions out_options() const {
    return x.options().memory_format(fast ? at::MemoryFormat::ChannelsLast
                                          : at::MemoryFormat::Contiguous);
  }
};

Call prepare(const at::Tensor& x_in, const at::Tensor& weight_in, std::vector<at::Tensor> bases,
             int64_t stride, int64_t padding) {
  Call c;
  const at::Tensor weight = weight_in.detach().to(x_in.scalar_type());
  c.g = geometry(x_in, weight, stride, padding);
  c.fast = fast_path(c.g);
  c.x = x_in.detach().contiguous(c.fast ? at::MemoryFormat::ChannelsLast
                                        : at::MemoryFormat::Contiguous);
  for (auto& b : bases) b = b.detach().to(c.x.scalar_type()).contiguous();
  c.bases = std::move(bases);
  c.N = c.x.size(0);
  c.m = static_cast<int64_t>(c.bases.size());
  c.kk = c.g.k * c.g.k;
  const int64_t L = c.x.element_size() == 4 ? Simd<float>::L : Simd<double>::L;
  int64_t R = c.g.p;
  for (const auto& b : c.bases) R = std::max(R, b.size(0) / 2);
  c.f = {R, (c.g.O + L - 1) / L * L, (c.g.C + L - 1) / L * L, c.g.W + 2 * R};
  const at::Tensor taps = weight.permute({2, 3, 0, 1});  // k x k x O x C
  if (c.fast) {
    const int64_t po = c.f.Op - c.g.O, pc = c.f.Cp - c.g.C;
    c.kp = at::constant_pad_nd(taps, {0, pc, 0, po}).reshape({c.kk * c.f.Op, c.f.Cp}).contiguous();
    c.kt = at::constant_pad_nd(weight.permute({1, 2, 3, 0}), {0, po})
               .reshape({c.g.C, c.kk * c.f.Op})
               .contiguous();
  } else {
    c.kp = taps.reshape({-1, c.g.C}).contiguous();
  }
  return c;
}

// Per-channel alpha as n values (a scalar alpha is broadcast; zero beyond O).
at::Tensor channel_alpha(const at::Tensor& alpha, const at::Tensor& x, int64_t O, int64_t n) {
  const at::Tensor a = alpha.detach().to(x.scalar_type()).reshape({-1}).expand({O});
  return at::constant_pad_nd(a, {0, n - O}).contiguous();
}

// Returns [R] with R = [P, Q_1, ..., Q_m] packed along the channels (N x (1+m)O x Ho x Wo;
// channels_last on the fast path, contiguous otherwise). With relu_alpha (fast path, one scale):
// [out, mask] (plus Q when keep_pull), out = relu(P) - alpha * relu(-Q) the rectified push-pull
// output (Strisciuglio 2020) and mask the uint8 sign mask for the backward pass.
std::vector<at::Tensor> pp_forward(const at::Tensor& x_in, const at::Tensor& weight_in,
                                   std::vector<at::Tensor> bases_in, int64_t stride,
                                   int64_t padding, const std::optional<at::Tensor>& relu_alpha,
                                   bool keep_pull) {
  at::NoGradGuard no_grad;  // autograd is handled in Python (fused.py)
  const Call c = prepare(x_in, weight_in, std::move(bases_in), stride, padding);
  const at::Tensor& x = c.x;
  const Geometry& g = c.g;
  const Fast& f = c.f;
  const int64_t N = c.N, m = c.m, kk = c.kk;
  const bool relu = relu_alpha.has_value();
  const auto opts = c.out_options();
  std::vector<at::Tensor> outs;
  at::Tensor alpha;
  if (relu) {
    TORCH_CHECK(c.fast && m == 1, "push-pull kernel: relu epilogue needs stride 1, same padding");
    alpha = channel_alpha(*relu_alpha, x, g.O, f.Op);
    outs.push_back(at::empty({N, g.O, g.Ho, g.Wo}, opts));
    outs.push_back(at::empty({N, g.O, g.Ho, g.Wo}, opts.dtype(at::kByte)));
    if (keep_pull) outs.push_back(at::empty({N, g.O, g.Ho, g.Wo}, opts));
  } else {
    outs.push_back(at::empty({N, (1 + m) * g.O, g.Ho, g.Wo}, opts));
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pushpull_forward", [&] {
    using T = scalar_t;
    std::vector<const T*> A;
    std::vector<int64_t> S;
    basis_views(c.bases, A, S);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      if (!c.fast) {  // generic geometry: NCHW, one library GEMM per image
        at::Tensor M = at::empty({kk * g.O, g.H * g.W}, x.options());
        at::Tensor Rs = at::empty({g.k * g.O * g.H * g.Wo}, x.options());
        const int64_t plane = g.O * g.Ho * g.Wo;
        for (int64_t n = begin; n < end; ++n) {
          at::mm_out(M, c.kp, x[n].view({g.C, g.H * g.W}));
          T* out = outs[0][n].mutable_data_ptr<T>();
          push_forward_generic(M.const_data_ptr<T>(), out, g);
          for (int64_t i = 0; i < m; ++i)
            pull_forward_generic(M.const_data_ptr<T>(), A[i], S[i], Rs.mutable_data_ptr<T>(),
                                 out + (i + 1) * plane, g);
        }
        return;
      }
      // per-task scratch; the zero borders are never written
      at::Tensor Mrow = at::zeros({f.Wr * kk * f.Op}, x.options());
      at::Tensor Hr = at::zeros({(1 + m) * (g.H + 2 * f.R) * g.W * g.k * f.Op}, x.options());
      at::Tensor rows = at::empty({(1 + m) * g.W * f.Op}, x.options());
      const int64_t WOp = g.W * f.Op, HW = g.H * g.W, Ot = (1 + m) * g.O;
      for (int64_t n = begin; n < end; ++n) {
        const T* xn = x.const_data_ptr<T>() + n * HW * g.C;
        auto emit_packed = [&](int64_t y, const T* r) {
          T* dst = outs[0].mutable_data_ptr<T>() + (n * HW + y * g.W) * Ot;
          for (int64_t j = 0; j <= m; ++j)
            copy_pixels(dst + j * g.O, Ot, r + j * WOp, f.Op, g.W, g.O);
        };
        auto emit_relu = [&](int64_t y, const T* r) {
          const int64_t at = (n * HW + y * g.W) * g.O;
          relu_row(r, r + WOp, alpha.const_data_ptr<T>(), outs[0].mutable_data_ptr<T>() + at,
                   outs[1].mutable_data_ptr<uint8_t>() + at, g.W, g.O, f.Op);
          if (keep_pull)
            copy_pixels(outs[2].mutable_data_ptr<T>() + at, g.O, r + WOp, f.Op, g.W, g.O);
        };
        T *mr = Mrow.mutable_data_ptr<T>(), *hr = Hr.mutable_data_ptr<T>(),
          *rw = rows.mutable_data_ptr<T>();
        if (relu)
          forward_image(xn, c.kt.const_data_ptr<T>(), A, S, mr, hr, rw, g, f, emit_relu);
        else
          forward_image(xn, c.kt.const_data_ptr<T>(), A, S, mr, hr, rw, g, f, emit_packed);
      }
    });
  });
  return outs;
}

// grads: [dL/dR] for the packed responses R (an empty tensor counts as zero). Returns
// (dL/dx, dL/dweight). With relu_alpha: grads = [dL/dout] and saved = [mask] from the forward.
std::vector<at::Tensor> pp_backward(std::vector<at::Tensor> grads, const at::Tensor& x_in,
                                    const at::Tensor& weight_in, std::vector<at::Tensor> bases_in,
                                    int64_t stride, int64_t padding, bool need_x, bool need_w,
                                    std::vector<at::Tensor> saved,
                                    const std::optional<at::Tensor>& relu_alpha,
                                    const std::optional<at::Tensor>& mix_f,
                                    const std::optional<at::Tensor>& mix_gz) {
  at::NoGradGuard no_grad;
  const Call c = prepare(x_in, weight_in, std::move(bases_in), stride, padding);
  const at::Tensor& x = c.x;
  const Geometry& g = c.g;
  const Fast& f = c.f;
  const int64_t N = c.N, m = c.m, kk = c.kk;
  const bool relu = relu_alpha.has_value();
  const auto fmt = c.fast ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  TORCH_CHECK(grads.size() == 1, "push-pull kernel: expected one gradient");
  // with mix_f (N x O x (1+m)O): grads[0] is dL/dout for out = mix_f[n] R[n] per pixel, and
  // dL/dR = mix_f^T dL/dout + mix_gz / HW is formed row by row (the layers' epilogue, fused.py)
  const bool mix = mix_f.has_value();
  TORCH_CHECK(!mix || (c.fast && !relu), "push-pull kernel: mix needs the fast path");
  const int64_t Ct = (1 + m) * g.O;
  at::Tensor mf, mgz;
  if (mix) {
    mf = mix_f->detach().to(x.scalar_type()).contiguous();
    TORCH_CHECK(mf.size(0) == N && mf.size(2) == Ct, "push-pull kernel: bad mix weights");
    mgz = at::zeros({N, Ct}, x.options());
    if (mix_gz.has_value() && present(*mix_gz))
      mgz = (mix_gz->detach().to(x.scalar_type()) / static_cast<double>(g.H * g.W)).contiguous();
  }
  at::Tensor grad = grads[0];
  if (!present(grad))
    grad = at::zeros({N, mix ? mf.size(1) : (relu ? 1 : 1 + m) * g.O, g.Ho, g.Wo}, x.options());
  grad = grad.detach().to(x.scalar_type()).contiguous(fmt);
  at::Tensor gx = need_x ? at::empty(x.sizes(), c.out_options()) : at::Tensor();
  const int64_t gk_cols = c.fast ? kk * f.Op : g.C;
  at::Tensor gk_parts =
      need_w ? at::zeros({at::get_num_threads(), c.fast ? g.C : kk * g.O, gk_cols}, x.options())
             : at::Tensor();
  at::Tensor alpha, mask;
  if (relu) {
    TORCH_CHECK(c.fast && m == 1 && saved.size() == 1, "push-pull kernel: bad relu backward call");
    alpha = channel_alpha(*relu_alpha, x, g.O, f.Op);
    mask = saved[0].detach().contiguous(fmt);
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pushpull_backward", [&] {
    using T = scalar_t;
    TORCH_CHECK(!mix || Ct % Simd<T>::L == 0, "push-pull kernel: mix needs full vectors");
    std::vector<const T*> A;
    std::vector<int64_t> S;
    basis_views(c.bases, A, S);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      at::Tensor gk_local = need_w ? gk_parts[at::get_thread_num()] : at::Tensor();
      if (!c.fast) {  // generic geometry: NCHW, library GEMMs
        const at::Tensor kpt = c.kp.t();
        at::Tensor gM = at::empty({kk * g.O, g.H * g.W}, x.options());
        at::Tensor gR = at::empty({g.k * g.O * g.H * g.Wo}, x.options());
        const int64_t plane = g.O * g.Ho * g.Wo;
        for (int64_t n = begin; n < end; ++n) {
          gM.zero_();
          T* gmp = gM.mutable_data_ptr<T>();
          const T* gn = grad[n].const_data_ptr<T>();
          push_backward_generic(gn, gmp, g);
          for (int64_t i = 0; i < m; ++i)
            pull_backward_generic(gn + (i + 1) * plane, A[i], S[i], gR.mutable_data_ptr<T>(), gmp,
                                  g);
          if (need_x) {
            at::Tensor gxn = gx[n].view({g.C, g.H * g.W});
            at::mm_out(gxn, kpt, gM);
          }
          if (need_w) gk_local.addmm_(gM, x[n].view({g.C, g.H * g.W}).t());
        }
        return;
      }
      const int64_t gplane = (g.H + 2 * f.R) * f.Wr * f.Op, HW = g.H * g.W;
      at::Tensor Gs = at::zeros({(1 + m) * gplane}, x.options());
      at::Tensor U = at::zeros({std::max<int64_t>(m, 1) * f.Wr * g.k * f.Op}, x.options());
      at::Tensor dMrow = at::empty({g.W * kk * f.Op}, x.options());
      at::Tensor gxrow = at::empty({g.W * f.Cp}, x.options());
      at::Tensor mixrow = at::empty({mix ? g.W * Ct : 0}, x.options());
      T* G = Gs.mutable_data_ptr<T>();
      std::vector<const T*> Gp;
      for (int64_t j = 0; j <= m; ++j) Gp.push_back(G + j * gplane);
      for (int64_t n = begin; n < end; ++n) {
        const T* xn = x.const_data_ptr<T>() + n * HW * g.C;
        // the incoming gradients into the interiors of the zero-bordered planes
        for (int64_t y = 0; y < g.H; ++y) {
          const int64_t row = ((f.R + y) * f.Wr + f.R) * f.Op;
          if (relu) {
            const int64_t at = (n * HW + y * g.W) * g.O;
            relu_row_backward(grad.const_data_ptr<T>() + at, mask.const_data_ptr<uint8_t>() + at,
                              alpha.const_data_ptr<T>(), G + row, G + gplane + row, g.W, g.O, f.Op);
          } else if (mix) {
            const int64_t Om = mf.size(1);
            T* tmp = mixrow.mutable_data_ptr<T>();
            gemm<T, false>(grad.const_data_ptr<T>() + (n * HW + y * g.W) * Om, Om, 1,
                           mf.const_data_ptr<T>() + n * Om * Ct, Ct, tmp, Ct, g.W, Om,
                           Ct / Simd<T>::L);
            const T* gz = mgz.const_data_ptr<T>() + n * Ct;
            for (int64_t xx = 0; xx < g.W; ++xx)
              for (int64_t j = 0; j <= m; ++j) {
                T* dst = G + j * gplane + row + xx * f.Op;
                const T* src = tmp + xx * Ct + j * g.O;
                for (int64_t o = 0; o < g.O; ++o) dst[o] = src[o] + gz[j * g.O + o];
              }
          } else {
            const int64_t Ot = (1 + m) * g.O;
            const T* src = grad.const_data_ptr<T>() + (n * HW + y * g.W) * Ot;
            for (int64_t j = 0; j <= m; ++j)
              copy_pixels(G + j * gplane + row, f.Op, src + j * g.O, Ot, g.W, g.O);
          }
        }
        auto gx_row = [&](int64_t y) -> T* {
          if (!need_x) return nullptr;
          return f.Cp == g.C ? gx.mutable_data_ptr<T>() + (n * HW + y * g.W) * g.C
                             : gxrow.mutable_data_ptr<T>();
        };
        auto gx_copy = [&](int64_t y) {
          if (!need_x || f.Cp == g.C) return;
          copy_pixels(gx.mutable_data_ptr<T>() + (n * HW + y * g.W) * g.C, g.C,
                      gxrow.const_data_ptr<T>(), f.Cp, g.W, g.C);
        };
        backward_image(xn, c.kp.const_data_ptr<T>(), Gp, A, S, U.mutable_data_ptr<T>(),
                       dMrow.mutable_data_ptr<T>(),
                       need_w ? gk_local.mutable_data_ptr<T>() : nullptr, g, f, gx_row, gx_copy);
      }
    });
  });
  at::Tensor gw;
  if (need_w) {
    const at::Tensor gk = gk_parts.sum(0);
    gw = c.fast ? gk.view({g.C, g.k, g.k, f.Op}).narrow(3, 0, g.O).permute({3, 0, 1, 2})
                : gk.view({g.k, g.k, g.O, g.C}).permute({2, 3, 0, 1});
    gw = gw.contiguous();
  }
  return {gx, gw};
}

// ---- Per-sample 1x1 products for the layers' epilogues (fused.mix_by_means) ----
// r: N x HW x C, f: N x O x C, both contiguous; O and C multiples of the vector length.

// out[n] = r[n] f[n]^T  (N x HW x O).
at::Tensor mix_forward(const at::Tensor& r_in, const at::Tensor& f) {
  at::NoGradGuard no_grad;
  const at::Tensor r = r_in.contiguous();
  const int64_t N = r.size(0), HW = r.size(1), C = r.size(2), O = f.size(1);
  at::Tensor ft = f.transpose(1, 2).contiguous();  // N x C x O
  at::Tensor out = at::empty({N, HW, O}, r.options());
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "mix_forward", [&] {
    using T = scalar_t;
    constexpr int64_t L = Simd<T>::L;
    TORCH_CHECK(O % L == 0, "mix: channels must be a multiple of the vector length");
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n)
        gemm<T, false>(r.const_data_ptr<T>() + n * HW * C, C, 1, ft.const_data_ptr<T>() + n * C * O,
                       O, out.mutable_data_ptr<T>() + n * HW * O, O, HW, C, O / L);
    });
  });
  return out;
}

// dL/dr = g f + gz / HW (gz: N x C, the gradient of the channel means of r, broadcast over the
// pixels; empty for none), for g = dL/dout (N x HW x O).
at::Tensor mix_grad_input(const at::Tensor& g_in, const at::Tensor& f_in, const at::Tensor& gz) {
  at::NoGradGuard no_grad;
  const at::Tensor g = g_in.contiguous(), f = f_in.contiguous();
  const int64_t N = g.size(0), HW = g.size(1), O = g.size(2), C = f.size(2);
  at::Tensor gr = at::empty({N, HW, C}, g.options());
  const bool with_gz = present(gz);
  const at::Tensor gzs = with_gz ? (gz / static_cast<double>(HW)).contiguous() : gz;
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "mix_grad_input", [&] {
    using T = scalar_t;
    constexpr int64_t L = Simd<T>::L, chunk = 64;  // pixels per chunk: the chunk stays in L1
    TORCH_CHECK(C % L == 0, "mix: channels must be a multiple of the vector length");
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const T* gn = g.const_data_ptr<T>() + n * HW * O;
        T* grn = gr.mutable_data_ptr<T>() + n * HW * C;
        for (int64_t p0 = 0; p0 < HW; p0 += chunk) {
          const int64_t rows = std::min(chunk, HW - p0);
          T* dst = grn + p0 * C;
          if (with_gz) {
            const T* zrow = gzs.const_data_ptr<T>() + n * C;
            for (int64_t p = 0; p < rows; ++p) std::memcpy(dst + p * C, zrow, C * sizeof(T));
          } else {
            std::memset(dst, 0, rows * C * sizeof(T));
          }
          gemm<T, true>(gn + p0 * O, O, 1, f.const_data_ptr<T>() + n * O * C, C, dst, C, rows, O,
                        C / L);
        }
      }
    });
  });
  return gr;
}

// dL/df = g^T r (N x O x C).
at::Tensor mix_grad_weight(const at::Tensor& g_in, const at::Tensor& r_in) {
  at::NoGradGuard no_grad;
  const at::Tensor g = g_in.contiguous(), r = r_in.contiguous();
  const int64_t N = g.size(0), HW = g.size(1), O = g.size(2), C = r.size(2);
  at::Tensor gf = at::empty({N, O, C}, g.options());
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "mix_grad_weight", [&] {
    using T = scalar_t;
    constexpr int64_t L = Simd<T>::L;
    TORCH_CHECK(C % L == 0, "mix: channels must be a multiple of the vector length");
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n)  // rows o of g^T: element (o, p) at g[n][p][o]
        gemm<T, false>(g.const_data_ptr<T>() + n * HW * O, 1, O, r.const_data_ptr<T>() + n * HW * C,
                       C, gf.mutable_data_ptr<T>() + n * O * C, C, O, HW, C / L);
    });
  });
  return gf;
}

}  // namespace

TORCH_LIBRARY(robustcli_pushpull, m) {
  m.def("forward", &pp_forward);
  m.def("backward", &pp_backward);
  m.def("mix_forward", &mix_forward);
  m.def("mix_grad_input", &mix_grad_input);
  m.def("mix_grad_weight", &mix_grad_weight);
}
