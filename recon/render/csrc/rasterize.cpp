// CPU rasterizer of projected 3D Gaussians: tile binning, depth order, front-to-back alpha
// compositing with early termination, and its hand-written backward pass.
//
// Semantics follow gsplat's `rasterize_to_pixels` (3DGS): pixel centers at (x + 0.5, y + 0.5),
// sigma = 0.5 * (a dx^2 + c dy^2) + b dx dy with conic (a, b, c), alpha = min(0.999, o * exp(-sigma)),
// contributions with alpha < 1/255 skipped, a pixel stops before the Gaussian that would bring its
// transmittance to <= 1e-4. Gaussians are visited only on pixels inside their (opacity-aware)
// bounding box; that box holds every pixel with alpha >= 1/255, so the result does not depend on
// the tile size.
//
// Layout: every per-Gaussian tensor is [C, N, ...] (C cameras), contiguous float32.
// Intersections are bucketed by (camera, tile); inside a bucket Gaussians are in depth order.

#include "ops.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>


namespace {

constexpr float kAlphaThreshold = 1.0f / 255.0f;
constexpr float kTransmittanceEps = 1e-4f;
constexpr float kMaxAlpha = 0.999f;
constexpr int kTile = 16;              // tile side in pixels
constexpr int kHalf = 4;               // pixels per row segment; a SIMD block of 8 lanes takes two
// Tile-local pixel state has rows of kStride = kTile + 8 entries: a block starts at any pixel of a
// Gaussian's row span and may run into the padding columns, which are inert (stopped / zero
// gradient); lanes past the span's end are masked. kHalf more inert entries after the tile's
// kPix serve the dummy segment that completes an odd count (see Blocks).
constexpr int kStride = kTile + 8;
constexpr int kPix = kTile * kStride;  // entries of tile-local state
constexpr int kPixAlloc = kPix + kHalf;
constexpr int kPrefetch = 4;           // Gaussians of a tile's list fetched ahead of use

struct PixelRect {
    int x0, x1, y0, y1;  // inclusive pixel bounds; empty when x0 > x1 or y0 > y1
};

// Pixels whose centers lie inside [m - r, m + r], clipped to the image.
inline PixelRect gaussian_pixel_rect(float mx, float my, int rx, int ry, int width, int height) {
    PixelRect r;
    r.x0 = std::max(0, static_cast<int>(std::ceil(mx - rx - 0.5f)));
    r.x1 = std::min(width - 1, static_cast<int>(std::floor(mx + rx - 0.5f)));
    r.y0 = std::max(0, static_cast<int>(std::ceil(my - ry - 0.5f)));
    r.y1 = std::min(height - 1, static_cast<int>(std::floor(my + ry - 0.5f)));
    return r;
}

// A pixel rectangle inside the tile at (tx0, ty0), in tile-local coordinates.
inline PixelRect tile_rect(PixelRect r, int tx0, int ty0) {
    r.x0 = std::max(r.x0, tx0) - tx0;
    r.x1 = std::min(r.x1, tx0 + kTile - 1) - tx0;
    r.y0 = std::max(r.y0, ty0) - ty0;
    r.y1 = std::min(r.y1, ty0 + kTile - 1) - ty0;
    return r;
}

// Rows of a Gaussian's footprint: for row offset dy the pixels with sigma <= L = ln(255 o) (i.e.
// alpha >= 1/255) have dx = mx - px in [k1 dy - sqrt(k2 dy^2 + k3), k1 dy + sqrt(k2 dy^2 + k3)].
// L is enlarged slightly so the span is conservative: the exact alpha test still decides each pixel.
struct RowSpans {
    float k1, k2, k3;
    static RowSpans of(float ca, float cb, float cc, float opacity) {
        const float L = std::log(255.0f * opacity) * 1.001f + 1e-3f;
        return {-cb / ca, (cb * cb - ca * cc) / (ca * ca), 2.0f * L / ca};
    }
    // Tile-local pixel ranges [lo, hi] of R consecutive tile rows y0 .. y0 + R - 1 at once (SIMD
    // over rows), clipped to [x0, x1]; an empty row gets lo > hi. dy0 = my - (ty0 + y0 + 0.5).
    template <int R>
    inline void rows(float dy0, float mx, int tx0, int x0, int x1, int32_t* lo, int32_t* hi) const {
#pragma omp simd
        for (int j = 0; j < R; ++j) {
            const float dy = dy0 - j;
            const float disc = k2 * dy * dy + k3;
            const float root = std::sqrt(std::max(disc, 0.0f)), mid = mx - k1 * dy - 0.5f - tx0;
            lo[j] = std::max(x0, static_cast<int32_t>(std::ceil(mid - root - 0.01f)));
            const int32_t h = std::min(x1, static_cast<int32_t>(std::floor(mid + root + 0.01f)));
            hi[j] = disc < 0.0f ? -1 : h;
        }
    }
    // Row spans of the tile rows r.y0 .. r.y1 into lo/hi[0 ..].
    inline void tile_rows(float my, float mx, int tx0, int ty0, const PixelRect& r, int32_t* lo, int32_t* hi) const {
        const float dy0 = my - (ty0 + r.y0 + 0.5f);
        if (r.y1 - r.y0 < 8) rows<8>(dy0, mx, tx0, r.x0, r.x1, lo, hi);
        else rows<16>(dy0, mx, tx0, r.x0, r.x1, lo, hi);
    }
};

// Everything the compositing loops read about one projected Gaussian, in one cache line (the
// loops visit Gaussians in depth order, i.e. at random addresses).
struct alignas(64) PackedGaussian {
    float mx, my, ca, cb, cc, op;
    RowSpans spans;
    PixelRect rect;  // image pixels inside the (opacity-aware) radius box; empty when culled
};

// The tiles a Gaussian touches, inclusive; empty when tx0 > tx1. Small, so binning's walk in depth
// order (random Gaussian ids) stays in cache.
struct TileRange {
    int16_t tx0, tx1, ty0, ty1;
};

std::vector<PackedGaussian> pack_gaussians(const float* m2d, const float* con, const float* opa, const int32_t* rad,
                                           int64_t CN, int width, int height, TileRange* tiles = nullptr) {
    std::vector<PackedGaussian> pk(CN);
#pragma omp parallel for schedule(static) if (CN > 4096)
    for (int64_t g = 0; g < CN; ++g) {
        PackedGaussian& P = pk[g];
        P.mx = m2d[2 * g];
        P.my = m2d[2 * g + 1];
        P.ca = con[3 * g];
        P.cb = con[3 * g + 1];
        P.cc = con[3 * g + 2];
        P.op = opa[g];
        const int rx = rad[2 * g], ry = rad[2 * g + 1];
        if (rx > 0 && ry > 0) {
            P.rect = gaussian_pixel_rect(P.mx, P.my, rx, ry, width, height);
            P.spans = RowSpans::of(P.ca, P.cb, P.cc, P.op);
        } else {
            P.rect = {0, -1, 0, -1};
            P.spans = {0.0f, 0.0f, -1.0f};
        }
        if (tiles != nullptr) {
            const PixelRect& r = P.rect;
            tiles[g] = (r.x0 > r.x1 || r.y0 > r.y1)
                           ? TileRange{0, -1, 0, -1}
                           : TileRange{static_cast<int16_t>(r.x0 / kTile), static_cast<int16_t>(r.x1 / kTile),
                                       static_cast<int16_t>(r.y0 / kTile), static_cast<int16_t>(r.y1 / kTile)};
        }
    }
    return pk;
}

struct Binning {
    torch::Tensor tile_offsets;  // [C * tiles + 1] int64
    torch::Tensor flat_ids;      // [M] int32, Gaussian index inside its camera
};

// Buckets Gaussians by tile in depth order. `order` is [C, N]: per camera, Gaussian ids by depth.
// The (camera, rank) list is split into one contiguous chunk per thread; each thread counts its
// chunk's intersections per tile, and writes them after those of the chunks before it, so every
// bucket stays in depth order whatever the number of threads (and one camera still runs in parallel).
Binning bin_gaussians(const TileRange* ranges, const int64_t* order, int64_t C, int64_t N, int width, int height) {
    const int tiles_x = (width + kTile - 1) / kTile;
    const int tiles_y = (height + kTile - 1) / kTile;
    const int64_t tiles = static_cast<int64_t>(tiles_x) * tiles_y, CT = C * tiles, CN = C * N;
    const int n_threads = std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), CN / 2048 + 1));
    std::vector<int64_t> counts(static_cast<size_t>(n_threads) * CT, 0);  // [thread][camera * tiles + tile]
    Binning bins;
    bins.tile_offsets = torch::empty({CT + 1}, torch::TensorOptions().dtype(torch::kInt64));
    int64_t* offs = bins.tile_offsets.data_ptr<int64_t>();
    int32_t* ids = nullptr;

    // Visits the tiles of the entries e0 .. e1 - 1 (e = c * N + rank) of the depth-sorted lists, in
    // order; one flat loop per entry (fewer mispredicted branches than a loop per tile row).
    auto visit = [&](int64_t e0, int64_t e1, auto&& fn) {
        for (int64_t c = e0 < e1 ? e0 / N : 0, e = e0; e < e1; ++c) {
            for (const int64_t ce = std::min(e1, (c + 1) * N); e < ce; ++e) {
                const int64_t n = order[e];
                const TileRange r = ranges[c * N + n];
                const int w = r.tx1 - r.tx0 + 1, count = std::max(0, w) * std::max(0, r.ty1 - r.ty0 + 1);
                int tx = r.tx0, ty = r.ty0;
                for (int j = 0; j < count; ++j) {
                    fn(c * tiles + ty * tiles_x + tx, n);
                    const bool wrap = ++tx > r.tx1;
                    tx = wrap ? r.tx0 : tx;
                    ty += wrap;
                }
            }
        }
    };

#pragma omp parallel num_threads(n_threads)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        const int64_t e0 = CN * t / nt, e1 = CN * (t + 1) / nt;
        int64_t* cnt = counts.data() + t * CT;
        visit(e0, e1, [&](int64_t ct, int64_t) { ++cnt[ct]; });
#pragma omp barrier
#pragma omp single
        {
            offs[0] = 0;
            for (int64_t ct = 0; ct < CT; ++ct) {  // bucket offsets, then each thread's cursor inside
                int64_t at = offs[ct];
                for (int u = 0; u < nt; ++u) {
                    const int64_t n_u = counts[u * CT + ct];
                    counts[u * CT + ct] = at;
                    at += n_u;
                }
                offs[ct + 1] = at;
            }
            bins.flat_ids = torch::empty({offs[CT]}, torch::TensorOptions().dtype(torch::kInt32));
            ids = bins.flat_ids.data_ptr<int32_t>();
        }  // implicit barrier
        visit(e0, e1, [&](int64_t ct, int64_t n) { ids[cnt[ct]++] = static_cast<int32_t>(n); });
    }
    return bins;
}

// ---- SIMD blocks -------------------------------------------------------------------------------
// The compositing loops work on blocks of 8 pixels of one Gaussian inside a tile (see Blocks),
// written with GCC/Clang vector extensions (AVX2 registers on x86, pairs of NEON ones on ARM).
typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));
typedef float hf __attribute__((vector_size(16)));
typedef int32_t hi4 __attribute__((vector_size(16)));

// 8 lanes from two 4-entry segments at a and b (any alignment), and back. Compilers without
// __builtin_shufflevector (GCC < 12) get a portable version that goes through memory (slower).
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
template <class V, class H, class T>
inline V load2(const T* a, const T* b) {
    H x, y;
    std::memcpy(&x, a, sizeof(H));
    std::memcpy(&y, b, sizeof(H));
    return __builtin_shufflevector(x, y, 0, 1, 2, 3, 4, 5, 6, 7);
}
template <class V, class H, class T>
inline void store2(T* a, T* b, V v) {
    const H x = __builtin_shufflevector(v, v, 0, 1, 2, 3), y = __builtin_shufflevector(v, v, 4, 5, 6, 7);
    std::memcpy(a, &x, sizeof(H));
    std::memcpy(b, &y, sizeof(H));
}
#else
template <class V, class H, class T>
inline V load2(const T* a, const T* b) {
    V v;
    std::memcpy(&v, a, sizeof(H));
    std::memcpy(reinterpret_cast<char*>(&v) + sizeof(H), b, sizeof(H));
    return v;
}
template <class V, class H, class T>
inline void store2(T* a, T* b, V v) {
    std::memcpy(a, &v, sizeof(H));
    std::memcpy(b, reinterpret_cast<const char*>(&v) + sizeof(H), sizeof(H));
}
#endif
inline vf splat(float x) { return vf{} + x; }
inline vf halves(float a, float b) { return vf{a, a, a, a, b, b, b, b}; }
inline vf vmin(vf a, vf b) { return a < b ? a : b; }
inline vf select(vi m, vf a, vf b) { return m ? a : b; }
inline float hsum(vf v) { return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7])); }
inline int hsum(vi v) { return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7])); }

// exp(x) for x <= 0: 2^t with t = x log2(e) split into an integer n (added to the exponent bits) and
// f in (-0.5, 0.5], where 2^f is a degree-5 polynomial (relative error 7.5e-8 on its range; ~4e-7
// overall from rounding t). n = ceil(t - 0.5) by truncation, since t - 0.5 < 0. Below -87 it
// returns ~0 (denormals are flushed), which every caller treats as invisible. Lanes with x > 0
// get a finite value that callers mask out.
inline vf exp_neg(vf x) {
    const vf t = (x > -87.0f ? x : splat(-87.0f)) * 1.44269504088896341f;  // exp(x) = 2^t = 2^n 2^f
    const vi n = __builtin_convertvector(t - 0.5f, vi);
    const vf f = t - __builtin_convertvector(n, vf);
    vf p = splat(1.3276446843519807e-3f);  // near-minimax degree-5 fit of 2^f, relative error 7.5e-8
    p = p * f + 9.675540961325169e-3f;
    p = p * f + 5.550713464617729e-2f;
    p = p * f + 2.4022120237350464e-1f;
    p = p * f + 6.931469440460205e-1f;
    p = p * f + 1.0000001192092896f;
    return reinterpret_cast<vf>(reinterpret_cast<vi>(p) + (n << 23));
}

// The blocks of one Gaussian inside a tile. A row span wider than kHalf pixels is covered by
// "wide" blocks of 8 consecutive pixels (the last one may have fewer lanes, or leave a segment of
// at most kHalf pixels); shorter spans become 4-pixel segments, taken two at a time (same row or
// not), and an odd count gets a dummy partner with no lanes that points at the inert entries past
// the tile. Footprints are a few pixels wide, so pairing short segments keeps the lanes busy.
struct Blocks {
    static constexpr int kMaxWide = kTile * 2, kMaxSeg = kTile + 1;
    int n_wide = 0, n_seg = 0;
    // + room for the candidates add_row writes past the count
    alignas(64) int32_t wp[kMaxWide + 2], wlen[kMaxWide + 2], sp[kMaxSeg + 1], slen[kMaxSeg + 1];
    alignas(64) float wfx[kMaxWide + 2], wdy[kMaxWide + 2], sfx[kMaxSeg + 1], sdy[kMaxSeg + 1];

    // Row y (tile-local) from x = lo to hi; fx0 = mx - (tx0 + 0.5), dy = my - (ty0 + y + 0.5).
    // Branch-free: writes every candidate and advances the counts by the ones that exist.
    inline void add_row(int y, int lo, int hi, float fx0, float dyy) {
        const int width = std::max(0, hi - lo + 1), full = width / 8, rest = width % 8;
        for (int j = 0; j < 2; ++j) {
            wp[n_wide + j] = y * kStride + lo + 8 * j;
            wlen[n_wide + j] = std::min(8, width - 8 * j);
            wfx[n_wide + j] = fx0 - (lo + 8 * j);
            wdy[n_wide + j] = dyy;
        }
        n_wide += full + (rest > kHalf);
        const int xs = lo + 8 * full;
        sp[n_seg] = y * kStride + xs;
        slen[n_seg] = rest;
        sfx[n_seg] = fx0 - xs;
        sdy[n_seg] = dyy;
        n_seg += (rest > 0) & (rest <= kHalf);
    }
    inline void pad() {
        sp[n_seg] = kPix;
        slen[n_seg] = 0;
        sfx[n_seg] = 0.0f;
        sdy[n_seg] = 0.0f;
        n_seg += n_seg % 2;
    }
};

// Where a block's 8 lanes lie: Wide, 8 consecutive pixels of a row from pa; else two 4-pixel
// segments at pa and pb. dx, dy: mean minus pixel center; ok: lanes inside the Gaussian's spans.
template <bool Wide>
struct Lanes {
    int pa, pb;
    vf dx, dy;
    vi ok;
    Lanes(const Blocks& B, int i) {
        if constexpr (Wide) {
            pa = B.wp[i];
            pb = pa + kHalf;
            dx = B.wfx[i] - vf{0, 1, 2, 3, 4, 5, 6, 7};
            dy = splat(B.wdy[i]);
            ok = vi{0, 1, 2, 3, 4, 5, 6, 7} < B.wlen[i];
        } else {
            pa = B.sp[i];
            pb = B.sp[i + 1];
            dx = halves(B.sfx[i], B.sfx[i + 1]) - vf{0, 1, 2, 3, 0, 1, 2, 3};
            dy = halves(B.sdy[i], B.sdy[i + 1]);
            const int la = B.slen[i], lb = B.slen[i + 1];
            ok = vi{0, 1, 2, 3, 0, 1, 2, 3} < vi{la, la, la, la, lb, lb, lb, lb};
        }
    }
    template <class V, class T>
    inline V load(const T* base) const {
        if constexpr (Wide) {
            V v;
            std::memcpy(&v, base + pa, sizeof(V));
            return v;
        } else {
            return load2<V, std::conditional_t<std::is_same_v<V, vf>, hf, hi4>>(base + pa, base + pb);
        }
    }
    template <class V, class T>
    inline void store(T* base, V v) const {
        if constexpr (Wide) std::memcpy(base + pa, &v, sizeof(V));
        else store2<V, std::conditional_t<std::is_same_v<V, vf>, hf, hi4>>(base + pa, base + pb, v);
    }
};

// One block of the forward pass for a Gaussian. DC > 0: channel count known at compile time;
// DC == 0: D channels. Returns the lanes that stopped (-1) this time. `last` holds the number of
// list entries a pixel took, or ~that (< 0) once the pixel stopped.
template <int DC, bool Wide>
inline vi forward_block(const Lanes<Wide>& L, float ca, float cb, float cc, float op, const float* cg, int64_t D,
                        int32_t kk, float* T, int32_t* last, float* acc) {
    const vf dx = L.dx, dy = L.dy;
    const vf sigma = 0.5f * (ca * dx * dx + cc * dy * dy) + cb * dx * dy;
    const vf alpha = vmin(splat(kMaxAlpha), op * exp_neg(-sigma));
    const vi lp = L.template load<vi>(last);
    const vi valid = L.ok & (lp >= 0) & (sigma >= 0.0f) & (alpha >= kAlphaThreshold);
    const vf Tp = L.template load<vf>(T);
    const vf next_T = Tp * (1.0f - alpha);
    const vi stop = valid & (next_T <= kTransmittanceEps);
    const vi take = valid & ~stop;
    const vf wp = select(take, alpha * Tp, splat(0.0f));
    L.store(T, select(take, next_T, Tp));
    L.store(last, take ? vi{} + kk : (stop ? ~lp : lp));
    const int64_t Dn = DC > 0 ? DC : D;
    for (int64_t d = 0; d < Dn; ++d) {
        float* ad = acc + d * kPixAlloc;
        L.store(ad, L.template load<vf>(ad) + wp * cg[d]);
    }
    return stop;
}

// Per-lane gradient sums of one Gaussian over a tile, reduced across lanes once: the moments
// sum(v_sigma dx), sum(v_sigma dy), sum(v_sigma dx^2), sum(v_sigma dx dy), sum(v_sigma dy^2) (the
// mean and conic gradients are linear in them) and the opacity's; colors separately.
struct GaussianGrad {
    vf mx{}, my{}, xx{}, xy{}, yy{}, op{};
};

// One block of the backward pass (back to front); DC as in forward_block, colors' sums in gcol.
template <int DC, bool Wide>
inline void backward_block(const Lanes<Wide>& L, float ca, float cb, float cc, float op, const float* cg, int64_t D,
                           int32_t kk, float* T, const float* Tf, const float* va, const int32_t* last,
                           const float* vc, float* acc, GaussianGrad& gg, vf* gcol) {
    const vf dx = L.dx, dy = L.dy;
    const vf sigma = 0.5f * (ca * dx * dx + cc * dy * dy) + cb * dx * dy;
    const vf vis = exp_neg(-sigma);
    const vf alpha = vmin(splat(kMaxAlpha), op * vis);
    const vi active =
        L.ok & (kk < L.template load<vi>(last)) & (sigma >= 0.0f) & (alpha >= kAlphaThreshold);
    const vf inv = 1.0f / (1.0f - alpha);
    const vf Tp = L.template load<vf>(T);
    const vf Tk = Tp * inv;  // transmittance in front of this Gaussian
    const vf wk = select(active, alpha * Tk, splat(0.0f));
    vf v_alpha = L.template load<vf>(va) * L.template load<vf>(Tf) * inv;
    const int64_t Dn = DC > 0 ? DC : D;
    for (int64_t d = 0; d < Dn; ++d) {
        const float* vd = vc + d * kPixAlloc;
        float* ad = acc + d * kPixAlloc;
        const vf v = L.template load<vf>(vd), a = L.template load<vf>(ad);
        gcol[d] += wk * v;
        v_alpha += v * (cg[d] * Tk - a * inv);
        L.store(ad, a + cg[d] * wk);
    }
    L.store(T, select(active, Tk, Tp));
    const vi unclamped = active & (op * vis < kMaxAlpha);
    v_alpha = select(unclamped, v_alpha, splat(0.0f));
    const vf v_sigma = -op * vis * v_alpha;
    const vf vx = v_sigma * dx, vy = v_sigma * dy;
    gg.mx += vx;
    gg.my += vy;
    gg.xx += vx * dx;
    gg.xy += vx * dy;
    gg.yy += vy * dy;
    gg.op += vis * v_alpha;
}

}  // namespace

// Stable ascending argsort of each row of `depths` [C, N] (float32) -> int64 [C, N]: an LSD radix
// sort over the order-preserving unsigned image of the float bits (three 11-bit passes), the same
// order as torch.argsort(stable=True) for finite keys. Rows are sorted in parallel.
torch::Tensor depth_order(const torch::Tensor& depths) {
    TORCH_CHECK(depths.dim() == 2 && depths.scalar_type() == torch::kFloat32 && depths.is_contiguous(),
                "depths must be a contiguous float32 [C, N] tensor");
    const int64_t C = depths.size(0), N = depths.size(1);
    torch::Tensor order = torch::empty({C, N}, torch::TensorOptions().dtype(torch::kInt64));
    const uint32_t* keys_in = reinterpret_cast<const uint32_t*>(depths.data_ptr<float>());
    int64_t* out = order.data_ptr<int64_t>();
    constexpr int kBits = 11, kBuckets = 1 << kBits;
#pragma omp parallel for schedule(static) if (C > 1)
    for (int64_t c = 0; c < C; ++c) {
        std::vector<uint32_t> key(N), key2(N);
        std::vector<int32_t> idx(N), idx2(N);
        for (int64_t n = 0; n < N; ++n) {
            const uint32_t b = keys_in[c * N + n];
            key[n] = (b & 0x80000000u) ? ~b : (b | 0x80000000u);  // flip: unsigned order == float order
            idx[n] = static_cast<int32_t>(n);
        }
        for (int pass = 0; pass < 3; ++pass) {
            const int shift = pass * kBits;
            int64_t count[kBuckets + 1] = {0};
            for (int64_t n = 0; n < N; ++n) ++count[((key[n] >> shift) & (kBuckets - 1)) + 1];
            for (int b = 0; b < kBuckets; ++b) count[b + 1] += count[b];
            for (int64_t n = 0; n < N; ++n) {
                const int64_t dst = count[(key[n] >> shift) & (kBuckets - 1)]++;
                key2[dst] = key[n];
                idx2[dst] = idx[n];
            }
            key.swap(key2);
            idx.swap(idx2);
        }
        for (int64_t n = 0; n < N; ++n) out[c * N + n] = idx[n];
    }
    return order;
}

namespace {

// Composites one Gaussian over its blocks in a tile; returns how many pixels stopped.
template <int DC>
int forward_gaussian(const Blocks& B, float ca, float cb, float cc, float op, const float* cg, int64_t D,
                     int32_t kk, float* T, int32_t* last, float* acc) {
    vi stops{};
    for (int i = 0; i < B.n_wide; ++i)
        stops += forward_block<DC>(Lanes<true>(B, i), ca, cb, cc, op, cg, D, kk, T, last, acc);
    for (int i = 0; i < B.n_seg; i += 2)
        stops += forward_block<DC>(Lanes<false>(B, i), ca, cb, cc, op, cg, D, kk, T, last, acc);
    return -hsum(stops);
}

// The gradient of one Gaussian over its blocks in a tile (walked back to front) into its slot:
// mx, my, a, b, c, opacity, colors[D].
template <int DC>
void backward_gaussian(const Blocks& B, float ca, float cb, float cc, float op, const float* cg, int64_t D,
                       int32_t kk, float* T, const float* Tf, const float* va, const int32_t* last, const float* vc,
                       float* acc, vf* gcol_any, float* slot) {
    GaussianGrad gg;
    vf gcol_fixed[DC > 0 ? DC : 1] = {};
    vf* gcol = DC > 0 ? gcol_fixed : gcol_any;
    const int64_t Dn = DC > 0 ? DC : D;
    for (int64_t d = 0; d < Dn; ++d) gcol[d] = vf{};
    for (int i = 0; i < B.n_wide; ++i)
        backward_block<DC>(Lanes<true>(B, i), ca, cb, cc, op, cg, D, kk, T, Tf, va, last, vc, acc, gg, gcol);
    for (int i = 0; i < B.n_seg; i += 2)
        backward_block<DC>(Lanes<false>(B, i), ca, cb, cc, op, cg, D, kk, T, Tf, va, last, vc, acc, gg, gcol);
    const float sx = hsum(gg.mx), sy = hsum(gg.my);
    slot[0] = ca * sx + cb * sy;
    slot[1] = cb * sx + cc * sy;
    slot[2] = 0.5f * hsum(gg.xx);
    slot[3] = hsum(gg.xy);
    slot[4] = 0.5f * hsum(gg.yy);
    slot[5] = hsum(gg.op);
    for (int64_t d = 0; d < Dn; ++d) slot[6 + d] = hsum(gcol[d]);
}

}  // namespace

// Forward. Returns {colors [C,H,W,D], alphas [C,H,W,1], tile_offsets [C*T+1] int64,
// flat_ids [M] int32, last_ids [C,H,W] int32 (number of list entries a pixel walked, exclusive)}.
std::vector<torch::Tensor> rasterize_forward(const torch::Tensor& means2d,    // [C, N, 2]
                                             const torch::Tensor& conics,     // [C, N, 3]
                                             const torch::Tensor& colors,     // [C, N, D]
                                             const torch::Tensor& opacities,  // [C, N]
                                             const torch::Tensor& radii,      // [C, N, 2] int32
                                             const torch::Tensor& order,      // [C, N] int64
                                             int64_t width, int64_t height, int64_t tile_size) {
    TORCH_CHECK(means2d.is_contiguous() && conics.is_contiguous() && colors.is_contiguous() &&
                    opacities.is_contiguous() && radii.is_contiguous() && order.is_contiguous(),
                "inputs must be contiguous");
    const int64_t C = means2d.size(0), N = means2d.size(1), D = colors.size(2);
    TORCH_CHECK(tile_size == kTile, "the CPU rasterizer uses 16x16 tiles");
    const int W = static_cast<int>(width), H = static_cast<int>(height), TS = kTile;
    const float* m2d = means2d.data_ptr<float>();
    const int32_t* rad = radii.data_ptr<int32_t>();
    const float* con = conics.data_ptr<float>();
    const float* col = colors.data_ptr<float>();
    const float* opa = opacities.data_ptr<float>();

    std::vector<TileRange> ranges(C * N);
    const std::vector<PackedGaussian> pk = pack_gaussians(m2d, con, opa, rad, C * N, W, H, ranges.data());
    Binning bins = bin_gaussians(ranges.data(), order.data_ptr<int64_t>(), C, N, W, H);
    const int tiles_x = (W + TS - 1) / TS, tiles_y = (H + TS - 1) / TS;
    const int64_t tiles = static_cast<int64_t>(tiles_x) * tiles_y;

    auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
    torch::Tensor out_colors = torch::empty({C, H, W, D}, f32);  // every pixel is written below
    torch::Tensor out_alphas = torch::empty({C, H, W, 1}, f32);
    torch::Tensor last_ids = torch::empty({C, H, W}, torch::TensorOptions().dtype(torch::kInt32));
    float* oc = out_colors.data_ptr<float>();
    float* oa = out_alphas.data_ptr<float>();
    int32_t* ol = last_ids.data_ptr<int32_t>();
    const int64_t* offs = bins.tile_offsets.data_ptr<int64_t>();
    const int32_t* ids = bins.flat_ids.data_ptr<int32_t>();

#pragma omp parallel
    {
        // Tile-local pixel state (row stride kStride); pixels past the image edge start stopped.
        alignas(64) float T[kPixAlloc];
        alignas(64) int32_t last[kPixAlloc];
        std::vector<float> acc(kPixAlloc * D);
        bool row_live[kTile];  // some pixel of the row has not stopped
        Blocks S;
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < C * tiles; ++t) {
            const int64_t c = t / tiles;
            const int tile = static_cast<int>(t % tiles);
            const int tx0 = (tile % tiles_x) * kTile, ty0 = (tile / tiles_x) * kTile;
            const int tw = std::min(kTile, W - tx0), th = std::min(kTile, H - ty0);
            std::fill(T, T + kPixAlloc, 1.0f);
            std::fill(last, last + kPixAlloc, -1);
            for (int y = 0; y < th; ++y) std::fill(last + y * kStride, last + y * kStride + tw, 0);
            for (int y = 0; y < kTile; ++y) row_live[y] = y < th;
            std::fill(acc.begin(), acc.end(), 0.0f);
            int n_live = tw * th;
            const int64_t start = offs[t], end = offs[t + 1];
            for (int64_t k = start; k < end && n_live > 0; ++k) {
                if (k + kPrefetch < end) {  // the list is in depth order, i.e. at random addresses
                    const int64_t ga = c * N + ids[k + kPrefetch];
                    __builtin_prefetch(&pk[ga]);
                    __builtin_prefetch(col + ga * D);
                }
                const int64_t g = c * N + ids[k];
                const PackedGaussian& P = pk[g];
                const PixelRect r = tile_rect(P.rect, tx0, ty0);
                if (r.y0 > r.y1) continue;
                alignas(64) int32_t row_lo[kTile], row_hi[kTile];
                P.spans.tile_rows(P.my, P.mx, tx0, ty0, r, row_lo, row_hi);
                S.n_wide = S.n_seg = 0;
                const float fx0 = P.mx - (tx0 + 0.5f);
                for (int y = r.y0; y <= r.y1; ++y) {
                    if (!row_live[y]) continue;
                    S.add_row(y, row_lo[y - r.y0], row_hi[y - r.y0], fx0, P.my - (ty0 + y + 0.5f));
                }
                if (S.n_wide + S.n_seg == 0) continue;
                S.pad();
                const float* cg = col + g * D;
                const int32_t kk = static_cast<int32_t>(k - start + 1);
                float* A = acc.data();
                int n_stop;
                switch (D) {
                    case 1: n_stop = forward_gaussian<1>(S, P.ca, P.cb, P.cc, P.op, cg, D, kk, T, last, A); break;
                    case 2: n_stop = forward_gaussian<2>(S, P.ca, P.cb, P.cc, P.op, cg, D, kk, T, last, A); break;
                    case 3: n_stop = forward_gaussian<3>(S, P.ca, P.cb, P.cc, P.op, cg, D, kk, T, last, A); break;
                    case 4: n_stop = forward_gaussian<4>(S, P.ca, P.cb, P.cc, P.op, cg, D, kk, T, last, A); break;
                    default: n_stop = forward_gaussian<0>(S, P.ca, P.cb, P.cc, P.op, cg, D, kk, T, last, A);
                }
                if (n_stop > 0) {
                    n_live -= n_stop;
                    for (int y = r.y0; y <= r.y1; ++y) {
                        int live = 0;
                        for (int x = 0; x < kTile; ++x) live |= last[y * kStride + x] >= 0;
                        row_live[y] = live != 0;
                    }
                }
            }
            for (int y = 0; y < th; ++y) {
                for (int x = 0; x < tw; ++x) {
                    const int p = y * kStride + x;
                    const int64_t pix = (c * H + ty0 + y) * W + tx0 + x;
                    for (int64_t d = 0; d < D; ++d) oc[pix * D + d] = acc[d * kPixAlloc + p];
                    oa[pix] = 1.0f - T[p];
                    ol[pix] = last[p] < 0 ? ~last[p] : last[p];
                }
            }
        }
    }
    return {out_colors, out_alphas, bins.tile_offsets, bins.flat_ids, last_ids};
}

// Backward. Gradients land first in one slot per intersection (race-free and deterministic),
// then are summed per Gaussian. Returns {v_means2d [C,N,2], v_conics [C,N,3], v_colors [C,N,D],
// v_opacities [C,N]}.
std::vector<torch::Tensor> rasterize_backward(const torch::Tensor& means2d,       // [C, N, 2]
                                              const torch::Tensor& conics,        // [C, N, 3]
                                              const torch::Tensor& colors,        // [C, N, D]
                                              const torch::Tensor& opacities,     // [C, N]
                                              const torch::Tensor& radii,         // [C, N, 2] int32
                                              const torch::Tensor& tile_offsets,  // [C*T+1] int64
                                              const torch::Tensor& flat_ids,      // [M] int32
                                              const torch::Tensor& render_alphas, // [C, H, W, 1]
                                              const torch::Tensor& last_ids,      // [C, H, W] int32
                                              const torch::Tensor& v_colors_out,  // [C, H, W, D]
                                              const torch::Tensor& v_alphas_out,  // [C, H, W, 1]
                                              int64_t width, int64_t height, int64_t tile_size) {
    const int64_t C = means2d.size(0), N = means2d.size(1), D = colors.size(2);
    TORCH_CHECK(tile_size == kTile, "the CPU rasterizer uses 16x16 tiles");
    const int W = static_cast<int>(width), H = static_cast<int>(height), TS = kTile;
    const int tiles_x = (W + TS - 1) / TS, tiles_y = (H + TS - 1) / TS;
    const int64_t tiles = static_cast<int64_t>(tiles_x) * tiles_y;
    const float* m2d = means2d.data_ptr<float>();
    const float* con = conics.data_ptr<float>();
    const float* col = colors.data_ptr<float>();
    const float* opa = opacities.data_ptr<float>();
    const int32_t* rad = radii.data_ptr<int32_t>();
    const int64_t* offs = tile_offsets.data_ptr<int64_t>();
    const int32_t* ids = flat_ids.data_ptr<int32_t>();
    const float* ra = render_alphas.data_ptr<float>();
    const int32_t* la = last_ids.data_ptr<int32_t>();
    const float* vco = v_colors_out.data_ptr<float>();
    const float* vao = v_alphas_out.data_ptr<float>();
    const int64_t M = flat_ids.size(0);
    const std::vector<PackedGaussian> pk = pack_gaussians(m2d, con, opa, rad, C * N, W, H);
    const int64_t slot_size = 6 + D;  // per-intersection slot: mx, my, a, b, c, opacity, colors[D]
    // Every slot is written below (entries a tile never walked get zeros), so no zero-fill here.
    std::unique_ptr<float[]> slots(new float[std::max<int64_t>(1, M * slot_size)]);

#pragma omp parallel
    {
        alignas(64) float T[kPixAlloc], Tf[kPixAlloc], va[kPixAlloc];
        alignas(64) int32_t last[kPixAlloc];
        int32_t row_last[kTile];
        std::vector<float> acc(kPixAlloc * D), vc(kPixAlloc * D);
        std::vector<vf> gcol(D);
        Blocks S;
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < C * tiles; ++t) {
            const int64_t c = t / tiles;
            const int tile = static_cast<int>(t % tiles);
            const int tx0 = (tile % tiles_x) * kTile, ty0 = (tile / tiles_x) * kTile;
            const int tw = std::min(kTile, W - tx0), th = std::min(kTile, H - ty0);
            int32_t max_last = 0;
            std::fill(acc.begin(), acc.end(), 0.0f);
            // Entries outside the image (and the padding) are inert: T = 1, last = 0, zero gradients.
            std::fill(T, T + kPixAlloc, 1.0f);
            std::fill(Tf, Tf + kPixAlloc, 1.0f);
            std::fill(last, last + kPixAlloc, 0);
            std::fill(va, va + kPixAlloc, 0.0f);
            std::fill(vc.begin(), vc.end(), 0.0f);
            std::fill(row_last, row_last + kTile, 0);
            for (int y = 0; y < th; ++y) {
                const int64_t row = (c * H + ty0 + y) * W + tx0;  // first image pixel of the tile row
                const int q = y * kStride;
                int32_t row_max = 0;
                for (int x = 0; x < tw; ++x) {
                    T[q + x] = Tf[q + x] = 1.0f - ra[row + x];
                    last[q + x] = la[row + x];
                    row_max = std::max(row_max, la[row + x]);
                    va[q + x] = vao[row + x];
                }
                for (int64_t d = 0; d < D; ++d)
                    for (int x = 0; x < tw; ++x) vc[d * kPixAlloc + q + x] = vco[(row + x) * D + d];
                row_last[y] = row_max;
                max_last = std::max(max_last, row_max);
            }
            const int64_t start = offs[t];
            std::fill(slots.get() + (start + max_last) * slot_size, slots.get() + offs[t + 1] * slot_size, 0.0f);
            for (int64_t k = start + max_last - 1; k >= start; --k) {
                const int32_t kk = static_cast<int32_t>(k - start);  // pixels with last > kk saw this one
                if (k - kPrefetch >= start) {
                    const int64_t ga = c * N + ids[k - kPrefetch];
                    __builtin_prefetch(&pk[ga]);
                    __builtin_prefetch(col + ga * D);
                }
                const int64_t g = c * N + ids[k];
                const PackedGaussian& P = pk[g];
                const PixelRect r = tile_rect(P.rect, tx0, ty0);
                S.n_wide = S.n_seg = 0;
                if (r.y0 <= r.y1) {
                    alignas(64) int32_t row_lo[kTile], row_hi[kTile];
                    P.spans.tile_rows(P.my, P.mx, tx0, ty0, r, row_lo, row_hi);
                    const float fx0 = P.mx - (tx0 + 0.5f);
                    for (int y = r.y0; y <= r.y1; ++y) {
                        if (kk >= row_last[y]) continue;  // every pixel of this row stopped in front
                        S.add_row(y, row_lo[y - r.y0], row_hi[y - r.y0], fx0, P.my - (ty0 + y + 0.5f));
                    }
                }
                S.pad();
                const float* cg = col + g * D;
                float* slot = slots.get() + k * slot_size;
                float* A = acc.data();
                const float* V = vc.data();
                switch (D) {
                    case 1: backward_gaussian<1>(S, P.ca, P.cb, P.cc, P.op, cg, D, kk, T, Tf, va, last, V, A, gcol.data(), slot); break;
                    case 2: backward_gaussian<2>(S, P.ca, P.cb, P.cc, P.op, cg, D, kk, T, Tf, va, last, V, A, gcol.data(), slot); break;
                    case 3: backward_gaussian<3>(S, P.ca, P.cb, P.cc, P.op, cg, D, kk, T, Tf, va, last, V, A, gcol.data(), slot); break;
                    case 4: backward_gaussian<4>(S, P.ca, P.cb, P.cc, P.op, cg, D, kk, T, Tf, va, last, V, A, gcol.data(), slot); break;
                    default: backward_gaussian<0>(S, P.ca, P.cb, P.cc, P.op, cg, D, kk, T, Tf, va, last, V, A, gcol.data(), slot);
                }
            }
        }
    }

    auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
    torch::Tensor v_means2d = torch::empty({C, N, 2}, f32);
    torch::Tensor v_conics = torch::empty({C, N, 3}, f32);
    torch::Tensor v_colors = torch::empty({C, N, D}, f32);
    torch::Tensor v_opacities = torch::empty({C, N}, f32);
    float* vm = v_means2d.data_ptr<float>();
    float* vcn = v_conics.data_ptr<float>();
    float* vcl = v_colors.data_ptr<float>();
    float* vo = v_opacities.data_ptr<float>();
    // Each thread owns a contiguous range of (camera, Gaussian) outputs and adds the slots of its
    // Gaussians in intersection order: race-free, and the same sums for any number of threads.
    const int64_t CN = C * N;
#pragma omp parallel
    {
        const int th = omp_get_thread_num(), nt = omp_get_num_threads();
        const int64_t g0 = CN * th / nt, g1 = CN * (th + 1) / nt;
        std::fill(vm + 2 * g0, vm + 2 * g1, 0.0f);
        std::fill(vcn + 3 * g0, vcn + 3 * g1, 0.0f);
        std::fill(vcl + D * g0, vcl + D * g1, 0.0f);
        std::fill(vo + g0, vo + g1, 0.0f);
        for (int64_t c = g1 > g0 ? g0 / N : 0; g1 > g0 && c <= (g1 - 1) / N; ++c) {
            for (int64_t k = offs[c * tiles]; k < offs[(c + 1) * tiles]; ++k) {
                const int64_t g = c * N + ids[k];
                if (g < g0 || g >= g1) continue;
                const float* slot = slots.get() + k * slot_size;
                vm[2 * g] += slot[0];
                vm[2 * g + 1] += slot[1];
                vcn[3 * g] += slot[2];
                vcn[3 * g + 1] += slot[3];
                vcn[3 * g + 2] += slot[4];
                vo[g] += slot[5];
                for (int64_t d = 0; d < D; ++d) vcl[g * D + d] += slot[6 + d];
            }
        }
    }
    return {v_means2d, v_conics, v_colors, v_opacities};
}
