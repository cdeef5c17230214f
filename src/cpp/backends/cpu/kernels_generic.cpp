// The portable kernel set: plain C++, correct on every CPU, the reference the
// SIMD sets are tested against (FORGERT_CPU_ISA=generic).
#include "kernels_int8_gemm.h"

namespace forgert::cpu {

const KernelSet* kernels_generic() {
    static const KernelSet set = {
        "generic", quantize_row_q8_scalar, gemm_q_scalar, gemm_f_scalar, nullptr, 0,
        f16_to_f32_row_scalar, f32_to_f16_row_scalar,
        attention_group_scalar, silu_mul_row_scalar, gelu_mul_row_scalar,
        gemm_i8_scalar, i8_type_bit(DType::Q8_0) | i8_type_bit(DType::Q4_0) | i8_type_bit(DType::Q4_K) | i8_type_bit(DType::Q5_K) |
            i8_type_bit(DType::Q6_K) | i8_type_bit(DType::Q3_K) | i8_type_bit(DType::Q2_K) | kI8LatticeTypes,
    };
    return &set;
}

}  // namespace forgert::cpu
