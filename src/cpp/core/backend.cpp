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

void check_copy(const Tensor& dst, const Tensor& src) {
    if (dst.type != src.type || dst.rows != src.rows || dst.cols != src.cols)
        throw InputError(std::string("copy: dst and src must have the same dtype and shape, got ") + dtype_name(dst.type) + " [" +
                         std::to_string(dst.rows) + ", " + std::to_string(dst.cols) + "] and " +
                         dtype_name(src.type) + " [" + std::to_string(src.rows) + ", " + std::to_string(src.cols) + "]");
    const bool overlap = dst.buf == src.buf && dst.offset < src.offset + src.nbytes() &&
                         src.offset < dst.offset + dst.nbytes() && dst.rows > 0;
    if (overlap) throw InputError("copy: dst and src overlap");
}

}  // namespace forgert
