#include "ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("depth_order", &depth_order, "stable depth argsort per camera (CPU radix sort)");
    m.def("rasterize_forward", &rasterize_forward, "Gaussian rasterization forward (CPU)");
    m.def("rasterize_backward", &rasterize_backward, "Gaussian rasterization backward (CPU)");
    m.def("project_forward", &project_forward, "EWA projection forward (CPU)");
    m.def("project_backward", &project_backward, "EWA projection backward (CPU)");
    m.def("num_threads", []() { return omp_get_max_threads(); }, "OpenMP threads");
}
