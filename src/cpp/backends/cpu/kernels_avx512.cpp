// AVX-512 (F, BW, VL) + VNNI kernel set (Ice Lake, Sapphire Rapids, Zen 4 and later):
// 32 vector registers allow a 4 x 4 GEMM tile, vpdpbusd does the int8 dots.
#define FG_TILE_ROWS 4
#define FG_TILE_TOKENS 4
#define FG_HAVE_VNNI 1
#define FG_PANEL_512 1
#include "kernels_x86.inc"
#include "kernels_x86_int8.inc"

namespace forgert::cpu {
const KernelSet* kernels_avx512() {
    static const KernelSet set = {"avx512-vnni", quantize_row_q8, gemm_q, gemm_f,
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
