// Matrix-matrix products for prefill: out[t, r] = sum_c w[r, c] * x[t, c] on 8x8
// simdgroup matrices.
//
// A threadgroup computes a 32-token x 64-row output tile. Per step of 32 columns it
// dequantizes the 64 x 32 weight slab (exactly one quant block per row) and copies the
// 32 x 32 x slab into threadgroup memory, then its four simdgroups each multiply a
// 16-token x 32-row quarter (2 x 4 f32 accumulators).
// Weight tiles are half for f16 and quantized weights (as in llama.cpp): half the
// threadgroup memory and loads, and the rounding (<= 2^-11 relative) is far below the
// quantization step. f32 and bf16 weights keep f32 tiles (precision, bf16's range);
// activations always stay f32, as large activations need the range.
#include <metal_stdlib>
using namespace metal;

#include "dequant.h"

#define MM_BR FG_MM_TILE_ROWS
#define MM_BT FG_MM_TILE_TOKENS
#define MM_BK FG_MM_TILE_K

// load16(row, k, cols, out): weights [k, k + 16) of a row, zero past `cols`.
// Quantized rows have cols % 32 == 0 and k % 16 == 0, so k names (block, half).
struct q8_0_tile {
    typedef half T;
    static void load16(device const char* row, int k, int cols, thread float* out) {
        fg_dequant16_q8_0(row, k / FG_QK, (k % FG_QK) / 16, out);
    }
};
struct q4_0_tile {
    typedef half T;
    static void load16(device const char* row, int k, int cols, thread float* out) {
        fg_dequant16_q4_0(row, k / FG_QK, (k % FG_QK) / 16, out);
    }
};
struct q4_1_tile {
    typedef half T;
    static void load16(device const char* row, int k, int cols, thread float* out) {
        fg_dequant16_q4_1(row, k / FG_QK, (k % FG_QK) / 16, out);
    }
};
struct q5_0_tile {
    typedef half T;
    static void load16(device const char* row, int k, int cols, thread float* out) {
        fg_dequant16_q5_0(row, k / FG_QK, (k % FG_QK) / 16, out);
    }
};
struct q5_1_tile {
    typedef half T;
    static void load16(device const char* row, int k, int cols, thread float* out) {
        fg_dequant16_q5_1(row, k / FG_QK, (k % FG_QK) / 16, out);
    }
};
// K-quants: k names (32-weight chunk of the row, half), as for the 32-weight blocks.
struct q4_K_tile {
    typedef half T;
    static void load16(device const char* row, int k, int cols, thread float* out) {
        fg_dequant16_q4_K(row, k / FG_QK, (k % FG_QK) / 16, out);
    }
};
struct q2_K_tile {
    typedef half T;
    static void load16(device const char* row, int k, int cols, thread float* out) {
        fg_dequant16_q2_K(row, k / FG_QK, (k % FG_QK) / 16, out);
    }
};
struct q3_K_tile {
    typedef half T;
    static void load16(device const char* row, int k, int cols, thread float* out) {
        fg_dequant16_q3_K(row, k / FG_QK, (k % FG_QK) / 16, out);
    }
};
struct q5_K_tile {
    typedef half T;
    static void load16(device const char* row, int k, int cols, thread float* out) {
        fg_dequant16_q5_K(row, k / FG_QK, (k % FG_QK) / 16, out);
    }
};
struct q6_K_tile {
    typedef half T;
    static void load16(device const char* row, int k, int cols, thread float* out) {
        fg_dequant16_q6_K(row, k / FG_QK, (k % FG_QK) / 16, out);
    }
};
struct iq4_nl_tile {
    typedef half T;
    static void load16(device const char* row, int k, int cols, thread float* out) {
        fg_dequant16_iq4_nl(row, k / FG_QK, (k % FG_QK) / 16, out);
    }
};
struct mxfp4_tile {
    typedef half T;
    static void load16(device const char* row, int k, int cols, thread float* out) {
        fg_dequant16_mxfp4(row, k / FG_QK, (k % FG_QK) / 16, out);
    }
};
struct iq4_xs_tile {
    typedef half T;
    static void load16(device const char* row, int k, int cols, thread float* out) {
        fg_dequant16_iq4_xs(row, k / FG_QK, (k % FG_QK) / 16, out);
    }
};
// The lattice types (iq_lattice.h).
template <typename L>
struct lattice_tile {
    typedef half T;
    static void load16(device const char* row, int k, int cols, thread float* out) {
        fg_dequant16_lattice<L>(row, k / FG_QK, (k % FG_QK) / 16, out);
    }
};
typedef lattice_tile<iq2_xxs_lattice> iq2_xxs_tile;
typedef lattice_tile<iq2_xs_lattice> iq2_xs_tile;
typedef lattice_tile<iq2_s_lattice> iq2_s_tile;
typedef lattice_tile<iq3_xxs_lattice> iq3_xxs_tile;
typedef lattice_tile<iq3_s_lattice> iq3_s_tile;
typedef lattice_tile<iq1_s_lattice> iq1_s_tile;
typedef lattice_tile<iq1_m_lattice> iq1_m_tile;
struct f32_tile {
    typedef float T;
    static void load16(device const char* row, int k, int cols, thread float* out) {
        device const float* p = (device const float*)row;
        for (int i = 0; i < 16; ++i) out[i] = k + i < cols ? p[k + i] : 0.0f;
    }
};
struct f16_tile {
    typedef half T;
    static void load16(device const char* row, int k, int cols, thread float* out) {
        device const half* p = (device const half*)row;
        for (int i = 0; i < 16; ++i) out[i] = k + i < cols ? float(p[k + i]) : 0.0f;
    }
};
struct bf16_tile {
    typedef float T;
    static void load16(device const char* row, int k, int cols, thread float* out) {
        device const ushort* p = (device const ushort*)row;
        for (int i = 0; i < 16; ++i) out[i] = k + i < cols ? fg_bf16_to_f32(p[k + i]) : 0.0f;
    }
};

// Which x row token t of the product reads and which out row it writes: t itself (mul_mm), or
// for mul_mm_id the t-th slot s gathered for the expert (x row s, or s / k when x has one row
// per token; out row s).
struct mm_rows {
    device const int* slots;
    int k;
    int x_per_slot;
    int gathered;
};
static inline int mm_x_row(mm_rows m, int t) {
    if (m.gathered == 0) return t;
    const int s = m.slots[t];
    return m.x_per_slot != 0 ? s : s / m.k;
}
static inline int mm_out_row(mm_rows m, int t) { return m.gathered != 0 ? m.slots[t] : t; }

// The GEMM of one threadgroup: weight rows row0.. of w times tokens tok0.. of n_tokens.
template <typename D>
static inline void mul_mm_tile(constant mul_mm_args& args, device const char* w, device const char* x,
                               device char* out, threadgroup float* shmem, int row0, int tok0, int n_tokens,
                               mm_rows m, ushort tiitg, ushort sgitg) {
    typedef typename D::T T;
    threadgroup T* sw = (threadgroup T*)shmem;                          // [MM_BR][MM_BK]: sw[r * MM_BK + k]
    threadgroup float* sx = (threadgroup float*)(sw + MM_BR * MM_BK);  // [MM_BT][MM_BK]: sx[t * MM_BK + k]

    // Loader roles: 128 threads = 64 weight rows x 2 halves, and 32 tokens x 4 runs of 8.
    // Rows/tokens past the end load a clamped (valid) row; their results are never stored.
    const int lw_row = tiitg / 2;
    const int lw_k = (tiitg % 2) * 16;
    device const char* wrow = w + min(row0 + lw_row, args.rows - 1) * args.w_stride;
    const int lx_tok = tiitg / 4;
    const int lx_k = (tiitg % 4) * 8;
    device const float* xrow =
        (device const float*)(x + mm_x_row(m, min(tok0 + lx_tok, n_tokens - 1)) * args.x_stride);

    // Simdgroup s computes tokens [16 (s / 2), +16) x rows [32 (s % 2), +32) of the tile.
    const int st = (sgitg / 2) * 16;
    const int sr = (sgitg % 2) * 32;
    simdgroup_float8x8 acc[2][4];
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);

    for (int k0 = 0; k0 < args.cols; k0 += MM_BK) {
        float wv[16];
        D::load16(wrow, k0 + lw_k, args.cols, wv);
        for (int i = 0; i < 16; ++i) sw[lw_row * MM_BK + lw_k + i] = T(wv[i]);
        for (int i = 0; i < 8; ++i) {
            const int k = k0 + lx_k + i;
            sx[lx_tok * MM_BK + lx_k + i] = k < args.cols ? xrow[k] : 0.0f;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);

        for (int kk = 0; kk < MM_BK; kk += 8) {
            simdgroup_float8x8 a[2];
            simdgroup_matrix<T, 8, 8> b[4];
            for (int i = 0; i < 2; ++i) simdgroup_load(a[i], sx + (st + 8 * i) * MM_BK + kk, MM_BK);
            // b[j] = (w rows sr + 8j .. +8, columns kk .. kk + 8) transposed: [k][row]
            for (int j = 0; j < 4; ++j)
                simdgroup_load(b[j], sw + (sr + 8 * j) * MM_BK + kk, MM_BK, ulong2(0, 0), true);
            for (int i = 0; i < 2; ++i)
                for (int j = 0; j < 4; ++j) simdgroup_multiply_accumulate(acc[i][j], a[i], b[j], acc[i][j]);
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }

    // Stage the [MM_BT][MM_BR] result in threadgroup memory, then store what is in bounds.
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 4; ++j) simdgroup_store(acc[i][j], shmem + (st + 8 * i) * MM_BR + sr + 8 * j, MM_BR);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (int e = tiitg; e < MM_BT * MM_BR; e += FG_MM_THREADS) {
        const int t = tok0 + e / MM_BR;
        const int r = row0 + e % MM_BR;
        if (t < n_tokens && r < args.rows) {
            device float* o = (device float*)(out + mm_out_row(m, t) * args.out_stride) + r;
            *o = args.accumulate != 0 ? *o + shmem[e] : shmem[e];
        }
    }
}

template <typename D>
kernel void mul_mm(
        constant mul_mm_args & args  [[buffer(0)]],
        device const char * w        [[buffer(1)]],
        device const char * x        [[buffer(2)]],
        device       char * out      [[buffer(3)]],
        threadgroup float * shmem    [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort tiitg [[thread_index_in_threadgroup]],
        ushort sgitg [[simdgroup_index_in_threadgroup]]) {
    mm_rows m;
    m.slots = (device const int*)x;  // unused
    m.k = 1;
    m.x_per_slot = 1;
    m.gathered = 0;
    mul_mm_tile<D>(args, w, x, out, shmem, int(tgpig.x) * MM_BR, int(tgpig.y) * MM_BT, args.n_tokens, m, tiitg, sgitg);
}

// Mixture of experts, prefill: threadgroup (rows tile, slot tile, expert e) multiplies expert e's
// matrix by the x rows of the slots moe_group gathered for it (count e, then their slot ids), so
// each used expert runs one GEMM over its tokens and its weights are read once per 32 of them.
template <typename D>
kernel void mul_mm_id(
        constant mul_mm_id_args & args [[buffer(0)]],
        device const char * w        [[buffer(1)]],
        device const char * x        [[buffer(2)]],
        device       char * out      [[buffer(3)]],
        device const char * groups   [[buffer(4)]],
        threadgroup float * shmem    [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort tiitg [[thread_index_in_threadgroup]],
        ushort sgitg [[simdgroup_index_in_threadgroup]]) {
    const int e = tgpig.z;
    const int count = ((device const int*)groups)[e];
    const int tok0 = int(tgpig.y) * MM_BT;
    if (tok0 >= count) return;  // the whole threadgroup: this expert has fewer slots
    mm_rows m;
    m.slots = (device const int*)groups + args.n_expert + e * args.n_slots;
    m.k = args.k;
    m.x_per_slot = args.x_per_slot;
    m.gathered = 1;
    mul_mm_tile<D>(args.mm, w + (uint64_t)e * args.expert_stride, x, out, shmem, int(tgpig.x) * MM_BR, tok0, count, m,
                   tiitg, sgitg);
}

typedef decltype(mul_mm<q8_0_tile>) mul_mm_t;
template [[host_name("mul_mm_q8_0")]] kernel mul_mm_t mul_mm<q8_0_tile>;
template [[host_name("mul_mm_q4_0")]] kernel mul_mm_t mul_mm<q4_0_tile>;
template [[host_name("mul_mm_q4_1")]] kernel mul_mm_t mul_mm<q4_1_tile>;
template [[host_name("mul_mm_q5_0")]] kernel mul_mm_t mul_mm<q5_0_tile>;
template [[host_name("mul_mm_q5_1")]] kernel mul_mm_t mul_mm<q5_1_tile>;
template [[host_name("mul_mm_q2_K")]] kernel mul_mm_t mul_mm<q2_K_tile>;
template [[host_name("mul_mm_q3_K")]] kernel mul_mm_t mul_mm<q3_K_tile>;
template [[host_name("mul_mm_q4_K")]] kernel mul_mm_t mul_mm<q4_K_tile>;
template [[host_name("mul_mm_q5_K")]] kernel mul_mm_t mul_mm<q5_K_tile>;
template [[host_name("mul_mm_q6_K")]] kernel mul_mm_t mul_mm<q6_K_tile>;
template [[host_name("mul_mm_iq4_nl")]] kernel mul_mm_t mul_mm<iq4_nl_tile>;
template [[host_name("mul_mm_iq4_xs")]] kernel mul_mm_t mul_mm<iq4_xs_tile>;
template [[host_name("mul_mm_iq2_xxs")]] kernel mul_mm_t mul_mm<iq2_xxs_tile>;
template [[host_name("mul_mm_iq2_xs")]] kernel mul_mm_t mul_mm<iq2_xs_tile>;
template [[host_name("mul_mm_iq2_s")]] kernel mul_mm_t mul_mm<iq2_s_tile>;
template [[host_name("mul_mm_iq3_xxs")]] kernel mul_mm_t mul_mm<iq3_xxs_tile>;
template [[host_name("mul_mm_iq3_s")]] kernel mul_mm_t mul_mm<iq3_s_tile>;
template [[host_name("mul_mm_iq1_s")]] kernel mul_mm_t mul_mm<iq1_s_tile>;
template [[host_name("mul_mm_iq1_m")]] kernel mul_mm_t mul_mm<iq1_m_tile>;
template [[host_name("mul_mm_mxfp4")]] kernel mul_mm_t mul_mm<mxfp4_tile>;
template [[host_name("mul_mm_f32")]] kernel mul_mm_t mul_mm<f32_tile>;
template [[host_name("mul_mm_f16")]] kernel mul_mm_t mul_mm<f16_tile>;
template [[host_name("mul_mm_bf16")]] kernel mul_mm_t mul_mm<bf16_tile>;
typedef decltype(mul_mm_id<q8_0_tile>) mul_mm_id_t;
template [[host_name("mul_mm_id_q8_0")]] kernel mul_mm_id_t mul_mm_id<q8_0_tile>;
template [[host_name("mul_mm_id_q4_0")]] kernel mul_mm_id_t mul_mm_id<q4_0_tile>;
template [[host_name("mul_mm_id_q4_1")]] kernel mul_mm_id_t mul_mm_id<q4_1_tile>;
template [[host_name("mul_mm_id_q5_0")]] kernel mul_mm_id_t mul_mm_id<q5_0_tile>;
template [[host_name("mul_mm_id_q5_1")]] kernel mul_mm_id_t mul_mm_id<q5_1_tile>;
template [[host_name("mul_mm_id_q2_K")]] kernel mul_mm_id_t mul_mm_id<q2_K_tile>;
template [[host_name("mul_mm_id_q3_K")]] kernel mul_mm_id_t mul_mm_id<q3_K_tile>;
template [[host_name("mul_mm_id_q4_K")]] kernel mul_mm_id_t mul_mm_id<q4_K_tile>;
template [[host_name("mul_mm_id_q5_K")]] kernel mul_mm_id_t mul_mm_id<q5_K_tile>;
template [[host_name("mul_mm_id_q6_K")]] kernel mul_mm_id_t mul_mm_id<q6_K_tile>;
template [[host_name("mul_mm_id_iq4_nl")]] kernel mul_mm_id_t mul_mm_id<iq4_nl_tile>;
template [[host_name("mul_mm_id_iq4_xs")]] kernel mul_mm_id_t mul_mm_id<iq4_xs_tile>;
template [[host_name("mul_mm_id_iq2_xxs")]] kernel mul_mm_id_t mul_mm_id<iq2_xxs_tile>;
template [[host_name("mul_mm_id_iq2_xs")]] kernel mul_mm_id_t mul_mm_id<iq2_xs_tile>;
template [[host_name("mul_mm_id_iq2_s")]] kernel mul_mm_id_t mul_mm_id<iq2_s_tile>;
template [[host_name("mul_mm_id_iq3_xxs")]] kernel mul_mm_id_t mul_mm_id<iq3_xxs_tile>;
template [[host_name("mul_mm_id_iq3_s")]] kernel mul_mm_id_t mul_mm_id<iq3_s_tile>;
template [[host_name("mul_mm_id_iq1_s")]] kernel mul_mm_id_t mul_mm_id<iq1_s_tile>;
template [[host_name("mul_mm_id_iq1_m")]] kernel mul_mm_id_t mul_mm_id<iq1_m_tile>;
template [[host_name("mul_mm_id_mxfp4")]] kernel mul_mm_id_t mul_mm_id<mxfp4_tile>;
template [[host_name("mul_mm_id_f32")]] kernel mul_mm_id_t mul_mm_id<f32_tile>;
template [[host_name("mul_mm_id_f16")]] kernel mul_mm_id_t mul_mm_id<f16_tile>;
template [[host_name("mul_mm_id_bf16")]] kernel mul_mm_id_t mul_mm_id<bf16_tile>;
