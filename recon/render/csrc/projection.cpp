// EWA projection of 3D Gaussians (pinhole) and its hand-written backward, on the CPU.
//
// The same math as recon/render/projection.py (gsplat's fully_fused_projection): p = W m + t,
// the perspective Jacobian with gsplat's 1.3x FOV clamp, cov2d = (J W R_q S)(J W R_q S)^T + eps2d I,
// conic = cov2d^-1, and gsplat's opacity-aware bounding box. The PyTorch version is the reference
// the tests compare this against.

#include "ops.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr float kAlphaThreshold = 1.0f / 255.0f;

struct Camera {
    float W[3][3], t[3], fx, fy, cx, cy, lim_x_pos, lim_x_neg, lim_y_pos, lim_y_neg;
};

Camera load_camera(const float* viewmat, const float* K, int width, int height) {
    Camera cam;
    for (int i = 0; i < 3; ++i) {
        for (int j = 0; j < 3; ++j) cam.W[i][j] = viewmat[i * 4 + j];
        cam.t[i] = viewmat[i * 4 + 3];
    }
    cam.fx = K[0];
    cam.fy = K[4];
    cam.cx = K[2];
    cam.cy = K[5];
    const float tan_fovx = 0.5f * width / cam.fx, tan_fovy = 0.5f * height / cam.fy;
    cam.lim_x_pos = (width - cam.cx) / cam.fx + 0.3f * tan_fovx;
    cam.lim_x_neg = cam.cx / cam.fx + 0.3f * tan_fovx;
    cam.lim_y_pos = (height - cam.cy) / cam.fy + 0.3f * tan_fovy;
    cam.lim_y_neg = cam.cy / cam.fy + 0.3f * tan_fovy;
    return cam;
}

// Rotation matrix of a unit quaternion (w, x, y, z), row-major.
__attribute__((always_inline)) inline void quat_to_rotmat(float w, float x, float y, float z, float R[3][3]) {
    R[0][0] = 1 - 2 * (y * y + z * z);
    R[0][1] = 2 * (x * y - w * z);
    R[0][2] = 2 * (x * z + w * y);
    R[1][0] = 2 * (x * y + w * z);
    R[1][1] = 1 - 2 * (x * x + z * z);
    R[1][2] = 2 * (y * z - w * x);
    R[2][0] = 2 * (x * z - w * y);
    R[2][1] = 2 * (y * z + w * x);
    R[2][2] = 1 - 2 * (x * x + y * y);
}

// Gradient of the rotation matrix entries -> gradient of the unit quaternion.
__attribute__((always_inline)) inline void rotmat_grad_to_quat(float w, float x, float y, float z, const float G[3][3],
                                                               float gq[4]) {
    gq[0] = 2 * (-z * G[0][1] + y * G[0][2] + z * G[1][0] - x * G[1][2] - y * G[2][0] + x * G[2][1]);
    gq[1] = 2 * (y * G[0][1] + z * G[0][2] + y * G[1][0] - 2 * x * G[1][1] - w * G[1][2] + z * G[2][0] +
                 w * G[2][1] - 2 * x * G[2][2]);
    gq[2] = 2 * (-2 * y * G[0][0] + x * G[0][1] + w * G[0][2] + x * G[1][0] + z * G[1][2] - w * G[2][0] +
                 z * G[2][1] - 2 * y * G[2][2]);
    gq[3] = 2 * (-2 * z * G[0][0] - w * G[0][1] + x * G[0][2] + w * G[1][0] - 2 * z * G[1][1] + y * G[1][2] +
                 x * G[2][0] + y * G[2][1]);
}

// Everything the forward computes for one (camera, Gaussian), kept for the backward.
struct Projected {
    float qn[4], qnorm, R[3][3], RS[3][3], p[3], z, u, v, uc, vc, M0[3], M1[3], A0[3], A1[3], a, b, c, det;
    bool u_free, v_free, valid;
};

// Always inlined: the forward's `omp simd` loop only vectorizes with the body in view.
__attribute__((always_inline)) inline Projected project_one(const Camera& cam, const float* m, const float* q,
                                                            const float* s, float near_plane,
                             float far_plane, float eps2d) {
    // Branch-free (SIMD over Gaussians): every lane computes everything; `valid` says whether it counts.
    Projected P;
    for (int i = 0; i < 3; ++i)
        P.p[i] = cam.W[i][0] * m[0] + cam.W[i][1] * m[1] + cam.W[i][2] * m[2] + cam.t[i];
    const bool in_range = P.p[2] > near_plane && P.p[2] < far_plane;
    P.z = in_range ? P.p[2] : 1.0f;  // a safe divisor; P.p[2] keeps the depth
    P.qnorm = std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
    const float inv_norm = 1.0f / std::max(P.qnorm, 1e-12f);
    for (int i = 0; i < 4; ++i) P.qn[i] = q[i] * inv_norm;
    quat_to_rotmat(P.qn[0], P.qn[1], P.qn[2], P.qn[3], P.R);
    for (int i = 0; i < 3; ++i)
        for (int k = 0; k < 3; ++k) P.RS[i][k] = P.R[i][k] * s[k];
    P.u = P.p[0] / P.z;
    P.v = P.p[1] / P.z;
    P.uc = std::max(std::min(P.u, cam.lim_x_pos), -cam.lim_x_neg);
    P.vc = std::max(std::min(P.v, cam.lim_y_pos), -cam.lim_y_neg);
    P.u_free = P.u < cam.lim_x_pos && P.u > -cam.lim_x_neg;
    P.v_free = P.v < cam.lim_y_pos && P.v > -cam.lim_y_neg;
    const float f0 = cam.fx / P.z, f1 = cam.fy / P.z;
    for (int j = 0; j < 3; ++j) {
        P.M0[j] = f0 * (cam.W[0][j] - P.uc * cam.W[2][j]);
        P.M1[j] = f1 * (cam.W[1][j] - P.vc * cam.W[2][j]);
    }
    for (int k = 0; k < 3; ++k) {
        P.A0[k] = P.M0[0] * P.RS[0][k] + P.M0[1] * P.RS[1][k] + P.M0[2] * P.RS[2][k];
        P.A1[k] = P.M1[0] * P.RS[0][k] + P.M1[1] * P.RS[1][k] + P.M1[2] * P.RS[2][k];
    }
    P.a = P.A0[0] * P.A0[0] + P.A0[1] * P.A0[1] + P.A0[2] * P.A0[2] + eps2d;
    P.b = P.A0[0] * P.A1[0] + P.A0[1] * P.A1[1] + P.A0[2] * P.A1[2];
    P.c = P.A1[0] * P.A1[0] + P.A1[1] * P.A1[1] + P.A1[2] * P.A1[2] + eps2d;
    P.det = P.a * P.c - P.b * P.b;
    P.valid = in_range & (P.det > 0.f);
    return P;
}

}  // namespace

// Returns {means2d [C,N,2], conics [C,N,3], depths [C,N], radii [C,N,2] int32}.
std::vector<torch::Tensor> project_forward(const torch::Tensor& means, const torch::Tensor& quats,
                                           const torch::Tensor& scales, const torch::Tensor& opacities,
                                           const torch::Tensor& viewmats, const torch::Tensor& Ks, int64_t width,
                                           int64_t height, double near_plane, double far_plane, double eps2d,
                                           double radius_clip) {
    const int64_t N = means.size(0), C = viewmats.size(0);
    auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
    torch::Tensor means2d = torch::zeros({C, N, 2}, f32), conics = torch::zeros({C, N, 3}, f32);
    torch::Tensor depths = torch::zeros({C, N}, f32);
    torch::Tensor radii = torch::zeros({C, N, 2}, torch::TensorOptions().dtype(torch::kInt32));
    const float *m = means.data_ptr<float>(), *q = quats.data_ptr<float>(), *s = scales.data_ptr<float>();
    const float* o = opacities.data_ptr<float>();
    float *m2 = means2d.data_ptr<float>(), *co = conics.data_ptr<float>(), *de = depths.data_ptr<float>();
    int32_t* ra = radii.data_ptr<int32_t>();
    for (int64_t ci = 0; ci < C; ++ci) {
        const Camera cam = load_camera(viewmats.data_ptr<float>() + 16 * ci, Ks.data_ptr<float>() + 9 * ci,
                                       static_cast<int>(width), static_cast<int>(height));
        const float clip = static_cast<float>(radius_clip), fw = static_cast<float>(width),
                    fh = static_cast<float>(height);
        // SIMD over Gaussians (8 per AVX2 register): no branches, selects decide what is written.
        // Threads take fixed chunks, so which Gaussians go through the vector loop or its scalar
        // remainder (rounded slightly differently) does not depend on the number of threads.
        constexpr int64_t kChunk = 64;
#pragma omp parallel for schedule(static)
        for (int64_t chunk = 0; chunk < (N + kChunk - 1) / kChunk; ++chunk) {
#pragma omp simd
            for (int64_t n = chunk * kChunk; n < std::min(N, (chunk + 1) * kChunk); ++n) {
                const int64_t g = ci * N + n;
                const Projected P = project_one(cam, m + 3 * n, q + 4 * n, s + 3 * n, static_cast<float>(near_plane),
                                                static_cast<float>(far_plane), static_cast<float>(eps2d));
                de[g] = P.p[2];
                const bool ok = P.valid;
                const float inv_det = 1.0f / P.det;
                co[3 * g] = ok ? P.c * inv_det : 0.0f;
                co[3 * g + 1] = ok ? -P.b * inv_det : 0.0f;
                co[3 * g + 2] = ok ? P.a * inv_det : 0.0f;
                const float mx = cam.fx * P.u + cam.cx, my = cam.fy * P.v + cam.cy;
                m2[2 * g] = ok ? mx : 0.0f;
                m2[2 * g + 1] = ok ? my : 0.0f;
                const float op = o[n];
                const float extend =
                    std::min(3.33f, std::sqrt(2.0f * std::log(std::max(op / kAlphaThreshold, 1.0f))));
                const float rx = std::ceil(extend * std::sqrt(P.a)), ry = std::ceil(extend * std::sqrt(P.c));
                const bool shown = ok & (op >= kAlphaThreshold) & ((rx > clip) | (ry > clip)) & (mx + rx > 0.0f) &
                                   (mx - rx < fw) & (my + ry > 0.0f) & (my - ry < fh);
                ra[2 * g] = shown ? static_cast<int32_t>(rx) : 0;
                ra[2 * g + 1] = shown ? static_cast<int32_t>(ry) : 0;
            }
        }
    }
    return {means2d, conics, depths, radii};
}

// Returns {v_means [N,3], v_quats [N,4], v_scales [N,3], v_viewmats [C,4,4]} (v_viewmats stays zero
// unless camera_grad). SIMD over Gaussians like the forward: every lane computes everything and
// hidden Gaussians are masked to zero. The camera's gradient is summed per fixed chunk of Gaussians,
// then over chunks in order, so it does not depend on the number of threads.
std::vector<torch::Tensor> project_backward(const torch::Tensor& means, const torch::Tensor& quats,
                                            const torch::Tensor& scales, const torch::Tensor& viewmats,
                                            const torch::Tensor& Ks, const torch::Tensor& radii, int64_t width,
                                            int64_t height, double near_plane, double far_plane, double eps2d,
                                            const torch::Tensor& v_means2d, const torch::Tensor& v_conics,
                                            const torch::Tensor& v_depths, bool camera_grad) {
    const int64_t N = means.size(0), C = viewmats.size(0);
    auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
    torch::Tensor v_means = torch::zeros({N, 3}, f32), v_quats = torch::zeros({N, 4}, f32);
    torch::Tensor v_scales = torch::zeros({N, 3}, f32), v_viewmats = torch::zeros({C, 4, 4}, f32);
    const float *m = means.data_ptr<float>(), *q = quats.data_ptr<float>(), *s = scales.data_ptr<float>();
    const int32_t* ra = radii.data_ptr<int32_t>();
    const float *vm2 = v_means2d.data_ptr<float>(), *vco = v_conics.data_ptr<float>();
    const float* vde = v_depths.data_ptr<float>();
    float *gm = v_means.data_ptr<float>(), *gq = v_quats.data_ptr<float>(), *gs = v_scales.data_ptr<float>();
    float* gv = v_viewmats.data_ptr<float>();
    constexpr int64_t kChunk = 64;
    const int64_t n_chunks = (N + kChunk - 1) / kChunk;
    // Per chunk: the camera gradient's 12 entries (rows of [gW | gt]).
    std::vector<float> partial(camera_grad ? 12 * n_chunks : 0);
    const float near_f = static_cast<float>(near_plane), far_f = static_cast<float>(far_plane),
                eps_f = static_cast<float>(eps2d);
    for (int64_t ci = 0; ci < C; ++ci) {
        const Camera cam = load_camera(viewmats.data_ptr<float>() + 16 * ci, Ks.data_ptr<float>() + 9 * ci,
                                       static_cast<int>(width), static_cast<int>(height));
#pragma omp parallel for schedule(static)
        for (int64_t chunk = 0; chunk < n_chunks; ++chunk) {
            const int64_t n0 = chunk * kChunk, n1 = std::min(N, n0 + kChunk);
            // Per Gaussian of the chunk, what the camera gradient needs: the camera-space center's
            // gradient gp, f0 gM0, f1 gM1 and the clamped uc, vc.
            alignas(64) float c_gp[3][kChunk], c_gM0[3][kChunk], c_gM1[3][kChunk], c_uc[kChunk], c_vc[kChunk];
            // GCC's auto-vectorizer, not `omp simd`: OpenMP lowering would keep `P` (its arrays are
            // indexed in loops) as per-lane memory, which then needs scatter stores AVX2 lacks.
#pragma GCC ivdep
            for (int64_t n = n0; n < n1; ++n) {
                const int64_t g = ci * N + n, l = n - n0;
                const bool visible = (ra[2 * g] > 0) & (ra[2 * g + 1] > 0);
                const Projected P = project_one(cam, m + 3 * n, q + 4 * n, s + 3 * n, near_f, far_f, eps_f);
                // conic = (c, -b, a) / det. Loads are unconditional and selects decide (conditional
                // loads of strided data do not vectorize).
                const float r0 = vco[3 * g], r1 = vco[3 * g + 1], r2 = vco[3 * g + 2], inv_det = 1.0f / P.det;
                const float v0 = visible ? r0 : 0.f, v1 = visible ? r1 : 0.f, v2 = visible ? r2 : 0.f;
                const float id = visible ? inv_det : 0.f, id2 = id * id;
                const float ga = v0 * (-P.c * P.c * id2) + v1 * (P.b * P.c * id2) + v2 * (id - P.a * P.c * id2);
                const float gb = v0 * (2 * P.b * P.c * id2) + v1 * (-id - 2 * P.b * P.b * id2) +
                                 v2 * (2 * P.a * P.b * id2);
                const float gc = v0 * (id - P.a * P.c * id2) + v1 * (P.a * P.b * id2) + v2 * (-P.a * P.a * id2);
                float gA0[3], gA1[3];
                for (int k = 0; k < 3; ++k) {
                    gA0[k] = 2 * ga * P.A0[k] + gb * P.A1[k];
                    gA1[k] = gb * P.A0[k] + 2 * gc * P.A1[k];
                }
                float gM0[3], gM1[3], gRS[3][3];
                for (int j = 0; j < 3; ++j) {
                    gM0[j] = gA0[0] * P.RS[j][0] + gA0[1] * P.RS[j][1] + gA0[2] * P.RS[j][2];
                    gM1[j] = gA1[0] * P.RS[j][0] + gA1[1] * P.RS[j][1] + gA1[2] * P.RS[j][2];
                    for (int k = 0; k < 3; ++k) gRS[j][k] = P.M0[j] * gA0[k] + P.M1[j] * gA1[k];
                }
                float gR[3][3];
                for (int k = 0; k < 3; ++k) {
                    float gsk = 0.f;
                    for (int j = 0; j < 3; ++j) {
                        gR[j][k] = gRS[j][k] * s[3 * n + k];
                        gsk += gRS[j][k] * P.R[j][k];
                    }
                    gs[3 * n + k] += gsk;
                }
                float gqn[4];
                rotmat_grad_to_quat(P.qn[0], P.qn[1], P.qn[2], P.qn[3], gR, gqn);
                const float dot = gqn[0] * P.qn[0] + gqn[1] * P.qn[1] + gqn[2] * P.qn[2] + gqn[3] * P.qn[3];
                const float inv_norm = 1.0f / std::max(P.qnorm, 1e-12f);
                for (int i = 0; i < 4; ++i) gq[4 * n + i] += (gqn[i] - P.qn[i] * dot) * inv_norm;
                // M0 = (fx/z)(W0 - uc W2), M1 = (fy/z)(W1 - vc W2)
                const float f0 = cam.fx / P.z, f1 = cam.fy / P.z;
                float d_f0 = 0.f, d_f1 = 0.f, d_uc = 0.f, d_vc = 0.f;
                for (int j = 0; j < 3; ++j) {
                    d_f0 += gM0[j] * (cam.W[0][j] - P.uc * cam.W[2][j]);
                    d_f1 += gM1[j] * (cam.W[1][j] - P.vc * cam.W[2][j]);
                    d_uc -= f0 * gM0[j] * cam.W[2][j];
                    d_vc -= f1 * gM1[j] * cam.W[2][j];
                    c_gM0[j][l] = f0 * gM0[j];
                    c_gM1[j][l] = f1 * gM1[j];
                }
                // means2d = (fx u + cx, fy v + cy), u = x / z (unclamped), uc = clamp(u)
                const float du_ = cam.fx * vm2[2 * g] + (P.u_free ? d_uc : 0.f);
                const float dv_ = cam.fy * vm2[2 * g + 1] + (P.v_free ? d_vc : 0.f);
                const float du = visible ? du_ : 0.f, dv = visible ? dv_ : 0.f;
                const float iz = 1.0f / P.z;
                float gp[3];  // gradient of the camera-space center
                gp[0] = du * iz;
                gp[1] = dv * iz;
                gp[2] = vde[g] - (du * P.u + dv * P.v) * iz - (d_f0 * cam.fx + d_f1 * cam.fy) * iz * iz;
                // p = W m + t
                for (int j = 0; j < 3; ++j)
                    gm[3 * n + j] += cam.W[0][j] * gp[0] + cam.W[1][j] * gp[1] + cam.W[2][j] * gp[2];
                for (int i = 0; i < 3; ++i) c_gp[i][l] = gp[i];
                c_uc[l] = P.uc;
                c_vc[l] = P.vc;
            }
            if (!camera_grad) continue;
            float* part = partial.data() + 12 * chunk;  // [gW | gt] row-major, 3 x 4
            std::fill(part, part + 12, 0.0f);
            for (int64_t l = 0; l < n1 - n0; ++l) {
                const float* mn = m + 3 * (n0 + l);
                for (int j = 0; j < 3; ++j) {
                    part[0 * 4 + j] += c_gM0[j][l] + c_gp[0][l] * mn[j];
                    part[1 * 4 + j] += c_gM1[j][l] + c_gp[1][l] * mn[j];
                    part[2 * 4 + j] += -(c_uc[l] * c_gM0[j][l] + c_vc[l] * c_gM1[j][l]) + c_gp[2][l] * mn[j];
                }
                for (int i = 0; i < 3; ++i) part[i * 4 + 3] += c_gp[i][l];
            }
        }
        if (!camera_grad) continue;
        float* out = gv + 16 * ci;
        for (int64_t chunk = 0; chunk < n_chunks; ++chunk)
            for (int k = 0; k < 12; ++k) out[k] += partial[12 * chunk + k];
    }
    return {v_means, v_quats, v_scales, v_viewmats};
}
