#include "backend.h"

namespace forgert {

void Backend::head_rms_norm(const Tensor& x, const Tensor& w, float eps) {
    const int64_t head_dim = w.cols;
    if (x.type != DType::F32 || w.type != DType::F32 || w.rows != 1 || head_dim <= 0 || x.cols % head_dim != 0)
        throw InputError("head_rms_norm: x must be f32 [n, heads * head_dim] and w f32 [head_dim], got x [" +
                         std::to_string(x.rows) + ", " + std::to_string(x.cols) + "], w [" + std::to_string(w.rows) +
                         ", " + std::to_string(head_dim) + "]");
    if (x.rows > 1 && x.stride != (size_t)x.cols * sizeof(float))
        throw InputError("head_rms_norm: x's rows must be contiguous");
    // [n, heads * head_dim] contiguous is [n * heads, head_dim]: one norm row per head.
    Tensor heads = x;
    heads.rows = x.rows * (x.cols / head_dim);
    heads.cols = head_dim;
    heads.stride = (size_t)head_dim * sizeof(float);
    rms_norm(heads, heads, w, eps);
}

}  // namespace forgert
