// Fused CPU selective scan (Mamba S6) with its backward pass; built on first use by monai_vlseg/ops/cpu_scan.py.
//
// Per batch b and channel c (group g = c / (dim / G) of B and C), with N states held in registers:
//     dt_t = softplus(delta_t + bias)                     (or delta_t + bias)
//     h_t  = exp(dt_t A) * h_{t-1} + dt_t u_t B_t          (Gu & Dao 2023, eq. 2a with ZOH A and Euler B)
//     y_t  = <C_t, h_t>,   out_t = (y_t + D u_t) * silu(z_t)        (eq. 2b, skip D and the z gate)
// The forward pass keeps the state entering every block of BLOCK steps (checkpoints: N floats per BLOCK steps);
// the backward pass walks the blocks from the last, recomputes each block's states from its checkpoint into an
// L1-sized buffer and runs the adjoint r_t = dL/dh_t = C_t gy_t + exp(dt_{t+1} A) r_{t+1} over them.
//
// Plain C++17 with GCC/Clang vector extensions (AVX2 / NEON / SSE chosen by the compiler's -march), no torch
// headers: the library is called through ctypes on tensors' data pointers (fp32, contiguous, B/C as (b, G, L, N)
// with N a multiple of 8). Work is split over std::threads, each taking whole channels (forward) or whole
// (batch, group, channel-slice) items (backward: gB/gC of a group are summed by one thread into its slice's buffer).

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace {

typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

constexpr int64_t BLOCK = 64;  // steps between checkpoints; also the length of the per-block buffers
constexpr float LOG2E = 1.4426950408889634f;

inline v8 bc(float x) { return v8{x, x, x, x, x, x, x, x}; }
inline v8 ld(const float* p) { v8 r; std::memcpy(&r, p, sizeof(r)); return r; }
inline void st(float* p, v8 v) { std::memcpy(p, &v, sizeof(v)); }
inline float hsum(v8 v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }
#if defined(__AVX__)
inline v8 vmax(v8 a, v8 b) { return (v8)_mm256_max_ps((__m256)a, (__m256)b); }
inline v8 vmin(v8 a, v8 b) { return (v8)_mm256_min_ps((__m256)a, (__m256)b); }
#else
inline v8 vmax(v8 a, v8 b) { return a > b ? a : b; }
inline v8 vmin(v8 a, v8 b) { return a < b ? a : b; }
#endif
inline v8 vabs(v8 a) { return a < bc(0.f) ? -a : a; }

// 2^x: round-to-nearest split x = k + f, |f| <= 1/2, Taylor polynomial of degree 7 (relative error < 1e-8 before
// fp32 rounding), k added to the exponent bits. Clamped to [-126, 126] (2^-126 ~ 1e-38 stands for underflow).
inline v8 exp2v(v8 x) {
  x = vmin(vmax(x, bc(-126.f)), bc(126.f));
  const v8 k = (x + bc(12582912.f)) - bc(12582912.f);  // 1.5 * 2^23: rounds to an integer (no -ffast-math)
  const v8 f = x - k;
  v8 p = bc(1.52527338040598e-05f);
  p = p * f + bc(1.54035303933816e-04f);
  p = p * f + bc(1.33335581464284e-03f);
  p = p * f + bc(9.61812910762848e-03f);
  p = p * f + bc(5.55041086648216e-02f);
  p = p * f + bc(2.40226506959101e-01f);
  p = p * f + bc(6.93147180559945e-01f);
  p = p * f + bc(1.0f);
  v8i bits = (v8i)p + (__builtin_convertvector(k, v8i) << 23);
  return (v8)bits;
}
inline v8 expv(v8 x) { return exp2v(x * bc(LOG2E)); }

// log(1 + e) for e in [0, 1]: 2 atanh(s), s = e / (2 + e) in [0, 1/3] (no cancellation for small e).
inline v8 log1p01(v8 e) {
  const v8 s = e / (bc(2.f) + e);
  const v8 s2 = s * s;
  v8 p = bc(2.f / 13.f);
  p = p * s2 + bc(2.f / 11.f);
  p = p * s2 + bc(2.f / 9.f);
  p = p * s2 + bc(2.f / 7.f);
  p = p * s2 + bc(2.f / 5.f);
  p = p * s2 + bc(2.f / 3.f);
  p = p * s2 + bc(2.f);
  return p * s;
}

// softplus(x) = max(x, 0) + log1p(exp(-|x|)); sigmoid(x) from the same exp(-|x|).
inline void softplus_sigmoid(v8 x, v8* sp, v8* sig) {
  const v8 e = expv(-vabs(x));
  *sp = vmax(x, bc(0.f)) + log1p01(e);
  const v8 inv = bc(1.f) / (bc(1.f) + e);
  *sig = x >= bc(0.f) ? inv : e * inv;
}
inline v8 sigmoidv(v8 x) {
  const v8 e = expv(-vabs(x));
  const v8 inv = bc(1.f) / (bc(1.f) + e);
  return x >= bc(0.f) ? inv : e * inv;
}

struct Args {
  const float *u, *delta, *A, *B, *C, *D, *z, *bias;
  float *out, *last, *ckpt, *pre;                            // forward outputs (ckpt, pre may be null)
  const float *gout, *glast;                                 // backward inputs (glast may be null)
  float *gu, *gdelta, *gA, *gB, *gC, *gD, *gbias, *gz;       // backward outputs (per-channel partials for A/D/bias)
  int64_t batch, dim, L, N, G, slices;
  int softplus;
};

// Per-block step quantities, read once into small aligned buffers: dt, dt*u and (backward) d dt / d delta.
struct BlockIn {
  alignas(32) float dt[BLOCK];
  alignas(32) float du[BLOCK];
  alignas(32) float dsp[BLOCK];
};

inline void load_block(const Args& a, const float* up, const float* dp, float bias, int64_t t0, int64_t n,
                       BlockIn* bi, bool want_dsp) {
  alignas(32) float dl[BLOCK], uu[BLOCK];
  for (int64_t i = 0; i < n; ++i) { dl[i] = dp[t0 + i] + bias; uu[i] = up[t0 + i]; }
  const int64_t n8 = (n + 7) / 8 * 8;
  for (int64_t i = n; i < n8; ++i) { dl[i] = 0.f; uu[i] = 0.f; }
  for (int64_t i = 0; i < n8; i += 8) {
    v8 x = ld(dl + i), dt = x, sig = bc(1.f);
    if (a.softplus) softplus_sigmoid(x, &dt, &sig);
    st(bi->dt + i, dt);
    st(bi->du + i, dt * ld(uu + i));
    if (want_dsp) st(bi->dsp + i, sig);
  }
}

#if defined(__AVX__)
// lane j = sum of the lanes of v[j], for 8 vectors at once (6 horizontal adds instead of 8 full reductions)
inline v8 reduce8(const v8* v) {
  const __m256 s0 = _mm256_hadd_ps(_mm256_hadd_ps((__m256)v[0], (__m256)v[1]), _mm256_hadd_ps((__m256)v[2], (__m256)v[3]));
  const __m256 s1 = _mm256_hadd_ps(_mm256_hadd_ps((__m256)v[4], (__m256)v[5]), _mm256_hadd_ps((__m256)v[6], (__m256)v[7]));
  return (v8)_mm256_add_ps(_mm256_permute2f128_ps(s0, s1, 0x20), _mm256_permute2f128_ps(s0, s1, 0x31));
}
#else
inline v8 reduce8(const v8* v) {
  v8 r;
  for (int j = 0; j < 8; ++j) r[j] = hsum(v[j]);
  return r;
}
#endif

// One work item: the channels [c0, c1) of batch b, all in group g of B/C. Spans of SPAN blocks are the outer loop and
// channels the inner one: a span's B/C rows (and, backward, its gB/gC sums) stay in L2 across the channels, while
// each channel reads SPAN * BLOCK contiguous steps of its own rows (long enough runs for the hardware prefetcher).
constexpr int64_t SPAN = 8;
struct Item {
  int64_t b, g, c0, c1;
};

// One block of n steps of eq. 2a, h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t, from the states h (updated in place).
// WITH_Y: yv[i] = C_t * h_t per lane (eq. 2b before its horizontal sum). KEEP (the backward's recompute): the decays
// into abuf[i] and the states into hbuf[i + 1] (CAP vectors per step).
template <int NV, bool WITH_Y, bool KEEP>
inline void scan_block(const float* Bp, const float* Cp, int64_t t0, int64_t n, int64_t N, int64_t nv,
                       const BlockIn& bi, const v8* av, v8* h, v8* yv, v8* abuf, v8* hbuf) {
  constexpr int CAP = NV > 0 ? NV : 8;
  for (int64_t i = 0; i < n; ++i) {
    const float* bt = Bp + (t0 + i) * N;
    const float* ct = Cp + (t0 + i) * N;
    const v8 dt = bc(bi.dt[i]), du = bc(bi.du[i]);
    v8 y = bc(0.f);
    for (int64_t k = 0; k < nv; ++k) {
      const v8 e = exp2v(dt * av[k]);
      h[k] = e * h[k] + du * ld(bt + 8 * k);
      if (KEEP) { abuf[i * CAP + k] = e; hbuf[(i + 1) * CAP + k] = h[k]; }
      if (WITH_Y) y += ld(ct + 8 * k) * h[k];
    }
    if (WITH_Y) yv[i] = y;
  }
}

template <int NV>
void forward_item(const Args& a, const Item& it) {
  constexpr int CAP = NV > 0 ? NV : 8;
  const int64_t N = a.N, L = a.L, nv = NV > 0 ? NV : N / 8, nch = it.c1 - it.c0;
  const int64_t nblk = (L + BLOCK - 1) / BLOCK;
  const float* Bp = a.B + (it.b * a.G + it.g) * L * N;
  const float* Cp = a.C + (it.b * a.G + it.g) * L * N;
  std::vector<v8> hs(std::max<int64_t>(1, nch) * CAP, bc(0.f));
  BlockIn bi;
  alignas(32) v8 yv[BLOCK];
  alignas(32) float yb[BLOCK];
  for (int64_t s0 = 0; s0 < nblk; s0 += SPAN) {
    for (int64_t j = 0; j < nch; ++j) {
      const int64_t c = it.c0 + j, row = it.b * a.dim + c;
      const float* up = a.u + row * L;
      v8 av[CAP], h[CAP];
      for (int64_t k = 0; k < nv; ++k) {
        av[k] = ld(a.A + c * N + 8 * k) * bc(LOG2E);
        h[k] = hs[j * CAP + k];
      }
      for (int64_t blk = s0; blk < std::min(nblk, s0 + SPAN); ++blk) {
      const int64_t t0 = blk * BLOCK, n = std::min(BLOCK, L - t0), n8 = (n + 7) / 8 * 8;
      if (a.ckpt)
        for (int64_t k = 0; k < nv; ++k) st(a.ckpt + (row * nblk + blk) * N + 8 * k, h[k]);
      load_block(a, up, a.delta + row * L, a.bias ? a.bias[c] : 0.f, t0, n, &bi, false);
      scan_block<NV, true, false>(Bp, Cp, t0, n, N, nv, bi, av, h, yv, nullptr, nullptr);
      for (int64_t i = n; i < n8; ++i) yv[i] = bc(0.f);
      for (int64_t i = 0; i < n8; i += 8) st(yb + i, reduce8(yv + i));
      const float dd = a.D ? a.D[c] : 0.f;
      float* op = a.out + row * L + t0;
      for (int64_t i = 0; i < n; ++i) yb[i] += dd * up[t0 + i];
      if (a.z) {
        alignas(32) float zb[BLOCK];
        const float* zp = a.z + row * L + t0;
        if (a.pre) std::memcpy(a.pre + row * L + t0, yb, n * sizeof(float));  // y + D u, for dL/dz
        std::memcpy(zb, zp, n * sizeof(float));
        for (int64_t i = n; i < n8; ++i) zb[i] = 0.f;
        for (int64_t i = 0; i < n8; i += 8) { const v8 zz = ld(zb + i); st(yb + i, ld(yb + i) * zz * sigmoidv(zz)); }
      }
      std::memcpy(op, yb, n * sizeof(float));
      }
      for (int64_t k = 0; k < nv; ++k) hs[j * CAP + k] = h[k];
    }
  }
  for (int64_t j = 0; j < nch; ++j)
    for (int64_t k = 0; k < nv; ++k) st(a.last + ((it.b * a.dim + it.c0 + j) * N) + 8 * k, hs[j * CAP + k]);
}

template <int NV>
void backward_item(const Args& a, const Item& it, float* gBs, float* gCs) {
  constexpr int CAP = NV > 0 ? NV : 8;
  const int64_t N = a.N, L = a.L, nv = NV > 0 ? NV : N / 8, nch = it.c1 - it.c0;
  const int64_t nblk = (L + BLOCK - 1) / BLOCK;
  const float* Bp = a.B + (it.b * a.G + it.g) * L * N;
  const float* Cp = a.C + (it.b * a.G + it.g) * L * N;
  float* gBp = gBs + (it.b * a.G + it.g) * L * N;  // this item's slice of the gB / gC partial sums
  float* gCp = gCs + (it.b * a.G + it.g) * L * N;
  const int64_t m = std::max<int64_t>(1, nch);
  std::vector<v8> rs(m * CAP, bc(0.f)), gAs(m * CAP, bc(0.f));
  std::vector<float> gDs(m, 0.f), gbs(m, 0.f);
  if (a.glast)
    for (int64_t j = 0; j < nch; ++j)
      for (int64_t k = 0; k < nv; ++k) rs[j * CAP + k] = ld(a.glast + (it.b * a.dim + it.c0 + j) * N + 8 * k);
  std::vector<v8> abuf(BLOCK * CAP), hbuf((BLOCK + 1) * CAP), gbl(SPAN * BLOCK * CAP), gcl(SPAN * BLOCK * CAP);
  BlockIn bi;
  alignas(32) v8 sv[BLOCK], tv[BLOCK];
  alignas(32) float gy[BLOCK], ub[BLOCK], gdu[BLOCK], sdt[BLOCK];
  for (int64_t s0 = (nblk - 1) / SPAN * SPAN; s0 >= 0; s0 -= SPAN) {
    const int64_t s1 = std::min(nblk, s0 + SPAN);
    std::fill(gbl.begin(), gbl.end(), bc(0.f));
    std::fill(gcl.begin(), gcl.end(), bc(0.f));
    for (int64_t j = 0; j < nch; ++j) {
      const int64_t c = it.c0 + j, row = it.b * a.dim + c;
      const float* up = a.u + row * L;
      const float dd = a.D ? a.D[c] : 0.f;
      v8 araw[CAP], av[CAP], r[CAP], gA[CAP];
      for (int64_t k = 0; k < nv; ++k) {
        araw[k] = ld(a.A + c * N + 8 * k);
        av[k] = araw[k] * bc(LOG2E);
        r[k] = rs[j * CAP + k];
        gA[k] = gAs[j * CAP + k];
      }
      for (int64_t blk = s1 - 1; blk >= s0; --blk) {
      const int64_t t0 = blk * BLOCK, n = std::min(BLOCK, L - t0), n8 = (n + 7) / 8 * 8;
      v8* gbb = gbl.data() + (blk - s0) * BLOCK * CAP;
      v8* gcb = gcl.data() + (blk - s0) * BLOCK * CAP;
      load_block(a, up, a.delta + row * L, a.bias ? a.bias[c] : 0.f, t0, n, &bi, a.softplus != 0);
      for (int64_t k = 0; k < nv; ++k) hbuf[k] = ld(a.ckpt + (row * nblk + blk) * N + 8 * k);
      // recompute the block's states (and y, for the z gate, unless the forward kept y + D u) from its checkpoint
      v8 hr[CAP];
      for (int64_t k = 0; k < nv; ++k) hr[k] = hbuf[k];
      if (a.z && !a.pre)
        scan_block<NV, true, true>(Bp, Cp, t0, n, N, nv, bi, av, hr, sv, abuf.data(), hbuf.data());
      else
        scan_block<NV, false, true>(Bp, Cp, t0, n, N, nv, bi, av, hr, sv, abuf.data(), hbuf.data());
      std::memcpy(ub, up + t0, n * sizeof(float));
      std::memcpy(gy, a.gout + row * L + t0, n * sizeof(float));
      for (int64_t i = n; i < n8; ++i) { ub[i] = 0.f; gy[i] = 0.f; sv[i] = bc(0.f); }
      // out = (y + D u) silu(z): dL/dy = g silu(z), dL/dz = g (y + D u) silu'(z)
      if (a.z) {
        alignas(32) float zb[BLOCK], gzb[BLOCK];
        const float* zp = a.z + row * L + t0;
        alignas(32) float pb[BLOCK];
        std::memcpy(zb, zp, n * sizeof(float));
        if (a.pre) std::memcpy(pb, a.pre + row * L + t0, n * sizeof(float));
        for (int64_t i = n; i < n8; ++i) zb[i] = pb[i] = 0.f;
        for (int64_t i = 0; i < n8; i += 8) {
          const v8 zz = ld(zb + i), s = sigmoidv(zz), g = ld(gy + i);
          const v8 pre = a.pre ? ld(pb + i) : reduce8(sv + i) + bc(dd) * ld(ub + i);
          st(gzb + i, g * pre * s * (bc(1.f) + zz * (bc(1.f) - s)));
          st(gy + i, g * zz * s);
        }
        std::memcpy(a.gz + row * L + t0, gzb, n * sizeof(float));
      }
      // adjoint over the block, last step first: r = dL/dh_t
      for (int64_t i = n - 1; i >= 0; --i) {
        const int64_t t = t0 + i;
        const float* bt = Bp + t * N;
        const float* ct = Cp + t * N;
        const v8 gyv = bc(gy[i]), du = bc(bi.du[i]), dt = bc(bi.dt[i]);
        v8 s_du = bc(0.f), s_dt = bc(0.f);
        for (int64_t k = 0; k < nv; ++k) {
          const v8 e = abuf[i * CAP + k];
          r[k] += gyv * ld(ct + 8 * k);
          gcb[i * CAP + k] += gyv * hbuf[(i + 1) * CAP + k];
          gbb[i * CAP + k] += r[k] * du;
          s_du += r[k] * ld(bt + 8 * k);
          const v8 w = r[k] * hbuf[i * CAP + k] * e;  // dL/d(dt A)
          s_dt += w * araw[k];
          gA[k] += w * dt;
          r[k] *= e;
        }
        sv[i] = s_du;
        tv[i] = s_dt;
      }
      for (int64_t i = n; i < n8; ++i) sv[i] = tv[i] = bc(0.f);
      v8 gdv = bc(0.f), gbv = bc(0.f);
      for (int64_t i = 0; i < n8; i += 8) {
        const v8 g_du = reduce8(sv + i), u8 = ld(ub + i), gy8 = ld(gy + i);
        v8 g_dt = reduce8(tv + i) + g_du * u8;
        st(gdu + i, g_du * ld(bi.dt + i) + gy8 * bc(dd));
        if (a.softplus) g_dt *= ld(bi.dsp + i);
        st(sdt + i, g_dt);
        gdv += gy8 * u8;
        gbv += g_dt;  // padded steps have gy = 0, g_du = 0 and s_dt = 0
      }
      std::memcpy(a.gu + row * L + t0, gdu, n * sizeof(float));
      std::memcpy(a.gdelta + row * L + t0, sdt, n * sizeof(float));
      gDs[j] += hsum(gdv);
      gbs[j] += hsum(gbv);
      }
      for (int64_t k = 0; k < nv; ++k) { rs[j * CAP + k] = r[k]; gAs[j * CAP + k] = gA[k]; }
    }
    for (int64_t i = 0; i < std::min(L, s1 * BLOCK) - s0 * BLOCK; ++i)
      for (int64_t k = 0; k < nv; ++k) {
        st(gBp + (s0 * BLOCK + i) * N + 8 * k, gbl[i * CAP + k]);
        st(gCp + (s0 * BLOCK + i) * N + 8 * k, gcl[i * CAP + k]);
      }
  }
  for (int64_t j = 0; j < nch; ++j) {
    const int64_t row = it.b * a.dim + it.c0 + j;
    for (int64_t k = 0; k < nv; ++k) st(a.gA + row * N + 8 * k, gAs[j * CAP + k]);
    a.gD[row] = gDs[j];
    a.gbias[row] = gbs[j];
  }
}

// Run fn(item) for item in [0, items) on `threads` threads. With OpenMP the threads are those of the process's
// libgomp, which is torch's own (loaded first, same soname), so the kernel and torch's operators never compete with
// two spinning pools; without OpenMP, std::threads (the caller's thread is one of them).
template <typename F>
void parallel_items(int64_t items, int threads, F fn) {
  threads = (int)std::max<int64_t>(1, std::min<int64_t>(threads, items));
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t i = 0; i < items; ++i) fn(i);
#else
  std::atomic<int64_t> next{0};
  auto work = [&]() {
    for (int64_t i = next.fetch_add(1); i < items; i = next.fetch_add(1)) fn(i);
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& th : pool) th.join();
#endif
}

// item = (slice s, batch b, group g): channels [g*dg + s*cs, g*dg + min((s+1)*cs, dg)); backward writes its gB/gC
// sums into slice s of the partial buffers (every element of every slice, zeros where it has no channels)
inline Item item_of(const Args& a, int64_t i) {
  const int64_t dg = a.dim / a.G, cs = (dg + a.slices - 1) / a.slices;
  const int64_t s = i / (a.batch * a.G), b = (i / a.G) % a.batch, g = i % a.G;
  const int64_t c0 = g * dg + std::min(dg, s * cs), c1 = g * dg + std::min(dg, (s + 1) * cs);
  return Item{b, g, c0, c1};
}

template <int NV>
void forward_all(const Args& a, int threads) {
  parallel_items(a.slices * a.batch * a.G, threads, [&](int64_t i) { forward_item<NV>(a, item_of(a, i)); });
}

template <int NV>
void backward_all(const Args& a, int threads) {
  const int64_t per = a.batch * a.G * a.L * a.N;
  parallel_items(a.slices * a.batch * a.G, threads, [&](int64_t i) {
    const int64_t s = i / (a.batch * a.G);
    backward_item<NV>(a, item_of(a, i), a.gB + s * per, a.gC + s * per);
  });
}

template <void (*F1)(const Args&, int), void (*F2)(const Args&, int), void (*F4)(const Args&, int),
          void (*FN)(const Args&, int)>
int dispatch(const Args& a, int threads) {
  if (a.N % 8 != 0 || a.N <= 0 || a.N > 64 || a.G <= 0 || a.dim % a.G != 0) return -1;
  switch (a.N / 8) {
    case 1: F1(a, threads); break;
    case 2: F2(a, threads); break;
    case 4: F4(a, threads); break;
    default: FN(a, threads);
  }
  return 0;
}

}  // namespace

extern "C" {

int ssc_block() { return (int)BLOCK; }

int ssc_forward(const float* u, const float* delta, const float* A, const float* B, const float* C, const float* D,
                const float* z, const float* bias, float* out, float* last, float* ckpt, float* pre, int64_t batch,
                int64_t dim,
                int64_t L, int64_t N, int64_t G, int softplus, int64_t slices, int threads) {
  Args a{};
  a.u = u; a.delta = delta; a.A = A; a.B = B; a.C = C; a.D = D; a.z = z; a.bias = bias;
  a.out = out; a.last = last; a.ckpt = ckpt; a.pre = pre;
  a.batch = batch; a.dim = dim; a.L = L; a.N = N; a.G = G; a.slices = slices; a.softplus = softplus;
  return dispatch<forward_all<1>, forward_all<2>, forward_all<4>, forward_all<0>>(a, threads);
}

int ssc_backward(const float* u, const float* delta, const float* A, const float* B, const float* C, const float* D,
                 const float* z, const float* bias, const float* ckpt, const float* pre, const float* gout,
                 const float* glast,
                 float* gu, float* gdelta, float* gA, float* gB, float* gC, float* gD, float* gbias, float* gz,
                 int64_t batch, int64_t dim, int64_t L, int64_t N, int64_t G, int softplus, int64_t slices,
                 int threads) {
  Args a{};
  a.u = u; a.delta = delta; a.A = A; a.B = B; a.C = C; a.D = D; a.z = z; a.bias = bias;
  a.ckpt = const_cast<float*>(ckpt); a.pre = const_cast<float*>(pre); a.gout = gout; a.glast = glast;
  a.gu = gu; a.gdelta = gdelta; a.gA = gA; a.gB = gB; a.gC = gC; a.gD = gD; a.gbias = gbias; a.gz = gz;
  a.batch = batch; a.dim = dim; a.L = L; a.N = N; a.G = G; a.slices = slices; a.softplus = softplus;
  return dispatch<backward_all<1>, backward_all<2>, backward_all<4>, backward_all<0>>(a, threads);
}

// The arithmetic floor of one state update as the forward loop does it (exp of dt*A, the state FMA and the output
// FMA over N = 16 states in registers, no memory traffic), in updates per second on `threads` threads.
double ssc_update_rate(int64_t steps, int threads) {
  std::vector<float> sink(std::max(1, threads) * 8);
  auto t0 = std::chrono::steady_clock::now();
  parallel_items(threads, threads, [&](int64_t item) {
    v8 av[2] = {bc(-1.f) * bc(LOG2E), bc(-9.f) * bc(LOG2E)}, h[2] = {bc(0.f), bc(0.f)};
    v8 bt[2] = {bc(0.3f), bc(-0.2f)}, ct[2] = {bc(0.5f), bc(0.7f)}, acc = bc(0.f);
    float dt = 0.01f + 1e-3f * (float)item, du = 0.02f;
    for (int64_t i = 0; i < steps; ++i) {
      v8 y = bc(0.f);
      for (int k = 0; k < 2; ++k) {
        h[k] = exp2v(bc(dt) * av[k]) * h[k] + bc(du) * bt[k];
        y += ct[k] * h[k];
      }
      acc += y;
      dt += 1e-9f;
    }
    st(sink.data() + 8 * item, acc);
  });
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  float keep = 0.f;
  for (float v : sink) keep += v;
  return (double)steps * 16.0 * std::max(1, threads) / sec + (keep == 12345.f ? 1e-30 : 0.0);
}

}  // extern "C"
