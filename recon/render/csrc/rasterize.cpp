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
#include <vector>


namespace {

constexpr float kAlphaThreshold = 1.0f / 255.0f;
constexpr float kTransmittanceEps = 1e-4f;
constexpr float kMaxAlpha = 0.999f;
constexpr int kTile = 16;              // tile side in pixels
constexpr int kPix = kTile * kTile;    // pixels per tile
constexpr int kBlock = 8;              // pixels per SIMD block (one AVX2 register of floats)

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

// The Gaussian's pixel rectangle inside the tile at (tx0, ty0), in tile-local coordinates.
inline PixelRect tile_rect(float mx, float my, int rx, int ry, int width, int height, int tx0, int ty0) {
    PixelRect r = gaussian_pixel_rect(mx, my, rx, ry, width, height);
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
    RowSpans(float ca, float cb, float cc, float opacity) {
        const float L = std::log(255.0f * opacity) * 1.001f + 1e-3f;
        k1 = -cb / ca;
        k2 = (cb * cb - ca * cc) / (ca * ca);
        k3 = 2.0f * L / ca;
    }
    // Tile-local pixel range [lo, hi] of the row, clipped to [x0, x1]; false when empty.
    inline bool span(float dy, float mx, int tx0, int x0, int x1, int& lo, int& hi) const {
        const float disc = k2 * dy * dy + k3;
        if (disc < 0.f) return false;
        const float root = std::sqrt(disc), mid = mx - k1 * dy - 0.5f - tx0;
        lo = std::max(x0, static_cast<int>(std::ceil(mid - root - 0.01f)));
        hi = std::min(x1, static_cast<int>(std::floor(mid + root + 0.01f)));
        return lo <= hi;
    }
};

struct Binning {
    std::vector<int64_t> tile_offsets;  // [C * tiles + 1]
    std::vector<int32_t> flat_ids;      // [M] Gaussian index inside its camera
};

// Buckets Gaussians by tile in depth order. `order` is [C, N]: per camera, Gaussian ids by depth.
Binning bin_gaussians(const float* means2d, const int32_t* radii, const int64_t* order, int64_t C, int64_t N,
                      int width, int height, int tile_size) {
    const int tiles_x = (width + tile_size - 1) / tile_size;
    const int tiles_y = (height + tile_size - 1) / tile_size;
    const int64_t tiles = static_cast<int64_t>(tiles_x) * tiles_y;
    Binning bins;
    bins.tile_offsets.assign(C * tiles + 1, 0);
    std::vector<int64_t> counts(C * tiles, 0);

#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
        int64_t* cnt = counts.data() + c * tiles;
        for (int64_t n = 0; n < N; ++n) {
            const int64_t g = c * N + n;
            const int rx = radii[2 * g], ry = radii[2 * g + 1];
            if (rx <= 0 || ry <= 0) continue;
            const PixelRect r = gaussian_pixel_rect(means2d[2 * g], means2d[2 * g + 1], rx, ry, width, height);
            if (r.x0 > r.x1 || r.y0 > r.y1) continue;
            for (int ty = r.y0 / tile_size; ty <= r.y1 / tile_size; ++ty)
                for (int tx = r.x0 / tile_size; tx <= r.x1 / tile_size; ++tx) ++cnt[ty * tiles_x + tx];
        }
    }
    for (int64_t t = 0; t < C * tiles; ++t) bins.tile_offsets[t + 1] = bins.tile_offsets[t] + counts[t];
    bins.flat_ids.resize(bins.tile_offsets.back());

#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
        std::vector<int64_t> cursor(bins.tile_offsets.begin() + c * tiles,
                                    bins.tile_offsets.begin() + (c + 1) * tiles);
        for (int64_t k = 0; k < N; ++k) {
            const int64_t n = order[c * N + k];
            const int64_t g = c * N + n;
            const int rx = radii[2 * g], ry = radii[2 * g + 1];
            if (rx <= 0 || ry <= 0) continue;
            const PixelRect r = gaussian_pixel_rect(means2d[2 * g], means2d[2 * g + 1], rx, ry, width, height);
            if (r.x0 > r.x1 || r.y0 > r.y1) continue;
            for (int ty = r.y0 / tile_size; ty <= r.y1 / tile_size; ++ty)
                for (int tx = r.x0 / tile_size; tx <= r.x1 / tile_size; ++tx)
                    bins.flat_ids[cursor[ty * tiles_x + tx]++] = static_cast<int32_t>(n);
        }
    }
    return bins;
}


// One 8-pixel block of the forward pass for a Gaussian; DC > 0: channel count known at compile time
// (colors accumulated in the same SIMD loop), DC == 0: any count, accumulated in a second loop.
template <int DC>
inline int forward_block(int p0, float fx0, float dy, float ca, float cb, float cc, float op,
                         const float* cg, int64_t D, int32_t kk, float* T, float* w, int32_t* last, int32_t* done,
                         float* acc) {
    int n_done = 0;
#pragma omp simd reduction(+ : n_done)
    for (int i = 0; i < kBlock; ++i) {
        const int p = p0 + i;
        const float dx = fx0 - i;
        const float sigma = 0.5f * (ca * dx * dx + cc * dy * dy) + cb * dx * dy;
        const float alpha = std::min(kMaxAlpha, op * std::exp(-sigma));
        const int32_t valid = (done[p] == 0) & (sigma >= 0.f) & (alpha >= kAlphaThreshold);
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
    alignas(32) float lane[10][kBlock];  // mx, my, a, b, c, opacity, color 0..3
    void clear() { std::fill(&lane[0][0], &lane[0][0] + 10 * kBlock, 0.0f); }
    float sum(int j) const {
        float s = 0.0f;
        for (int i = 0; i < kBlock; ++i) s += lane[j][i];
        return s;
    }
};

// One 8-pixel block of the backward pass (back to front), channels known at compile time (1..4).
template <int DC>
inline void backward_block(int p0, float fx0, float dy, float ca, float cb, float cc, float op, const float* cg,
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
        const float vis = std::exp(-sigma);
        const float alpha = std::min(kMaxAlpha, op * vis);
        const bool active = (kk < last[p]) & (sigma >= 0.f) & (alpha >= kAlphaThreshold);
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
        L[0 * kBlock + i] += v_sigma * (ca * dx + cb * dy);
        L[1 * kBlock + i] += v_sigma * (cb * dx + cc * dy);
        L[2 * kBlock + i] += v_sigma * 0.5f * dx * dx;
        L[3 * kBlock + i] += v_sigma * dx * dy;
        L[4 * kBlock + i] += v_sigma * 0.5f * dy * dy;
        L[5 * kBlock + i] += vis * v_alpha;
    }
}

// Backward block for any channel count (feature rendering): three SIMD passes through scratch.
inline void backward_block_any(int p0, float fx0, float dy, float ca, float cb, float cc, float op, const float* cg,
                               int64_t D, int32_t kk, float* T, const float* Tf, const float* va,
                               const int32_t* last, const float* vc, float* acc, GaussianGrad& gg, float* gcol) {
    alignas(64) float b_active[kBlock], b_Tk[kBlock], b_wk[kBlock], b_inv[kBlock], b_valpha[kBlock], b_vis[kBlock];
#pragma omp simd
    for (int i = 0; i < kBlock; ++i) {
        const int p = p0 + i;
        const float dx = fx0 - i;
        const float sigma = 0.5f * (ca * dx * dx + cc * dy * dy) + cb * dx * dy;
        const float vis = std::exp(-sigma);
        const float alpha = std::min(kMaxAlpha, op * vis);
        const bool active = (kk < last[p]) & (sigma >= 0.f) & (alpha >= kAlphaThreshold);
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

    Binning bins = bin_gaussians(m2d, rad, order.data_ptr<int64_t>(), C, N, W, H, TS);
    const int tiles_x = (W + TS - 1) / TS, tiles_y = (H + TS - 1) / TS;
    const int64_t tiles = static_cast<int64_t>(tiles_x) * tiles_y;

    auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
    torch::Tensor out_colors = torch::zeros({C, H, W, D}, f32);
    torch::Tensor out_alphas = torch::zeros({C, H, W, 1}, f32);
    torch::Tensor last_ids = torch::zeros({C, H, W}, torch::TensorOptions().dtype(torch::kInt32));
    float* oc = out_colors.data_ptr<float>();
    float* oa = out_alphas.data_ptr<float>();
    int32_t* ol = last_ids.data_ptr<int32_t>();
    const int64_t* offs = bins.tile_offsets.data();
    const int32_t* ids = bins.flat_ids.data();

#pragma omp parallel
    {
        // Tile-local pixel state, row stride kTile; pixels past the image edge are computed and dropped.
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
                const bool inside = (p % kTile) < tw && (p / kTile) < th;
                T[p] = 1.0f;
                last[p] = 0;
                done[p] = inside ? 0 : 1;
                n_done += inside ? 0 : 1;
            }
            std::fill(acc.begin(), acc.end(), 0.0f);
            const int64_t start = offs[t], end = offs[t + 1];
            for (int64_t k = start; k < end && n_done < kPix; ++k) {
                const int64_t g = c * N + ids[k];
                const float mx = m2d[2 * g], my = m2d[2 * g + 1];
                const float ca = con[3 * g], cb = con[3 * g + 1], cc = con[3 * g + 2];
                const float op = opa[g];
                const PixelRect r = tile_rect(mx, my, rad[2 * g], rad[2 * g + 1], W, H, tx0, ty0);
                const float* cg = col + g * D;
                const int32_t kk = static_cast<int32_t>(k - start + 1);
                const RowSpans spans(ca, cb, cc, op);
                for (int y = r.y0; y <= r.y1; ++y) {
                    const float dy = my - (ty0 + y + 0.5f);
                    int lo, hi;
                    if (!spans.span(dy, mx, tx0, r.x0, r.x1, lo, hi)) continue;
                    for (int bx = lo / kBlock; bx <= hi / kBlock; ++bx) {
                        const int p0 = y * kTile + bx * kBlock;
                        int all_done = 1;
                        for (int i = 0; i < kBlock; ++i) all_done &= done[p0 + i];
                        if (all_done) continue;
                        const float fx0 = mx - (tx0 + bx * kBlock + 0.5f);
                        float* A = acc.data();
                        switch (D) {
                            case 1: n_done += forward_block<1>(p0, fx0, dy, ca, cb, cc, op, cg, D, kk, T, w, last, done, A); break;
                            case 2: n_done += forward_block<2>(p0, fx0, dy, ca, cb, cc, op, cg, D, kk, T, w, last, done, A); break;
                            case 3: n_done += forward_block<3>(p0, fx0, dy, ca, cb, cc, op, cg, D, kk, T, w, last, done, A); break;
                            case 4: n_done += forward_block<4>(p0, fx0, dy, ca, cb, cc, op, cg, D, kk, T, w, last, done, A); break;
                            default: n_done += forward_block<0>(p0, fx0, dy, ca, cb, cc, op, cg, D, kk, T, w, last, done, A);
                        }
                    }
                }
            }
            for (int y = 0; y < th; ++y) {
                for (int x = 0; x < tw; ++x) {
                    const int p = y * kTile + x;
                    const int64_t pix = (c * H + ty0 + y) * W + tx0 + x;
                    for (int64_t d = 0; d < D; ++d) oc[pix * D + d] = acc[d * kPix + p];
                    oa[pix] = 1.0f - T[p];
                    ol[pix] = last[p];
                }
            }
        }
    }
    torch::Tensor tile_offsets = torch::from_blob(bins.tile_offsets.data(), {C * tiles + 1},
                                                  torch::TensorOptions().dtype(torch::kInt64))
                                     .clone();
    torch::Tensor flat_ids = torch::from_blob(bins.flat_ids.data(), {static_cast<int64_t>(bins.flat_ids.size())},
                                              torch::TensorOptions().dtype(torch::kInt32))
                                 .clone();
    return {out_colors, out_alphas, tile_offsets, flat_ids, last_ids};
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
    const int64_t S = 6 + D;  // per-intersection slot: mx, my, a, b, c, opacity, colors[D]
    std::vector<float> slots(M * S, 0.0f);

#pragma omp parallel
    {
        alignas(64) float T[kPix], Tf[kPix], va[kPix];
        alignas(64) int32_t last[kPix];
        int32_t block_last[kPix / kBlock];
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
                const int y = p / kTile, x = p % kTile;
                const bool inside = x < tw && y < th;
                const int64_t pix = (c * H + ty0 + y) * W + tx0 + x;
                T[p] = inside ? 1.0f - ra[pix] : 1.0f;
                Tf[p] = T[p];
                last[p] = inside ? la[pix] : 0;
                max_last = std::max(max_last, last[p]);
                va[p] = inside ? vao[pix] : 0.0f;
                for (int64_t d = 0; d < D; ++d) vc[d * kPix + p] = inside ? vco[pix * D + d] : 0.0f;
            }
            for (int b = 0; b < kPix / kBlock; ++b) {
                block_last[b] = 0;
                for (int i = 0; i < kBlock; ++i) block_last[b] = std::max(block_last[b], last[b * kBlock + i]);
            }
            const int64_t start = offs[t];
            for (int64_t k = start + max_last - 1; k >= start; --k) {
                const int32_t kk = static_cast<int32_t>(k - start);  // pixels with last > kk saw this one
                const int64_t g = c * N + ids[k];
                const float mx = m2d[2 * g], my = m2d[2 * g + 1];
                const float ca = con[3 * g], cb = con[3 * g + 1], cc = con[3 * g + 2];
                const float op = opa[g];
                const PixelRect r = tile_rect(mx, my, rad[2 * g], rad[2 * g + 1], W, H, tx0, ty0);
                const float* cg = col + g * D;
                gg.clear();
                std::fill(gcol.begin(), gcol.end(), 0.0f);
                const RowSpans spans(ca, cb, cc, op);
                for (int y = r.y0; y <= r.y1; ++y) {
                    const float dy = my - (ty0 + y + 0.5f);
                    int lo, hi;
                    if (!spans.span(dy, mx, tx0, r.x0, r.x1, lo, hi)) continue;
                    for (int bx = lo / kBlock; bx <= hi / kBlock; ++bx) {
                        const int p0 = y * kTile + bx * kBlock;
                        if (kk >= block_last[p0 / kBlock]) continue;  // every pixel here stopped in front
                        const float fx0 = mx - (tx0 + bx * kBlock + 0.5f);
                        float* A = acc.data();
                        const float* V = vc.data();
                        switch (D) {
                            case 1: backward_block<1>(p0, fx0, dy, ca, cb, cc, op, cg, kk, T, Tf, va, last, V, A, gg); break;
                            case 2: backward_block<2>(p0, fx0, dy, ca, cb, cc, op, cg, kk, T, Tf, va, last, V, A, gg); break;
                            case 3: backward_block<3>(p0, fx0, dy, ca, cb, cc, op, cg, kk, T, Tf, va, last, V, A, gg); break;
                            case 4: backward_block<4>(p0, fx0, dy, ca, cb, cc, op, cg, kk, T, Tf, va, last, V, A, gg); break;
                            default: backward_block_any(p0, fx0, dy, ca, cb, cc, op, cg, D, kk, T, Tf, va, last, V, A, gg, gcol.data());
                        }
                    }
                }
                float* slot = slots.data() + k * S;
                for (int j = 0; j < 6; ++j) slot[j] = gg.sum(j);
                for (int64_t d = 0; d < D; ++d) slot[6 + d] = D <= 4 ? gg.sum(6 + static_cast<int>(d)) : gcol[d];
            }
        }
    }

    auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
    torch::Tensor v_means2d = torch::zeros({C, N, 2}, f32);
    torch::Tensor v_conics = torch::zeros({C, N, 3}, f32);
    torch::Tensor v_colors = torch::zeros({C, N, D}, f32);
    torch::Tensor v_opacities = torch::zeros({C, N}, f32);
    float* vm = v_means2d.data_ptr<float>();
    float* vcn = v_conics.data_ptr<float>();
    float* vcl = v_colors.data_ptr<float>();
    float* vo = v_opacities.data_ptr<float>();
    // Cameras own disjoint intersection ranges and disjoint Gaussian slots: parallel over cameras.
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
        for (int64_t k = offs[c * tiles]; k < offs[(c + 1) * tiles]; ++k) {
            const int64_t g = c * N + ids[k];
            const float* slot = slots.data() + k * S;
            vm[2 * g] += slot[0];
            vm[2 * g + 1] += slot[1];
            vcn[3 * g] += slot[2];
            vcn[3 * g + 1] += slot[3];
            vcn[3 * g + 2] += slot[4];
            vo[g] += slot[5];
            for (int64_t d = 0; d < D; ++d) vcl[g * D + d] += slot[6 + d];
        }
    }
    return {v_means2d, v_conics, v_colors, v_opacities};
}
