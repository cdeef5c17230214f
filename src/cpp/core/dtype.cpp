#include "tensor.h"

namespace forgert {

const char* dtype_name(DType t) {
    switch (t) {
        case DType::F32: return "F32";
        case DType::F16: return "F16";
        case DType::BF16: return "BF16";
        case DType::Q8_0: return "Q8_0";
        case DType::Q4_0: return "Q4_0";
        case DType::Q4_1: return "Q4_1";
        case DType::Q5_0: return "Q5_0";
        case DType::Q5_1: return "Q5_1";
        case DType::Q2_K: return "Q2_K";
        case DType::Q3_K: return "Q3_K";
        case DType::Q4_K: return "Q4_K";
        case DType::Q5_K: return "Q5_K";
        case DType::Q6_K: return "Q6_K";
        case DType::IQ2_XXS: return "IQ2_XXS";
        case DType::IQ2_XS: return "IQ2_XS";
        case DType::IQ2_S: return "IQ2_S";
        case DType::IQ3_XXS: return "IQ3_XXS";
        case DType::IQ3_S: return "IQ3_S";
        case DType::IQ1_S: return "IQ1_S";
        case DType::IQ1_M: return "IQ1_M";
        case DType::IQ4_NL: return "IQ4_NL";
        case DType::IQ4_XS: return "IQ4_XS";
        case DType::MXFP4: return "MXFP4";
        case DType::I32: return "I32";
        case DType::Q4_0x16: return "Q4_0x16";
        case DType::Q4_1x16: return "Q4_1x16";
        case DType::Q5_0x16: return "Q5_0x16";
        case DType::Q8_0x16: return "Q8_0x16";
        case DType::Q2_Kx16: return "Q2_Kx16";
        case DType::Q3_Kx16: return "Q3_Kx16";
        case DType::Q4_Kx16: return "Q4_Kx16";
        case DType::Q5_Kx16: return "Q5_Kx16";
        case DType::Q6_Kx16: return "Q6_Kx16";
    }
    return "unknown";
}

bool dtype_is_known(int id) {
    switch (id) {
        case FG_F32: case FG_F16: case FG_BF16: case FG_Q8_0: case FG_Q4_0: case FG_Q4_1: case FG_Q5_0: case FG_Q5_1: case FG_Q2_K: case FG_Q3_K: case FG_Q4_K: case FG_Q5_K: case FG_Q6_K:
        case FG_IQ4_NL: case FG_IQ4_XS: case FG_MXFP4:
        case FG_IQ2_XXS: case FG_IQ2_XS: case FG_IQ2_S: case FG_IQ3_XXS: case FG_IQ3_S: case FG_IQ1_S: case FG_IQ1_M:
        case FG_I32:
            return true;
    }
    return false;
}

int64_t dtype_block_elems(DType t) {
    switch (t) {
        case DType::Q8_0: case DType::Q4_0: case DType::Q4_1: case DType::Q5_0: case DType::Q5_1: case DType::IQ4_NL: case DType::MXFP4:
        case DType::Q4_0x16: case DType::Q4_1x16: case DType::Q5_0x16: case DType::Q8_0x16: return FG_QK;
        case DType::Q2_K: case DType::Q3_K: case DType::Q4_K: case DType::Q5_K: case DType::Q6_K: case DType::IQ4_XS:
        case DType::IQ2_XXS: case DType::IQ2_XS: case DType::IQ2_S: case DType::IQ3_XXS: case DType::IQ3_S:
        case DType::IQ1_S: case DType::IQ1_M:
        case DType::Q2_Kx16: case DType::Q3_Kx16: case DType::Q4_Kx16: case DType::Q5_Kx16: case DType::Q6_Kx16:
            return FG_QK_K;
        default: return 1;
    }
}

int64_t dtype_block_bytes(DType t) {
    switch (t) {
        case DType::F32: case DType::I32: return 4;
        case DType::F16: case DType::BF16: return 2;
        case DType::Q8_0: case DType::Q8_0x16: return sizeof(block_q8_0);  // x16: per row, on average
        case DType::Q4_0: case DType::Q4_0x16: return sizeof(block_q4_0);
        case DType::Q4_1: case DType::Q4_1x16: return sizeof(block_q4_1);
        case DType::Q5_0: case DType::Q5_0x16: return sizeof(block_q5_0);
        case DType::Q5_1: return sizeof(block_q5_1);
        case DType::Q2_K: case DType::Q2_Kx16: return sizeof(block_q2_K);
        case DType::Q3_K: case DType::Q3_Kx16: return sizeof(block_q3_K);
        case DType::Q4_K: case DType::Q4_Kx16: return sizeof(block_q4_K);
        case DType::Q5_K: case DType::Q5_Kx16: return sizeof(block_q5_K);
        case DType::Q6_K: case DType::Q6_Kx16: return sizeof(block_q6_K);
        case DType::IQ2_XXS: return sizeof(block_iq2_xxs);
        case DType::IQ2_XS: return sizeof(block_iq2_xs);
        case DType::IQ2_S: return sizeof(block_iq2_s);
        case DType::IQ3_XXS: return sizeof(block_iq3_xxs);
        case DType::IQ3_S: return sizeof(block_iq3_s);
        case DType::IQ1_S: return sizeof(block_iq1_s);
        case DType::IQ1_M: return sizeof(block_iq1_m);
        case DType::IQ4_NL: return sizeof(block_iq4_nl);
        case DType::IQ4_XS: return sizeof(block_iq4_xs);
        case DType::MXFP4: return sizeof(block_mxfp4);
    }
    return 0;
}

int64_t row_bytes(DType t, int64_t cols) {
    const int64_t be = dtype_block_elems(t);
    if (cols % be != 0) {
        throw InputError(std::string("a row of ") + dtype_name(t) + " needs a multiple of " +
                         std::to_string(be) + " elements, got " + std::to_string(cols));
    }
    return cols / be * dtype_block_bytes(t);
}

}  // namespace forgert
