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
#include <vector>


namespace {

constexpr float kAlphaThreshold = 1.0f / 255.0f;
constexpr float kTransmittanceEps = 1e-4f;
constexpr float kMaxAlpha = 0.999f;
constexpr int kTile = 16;              // tile side in pixels
constexpr int kBlock = 8;              // pixels per SIMD block (one AVX2 register of floats)
// Tile-local pixel state has rows of kStride = kTile + kBlock entries: a block starts at the first
// pixel of a Gaussian's row span (not at a multiple of 8), and may run into the padding columns,
// which are inert (done / zero gradient). Lanes past the span's end are masked.
constexpr int kStride = kTile + kBlock;
constexpr int kPix = kTile * kStride;  // entries of tile-local state
constexpr int kPrefetch = 4;           // Gaussians of a tile's list fetched ahead of use

// exp(x) for x <= 0 inside `omp simd` loops: 2^t with t = x log2(e) split into an integer n (added
// to the exponent bits) and f in [-0.5, 0.5], where 2^f is a degree-5 polynomial (relative error
// 7.5e-8 on its range; ~4e-7 overall from rounding t), inlined so the loop stays in registers
// instead of calling libmvec. Below -87 it returns ~0 (denormals are flushed), which every caller
// treats as invisible.
inline float exp_neg(float x) {
    const float t = std::max(x, -87.0f) * 1.44269504088896341f;  // exp(x) = 2^t = 2^n 2^f
    const float n = std::nearbyint(t), f = t - n;                  // f in [-0.5, 0.5]
    float p = 1.3276446843519807e-3f;  // near-minimax degree-5 fit of 2^f, relative error 7.5e-8
    p = p * f + 9.675540961325169e-3f;
    p = p * f + 5.550713464617729e-2f;
    p = p * f + 2.4022120237350464e-1f;
    p = p * f + 6.931469440460205e-1f;
    p = p * f + 1.0000001192092896f;
    int32_t bits;
    std::memcpy(&bits, &p, sizeof(bits));
    bits += static_cast<int32_t>(n) << 23;
    float out;
    std::memcpy(&out, &bits, sizeof(out));
    return out;
}

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

    // Visits the tiles of entry e (= c * N + rank) of the depth-sorted list.
    auto visit = [&](int64_t e, auto&& fn) {
        const int64_t c = e / N, n = order[e];
        const TileRange r = ranges[c * N + n];
        for (int ty = r.ty0; ty <= r.ty1; ++ty)
            for (int tx = r.tx0; tx <= r.tx1; ++tx) fn(c * tiles + ty * tiles_x + tx, n);
    };

#pragma omp parallel num_threads(n_threads)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        const int64_t e0 = CN * t / nt, e1 = CN * (t + 1) / nt;
        int64_t* cnt = counts.data() + t * CT;
        for (int64_t e = e0; e < e1; ++e) visit(e, [&](int64_t ct, int64_t) { ++cnt[ct]; });
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
        for (int64_t e = e0; e < e1; ++e)
            visit(e, [&](int64_t ct, int64_t n) { ids[cnt[ct]++] = static_cast<int32_t>(n); });
    }
    return bins;
}


// One 8-pixel block of the forward pass for a Gaussian; DC > 0: channel count known at compile time
// (colors accumulated in the same SIMD loop), DC == 0: any count, accumulated in a second loop.
template <int DC>
inline int forward_block(int p0, int n_lanes, float fx0, float dy, float ca, float cb, float cc, float op,
                         const float* cg, int64_t D, int32_t kk, float* T, float* w, int32_t* last, int32_t* done,
                         float* acc) {
    int n_done = 0;
#pragma omp simd reduction(+ : n_done)
    for (int i = 0; i < kBlock; ++i) {
        const int p = p0 + i;
        const float dx = fx0 - i;
        const float sigma = 0.5f * (ca * dx * dx + cc * dy * dy) + cb * dx * dy;
        const float alpha = std::min(kMaxAlpha, op * exp_neg(-sigma));
        const int32_t valid = (i < n_lanes) & (done[p] == 0) & (sigma >= 0.f) & (alpha >= kAlphaThreshold);
        const float next_T = T[p] * (1.0f - alpha);
        const int32_t stop = valid & (next_T <= kTransmittanceEps);
        const int32_t take = valid & (stop ^ 1);
        n_done += stop;
        done[p] |= stop;
        const float wp = take ? alpha * T[p] : 0.0f;
        w[p] = wp;
        T[p] = take ? next_T : T[p];
        last[p] = take ? kk : last[p];
        for (int d = 0; d < DC; ++d) acc[d * kPix + p] += wp * cg[d];  // DC == 0: second loop below
    }
    if (DC == 0) {
        for (int64_t d = 0; d < D; ++d) {
            const float cd = cg[d];
            float* ad = acc + d * kPix + p0;
#pragma omp simd
            for (int i = 0; i < kBlock; ++i) ad[i] += w[p0 + i] * cd;
        }
    }
    return n_done;
}

// Per-lane gradient sums of one Gaussian over the pixels of a tile; reduced across lanes once.
struct GaussianGrad {
    // backward_block: moments sum(v_sigma dx), sum(v_sigma dy), sum(v_sigma dx^2), sum(v_sigma dx dy),
    // sum(v_sigma dy^2) (the mean and conic gradients are linear in them), opacity, color 0..3;
    // backward_block_any: mx, my, a, b, c, opacity in lane 0 of each row.
    alignas(32) float lane[10][kBlock];
    void clear() { std::fill(&lane[0][0], &lane[0][0] + 10 * kBlock, 0.0f); }
    float sum(int j) const {
        float s = 0.0f;
        for (int i = 0; i < kBlock; ++i) s += lane[j][i];
        return s;
    }
};

// One 8-pixel block of the backward pass (back to front), channels known at compile time (1..4).
template <int DC>
inline void backward_block(int p0, int n_lanes, float fx0, float dy, float ca, float cb, float cc, float op, const float* cg,
                           int32_t kk, float* T, const float* Tf, const float* va, const int32_t* last,
                           const float* vc, float* acc, GaussianGrad& gg) {
    float cgd[4] = {0.f, 0.f, 0.f, 0.f};
    for (int d = 0; d < DC; ++d) cgd[d] = cg[d];
    float* __restrict__ L = &gg.lane[0][0];
#pragma omp simd
    for (int i = 0; i < kBlock; ++i) {
        const int p = p0 + i;
        const float dx = fx0 - i;
        const float sigma = 0.5f * (ca * dx * dx + cc * dy * dy) + cb * dx * dy;
        const float vis = exp_neg(-sigma);
        const float alpha = std::min(kMaxAlpha, op * vis);
        const bool active = (i < n_lanes) & (kk < last[p]) & (sigma >= 0.f) & (alpha >= kAlphaThreshold);
        const float inv = 1.0f / (1.0f - alpha);
        const float Tk = T[p] * inv;  // transmittance in front of this Gaussian
        const float wk = active ? alpha * Tk : 0.0f;
        float v_alpha = va[p] * Tf[p] * inv;
        for (int d = 0; d < DC; ++d) {  // DC is a compile-time constant: unrolled
            const float v = vc[d * kPix + p];
            L[(6 + d) * kBlock + i] += wk * v;
            v_alpha += v * (cgd[d] * Tk - acc[d * kPix + p] * inv);
            acc[d * kPix + p] += cgd[d] * wk;
        }
        T[p] = active ? Tk : T[p];
        const bool unclamped = active & (op * vis < kMaxAlpha);
        v_alpha = unclamped ? v_alpha : 0.0f;
        const float v_sigma = -op * vis * v_alpha;
        const float vx = v_sigma * dx, vy = v_sigma * dy;  // moments of v_sigma (see GaussianGrad)
        L[0 * kBlock + i] += vx;
        L[1 * kBlock + i] += vy;
        L[2 * kBlock + i] += vx * dx;
        L[3 * kBlock + i] += vx * dy;
        L[4 * kBlock + i] += vy * dy;
        L[5 * kBlock + i] += vis * v_alpha;
    }
}

// Backward block for any channel count (feature rendering): three SIMD passes through scratch.
inline void backward_block_any(int p0, int n_lanes, float fx0, float dy, float ca, float cb, float cc, float op, const float* cg,
                               int64_t D, int32_t kk, float* T, const float* Tf, const float* va,
                               const int32_t* last, const float* vc, float* acc, GaussianGrad& gg, float* gcol) {
    alignas(64) float b_active[kBlock], b_Tk[kBlock], b_wk[kBlock], b_inv[kBlock], b_valpha[kBlock], b_vis[kBlock];
#pragma omp simd
    for (int i = 0; i < kBlock; ++i) {
        const int p = p0 + i;
        const float dx = fx0 - i;
        const float sigma = 0.5f * (ca * dx * dx + cc * dy * dy) + cb * dx * dy;
        const float vis = exp_neg(-sigma);
        const float alpha = std::min(kMaxAlpha, op * vis);
        const bool active = (i < n_lanes) & (kk < last[p]) & (sigma >= 0.f) & (alpha >= kAlphaThreshold);
        const float inv = 1.0f / (1.0f - alpha);
        b_vis[i] = vis;
        b_active[i] = active ? 1.0f : 0.0f;
        b_inv[i] = inv;
        b_Tk[i] = T[p] * inv;
        b_wk[i] = active ? alpha * T[p] * inv : 0.0f;
        b_valpha[i] = va[p] * Tf[p] * inv;
    }
    for (int64_t d = 0; d < D; ++d) {
        const float cd = cg[d];
        float* ad = acc + d * kPix + p0;
        const float* vd = vc + d * kPix + p0;
        float gd = 0.0f;
#pragma omp simd reduction(+ : gd)
        for (int i = 0; i < kBlock; ++i) {
            gd += b_wk[i] * vd[i];
            b_valpha[i] += vd[i] * (cd * b_Tk[i] - ad[i] * b_inv[i]);
            ad[i] += cd * b_wk[i];
        }
        gcol[d] += gd;
    }
    float g_mx = 0, g_my = 0, g_a = 0, g_b = 0, g_c = 0, g_op = 0;
#pragma omp simd reduction(+ : g_mx, g_my, g_a, g_b, g_c, g_op)
    for (int i = 0; i < kBlock; ++i) {
        const int p = p0 + i;
        const float dx = fx0 - i;
        const float vis = b_vis[i];
        const bool active = b_active[i] > 0.5f;
        const bool unclamped = active & (op * vis < kMaxAlpha);
        T[p] = active ? b_Tk[i] : T[p];
        const float v_alpha = unclamped ? b_valpha[i] : 0.0f;
        const float v_sigma = -op * vis * v_alpha;
        g_mx += v_sigma * (ca * dx + cb * dy);
        g_my += v_sigma * (cb * dx + cc * dy);
        g_a += v_sigma * 0.5f * dx * dx;
        g_b += v_sigma * dx * dy;
        g_c += v_sigma * 0.5f * dy * dy;
        g_op += vis * v_alpha;
    }
    gg.lane[0][0] += g_mx;
    gg.lane[1][0] += g_my;
    gg.lane[2][0] += g_a;
    gg.lane[3][0] += g_b;
    gg.lane[4][0] += g_c;
    gg.lane[5][0] += g_op;
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
        // Tile-local pixel state, row stride kStride; pixels past the image edge are computed and dropped.
        alignas(64) float T[kPix], w[kPix];
        alignas(64) int32_t last[kPix], done[kPix];
        std::vector<float> acc(kPix * D);
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < C * tiles; ++t) {
            const int64_t c = t / tiles;
            const int tile = static_cast<int>(t % tiles);
            const int tx0 = (tile % tiles_x) * kTile, ty0 = (tile / tiles_x) * kTile;
            const int tw = std::min(kTile, W - tx0), th = std::min(kTile, H - ty0);
            int n_done = 0;
            for (int p = 0; p < kPix; ++p) {
                const bool inside = (p % kStride) < tw && (p / kStride) < th;
                T[p] = 1.0f;
                last[p] = 0;
                done[p] = inside ? 0 : 1;
                n_done += inside ? 0 : 1;
            }
            std::fill(acc.begin(), acc.end(), 0.0f);
            const int64_t start = offs[t], end = offs[t + 1];
            for (int64_t k = start; k < end && n_done < kPix; ++k) {
                if (k + kPrefetch < end) {  // the list is in depth order, i.e. at random addresses
                    const int64_t ga = c * N + ids[k + kPrefetch];
                    __builtin_prefetch(&pk[ga]);
                    __builtin_prefetch(col + ga * D);
                }
                const int64_t g = c * N + ids[k];
                const PackedGaussian& P = pk[g];
                const float mx = P.mx, my = P.my, ca = P.ca, cb = P.cb, cc = P.cc, op = P.op;
                const PixelRect r = tile_rect(P.rect, tx0, ty0);
                const RowSpans& spans = P.spans;
                const float* cg = col + g * D;
                const int32_t kk = static_cast<int32_t>(k - start + 1);
                alignas(64) int32_t row_lo[kTile], row_hi[kTile];
                if (r.y0 <= r.y1) spans.tile_rows(my, mx, tx0, ty0, r, row_lo, row_hi);
                for (int y = r.y0; y <= r.y1; ++y) {
                    const float dy = my - (ty0 + y + 0.5f);
                    const int lo = row_lo[y - r.y0], hi = row_hi[y - r.y0];
                    for (int x = lo; x <= hi; x += kBlock) {
                        const int p0 = y * kStride + x, nl = hi - x + 1;
                        int all_done = 1;
                        for (int i = 0; i < kBlock; ++i) all_done &= done[p0 + i];
                        if (all_done) continue;
                        const float fx0 = mx - (tx0 + x + 0.5f);
                        float* A = acc.data();
                        switch (D) {
                            case 1: n_done += forward_block<1>(p0, nl, fx0, dy, ca, cb, cc, op, cg, D, kk, T, w, last, done, A); break;
                            case 2: n_done += forward_block<2>(p0, nl, fx0, dy, ca, cb, cc, op, cg, D, kk, T, w, last, done, A); break;
                            case 3: n_done += forward_block<3>(p0, nl, fx0, dy, ca, cb, cc, op, cg, D, kk, T, w, last, done, A); break;
                            case 4: n_done += forward_block<4>(p0, nl, fx0, dy, ca, cb, cc, op, cg, D, kk, T, w, last, done, A); break;
                            default: n_done += forward_block<0>(p0, nl, fx0, dy, ca, cb, cc, op, cg, D, kk, T, w, last, done, A);
                        }
                    }
                }
            }
            for (int y = 0; y < th; ++y) {
                for (int x = 0; x < tw; ++x) {
                    const int p = y * kStride + x;
                    const int64_t pix = (c * H + ty0 + y) * W + tx0 + x;
                    for (int64_t d = 0; d < D; ++d) oc[pix * D + d] = acc[d * kPix + p];
                    oa[pix] = 1.0f - T[p];
                    ol[pix] = last[p];
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
    const int64_t S = 6 + D;  // per-intersection slot: mx, my, a, b, c, opacity, colors[D]
    // Every slot is written below (entries a tile never walked get zeros), so no zero-fill here.
    std::unique_ptr<float[]> slots(new float[std::max<int64_t>(1, M * S)]);

#pragma omp parallel
    {
        alignas(64) float T[kPix], Tf[kPix], va[kPix];
        alignas(64) int32_t last[kPix];
        int32_t row_last[kTile];
        GaussianGrad gg;
        std::vector<float> acc(kPix * D), vc(kPix * D);
        std::vector<float> gcol(D);
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < C * tiles; ++t) {
            const int64_t c = t / tiles;
            const int tile = static_cast<int>(t % tiles);
            const int tx0 = (tile % tiles_x) * kTile, ty0 = (tile / tiles_x) * kTile;
            const int tw = std::min(kTile, W - tx0), th = std::min(kTile, H - ty0);
            int32_t max_last = 0;
            std::fill(acc.begin(), acc.end(), 0.0f);
            for (int p = 0; p < kPix; ++p) {
                const int y = p / kStride, x = p % kStride;
                const bool inside = x < tw && y < th;
                const int64_t pix = (c * H + ty0 + y) * W + tx0 + x;
                T[p] = inside ? 1.0f - ra[pix] : 1.0f;
                Tf[p] = T[p];
                last[p] = inside ? la[pix] : 0;
                max_last = std::max(max_last, last[p]);
                va[p] = inside ? vao[pix] : 0.0f;
                for (int64_t d = 0; d < D; ++d) vc[d * kPix + p] = inside ? vco[pix * D + d] : 0.0f;
            }
            for (int y = 0; y < kTile; ++y) {
                row_last[y] = 0;
                for (int x = 0; x < kTile; ++x) row_last[y] = std::max(row_last[y], last[y * kStride + x]);
            }
            const int64_t start = offs[t];
            std::fill(slots.get() + (start + max_last) * S, slots.get() + offs[t + 1] * S, 0.0f);
            for (int64_t k = start + max_last - 1; k >= start; --k) {
                const int32_t kk = static_cast<int32_t>(k - start);  // pixels with last > kk saw this one
                if (k - kPrefetch >= start) {
                    const int64_t ga = c * N + ids[k - kPrefetch];
                    __builtin_prefetch(&pk[ga]);
                    __builtin_prefetch(col + ga * D);
                }
                const int64_t g = c * N + ids[k];
                const PackedGaussian& P = pk[g];
                const float mx = P.mx, my = P.my, ca = P.ca, cb = P.cb, cc = P.cc, op = P.op;
                const PixelRect r = tile_rect(P.rect, tx0, ty0);
                const RowSpans& spans = P.spans;
                const float* cg = col + g * D;
                gg.clear();
                std::fill(gcol.begin(), gcol.end(), 0.0f);
                alignas(64) int32_t row_lo[kTile], row_hi[kTile];
                if (r.y0 <= r.y1) spans.tile_rows(my, mx, tx0, ty0, r, row_lo, row_hi);
                for (int y = r.y0; y <= r.y1; ++y) {
                    if (kk >= row_last[y]) continue;  // every pixel of this row stopped in front
                    const float dy = my - (ty0 + y + 0.5f);
                    const int lo = row_lo[y - r.y0], hi = row_hi[y - r.y0];
                    for (int x = lo; x <= hi; x += kBlock) {
                        const int p0 = y * kStride + x, nl = hi - x + 1;
                        const float fx0 = mx - (tx0 + x + 0.5f);
                        float* A = acc.data();
                        const float* V = vc.data();
                        switch (D) {
                            case 1: backward_block<1>(p0, nl, fx0, dy, ca, cb, cc, op, cg, kk, T, Tf, va, last, V, A, gg); break;
                            case 2: backward_block<2>(p0, nl, fx0, dy, ca, cb, cc, op, cg, kk, T, Tf, va, last, V, A, gg); break;
                            case 3: backward_block<3>(p0, nl, fx0, dy, ca, cb, cc, op, cg, kk, T, Tf, va, last, V, A, gg); break;
                            case 4: backward_block<4>(p0, nl, fx0, dy, ca, cb, cc, op, cg, kk, T, Tf, va, last, V, A, gg); break;
                            default: backward_block_any(p0, nl, fx0, dy, ca, cb, cc, op, cg, D, kk, T, Tf, va, last, V, A, gg, gcol.data());
                        }
                    }
                }
                float* slot = slots.get() + k * S;
                if (D <= 4) {  // lanes 0-4 hold moments: sums of v_sigma dx, v_sigma dy, v_sigma dx^2, ..dx dy, ..dy^2
                    const float sx = gg.sum(0), sy = gg.sum(1);
                    slot[0] = ca * sx + cb * sy;
                    slot[1] = cb * sx + cc * sy;
                    slot[2] = 0.5f * gg.sum(2);
                    slot[3] = gg.sum(3);
                    slot[4] = 0.5f * gg.sum(4);
                    slot[5] = gg.sum(5);
                } else {
                    for (int j = 0; j < 6; ++j) slot[j] = gg.sum(j);
                }
                for (int64_t d = 0; d < D; ++d) slot[6 + d] = D <= 4 ? gg.sum(6 + static_cast<int>(d)) : gcol[d];
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
        for (int64_t c = g0 / N; g1 > g0 && c <= (g1 - 1) / N; ++c) {
            for (int64_t k = offs[c * tiles]; k < offs[(c + 1) * tiles]; ++k) {
                const int64_t g = c * N + ids[k];
                if (g < g0 || g >= g1) continue;
                const float* slot = slots.get() + k * S;
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
