// AVX2 + FMA + F16C kernel set (Haswell and later, Zen). Built with -mavx2 -mfma -mf16c.
#define FG_TILE_ROWS 2
#define FG_TILE_TOKENS 4
#define FG_HAVE_VNNI 0
#define FG_PANEL_512 0  // Q4_0 / Q8_0 panels: kernels_x86_panels16_256.inc
#include "kernels_x86.inc"
#include "kernels_x86_int8.inc"

namespace forgert::cpu {
const KernelSet* kernels_avx2() {
    static const KernelSet set = {"avx2", quantize_row_q8, gemm_q, gemm_f,
                                  gemm_panel, 2 * PanelVec::W,
                                  f16_to_f32_row, f32_to_f16_row,
                                  attention_group, silu_mul_row, gelu_mul_row,
                                  gemm_i8, kGemmI8Types,
                                  i8_type_bit(DType::Q4_0) | i8_type_bit(DType::Q4_1) | i8_type_bit(DType::Q5_0) |
                                      i8_type_bit(DType::Q8_0) | i8_type_bit(DType::Q2_K) | i8_type_bit(DType::Q3_K) |
                                      i8_type_bit(DType::Q4_K) | i8_type_bit(DType::Q5_K) | i8_type_bit(DType::Q6_K)};
    return &set;
}
}  // namespace forgert::cpu
