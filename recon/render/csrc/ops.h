// The CPU kernels of sds3d's Gaussian renderer (see rasterize.cpp and projection.cpp).
#pragma once

#include <torch/extension.h>

#include <vector>

#ifdef _OPENMP
#include <omp.h>
#else
inline int omp_get_num_threads() { return 1; }
inline int omp_get_thread_num() { return 0; }
inline int omp_get_max_threads() { return 1; }
#endif

torch::Tensor depth_order(const torch::Tensor& depths);

std::vector<torch::Tensor> rasterize_forward(const torch::Tensor& means2d, const torch::Tensor& conics,
                                             const torch::Tensor& colors, const torch::Tensor& opacities,
                                             const torch::Tensor& radii, const torch::Tensor& order, int64_t width,
                                             int64_t height, int64_t tile_size);

std::vector<torch::Tensor> rasterize_backward(const torch::Tensor& means2d, const torch::Tensor& conics,
                                              const torch::Tensor& colors, const torch::Tensor& opacities,
                                              const torch::Tensor& radii, const torch::Tensor& tile_offsets,
                                              const torch::Tensor& flat_ids, const torch::Tensor& render_alphas,
                                              const torch::Tensor& last_ids, const torch::Tensor& v_colors_out,
                                              const torch::Tensor& v_alphas_out, int64_t width, int64_t height,
                                              int64_t tile_size);

std::vector<torch::Tensor> project_forward(const torch::Tensor& means, const torch::Tensor& quats,
                                           const torch::Tensor& scales, const torch::Tensor& opacities,
                                           const torch::Tensor& viewmats, const torch::Tensor& Ks, int64_t width,
                                           int64_t height, double near_plane, double far_plane, double eps2d,
                                           double radius_clip);

std::vector<torch::Tensor> project_backward(const torch::Tensor& means, const torch::Tensor& quats,
                                            const torch::Tensor& scales, const torch::Tensor& viewmats,
                                            const torch::Tensor& Ks, const torch::Tensor& radii, int64_t width,
                                            int64_t height, double near_plane, double far_plane, double eps2d,
                                            const torch::Tensor& v_means2d, const torch::Tensor& v_conics,
                                            const torch::Tensor& v_depths, bool camera_grad);
