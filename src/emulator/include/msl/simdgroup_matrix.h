// simdgroup_matrix<T, 8, 8>: a matrix owned by a whole simdgroup. The value lives in the
// runtime (kernel_abi.h), shared by the lanes that hold it; a lane's variable is a handle.
// Each load, store and multiply runs once per simdgroup: the first lane to get there
// records it in the runtime's memo and the other lanes take the same result. The memo
// also checks that every lane passes the same address, stride, origin and transpose flag
// to a load or store (a per-lane pointer is a bug the GPU does not report). Products
// accumulate in float, as the hardware does.
#pragma once

#include "simd.h"
#ifdef FGEMU_STRICT_ADDRESS_SPACES
#include "address_spaces.h"
#endif

namespace metal {

template <class T, int Cols, int Rows = Cols> struct simdgroup_matrix {
    static_assert(sizeof(T) * Rows * Cols <= fgemu::kMatrixBytes, "simdgroup matrix too large");
    uint64_t handle = 0;  // 0: uninitialised

    simdgroup_matrix() = default;
    // MSL: constructing from a value gives a diagonal matrix.
    explicit simdgroup_matrix(T diagonal, fgemu::Site site = fgemu::Site::here());
    simdgroup_matrix(const simdgroup_matrix& o) : handle(o.handle) { fgemu::matrix_retain(handle); }
    simdgroup_matrix(simdgroup_matrix&& o) noexcept : handle(o.handle) { o.handle = 0; }
    simdgroup_matrix& operator=(const simdgroup_matrix& o) {
        fgemu::matrix_retain(o.handle);
        fgemu::matrix_release(handle);
        handle = o.handle;
        return *this;
    }
    simdgroup_matrix& operator=(simdgroup_matrix&& o) noexcept {
        if (this != &o) {
            fgemu::matrix_release(handle);
            handle = o.handle;
            o.handle = 0;
        }
        return *this;
    }
    ~simdgroup_matrix() { fgemu::matrix_release(handle); }

    using Elements = T[Rows][Cols];  // [row][col]
    const Elements& elements(fgemu::Site s) const {
        return *reinterpret_cast<const Elements*>(fgemu::matrix_data(handle, s));
    }
    // Takes the handle of a value the memo holds (one more reference).
    void share(uint64_t h) {
        if (h == handle) return;
        fgemu::matrix_retain(h);
        fgemu::matrix_release(handle);
        handle = h;
    }
    // A new value for this variable; the caller fills its elements.
    Elements& fresh() {
        unsigned char* data;
        const uint64_t h = fgemu::matrix_alloc(&data);
        fgemu::matrix_release(handle);
        handle = h;
        return *reinterpret_cast<Elements*>(data);
    }
};
typedef simdgroup_matrix<float, 8, 8> simdgroup_float8x8;
typedef simdgroup_matrix<half, 8, 8> simdgroup_half8x8;
typedef simdgroup_matrix<bfloat, 8, 8> simdgroup_bfloat8x8;

namespace detail {
// Memo keys: all fields 8 bytes wide (no padding), compared with memcmp.
struct MatrixAccess {
    uint64_t kind, ptr, elements_per_row, origin_x, origin_y, transpose, element_bytes, value;
};
static_assert(sizeof(MatrixAccess) <= fgemu::kMemoKeyBytes, "memo key too large");
enum : uint64_t { kLoad = 1, kStore, kFill, kDiagonal, kMultiply };

template <class T> inline uint64_t bits_of(T v) {
    uint64_t b = 0;
    std::memcpy(&b, &v, sizeof(T) < 8 ? sizeof(T) : 8);
    return b;
}

inline void record(const fgemu::MatrixMemo& memo, const MatrixAccess& key, uint64_t handle) {
    std::memcpy(memo.key, &key, sizeof key);
    *memo.value = handle;
    fgemu::matrix_retain(handle);
}

// A matrix every element of which is computed from `value` by `fill(r, c)`, once per simdgroup.
template <class M, class T, class F> inline void make_value(M& out, uint64_t kind, T value, F fill, fgemu::Site s) {
    const MatrixAccess key{kind, sizeof(T), bits_of(value), 0, 0, 0, 0, 0};
    const fgemu::MatrixMemo memo = fgemu::matrix_memo(s);
    if (memo.recorded && std::memcmp(memo.key, &key, sizeof key) == 0) {
        out.share(*memo.value);
        return;
    }
    auto& e = out.fresh();
    for (int r = 0; r < int(sizeof(e) / sizeof(e[0])); ++r)
        for (int c = 0; c < int(sizeof(e[0]) / sizeof(e[0][0])); ++c) e[r][c] = fill(r, c);
    if (!memo.recorded) record(memo, key, out.handle);
}
}  // namespace detail

template <class T, int Cols, int Rows>
simdgroup_matrix<T, Cols, Rows>::simdgroup_matrix(T diagonal, fgemu::Site site) {
    detail::make_value(*this, detail::kDiagonal, diagonal, [&](int r, int c) { return r == c ? diagonal : T(0); },
                       site);
}

template <class T, int Cols, int Rows = Cols>
inline simdgroup_matrix<T, Cols, Rows> make_filled_simdgroup_matrix(T value, fgemu::Site site = fgemu::Site::here()) {
    simdgroup_matrix<T, Cols, Rows> r;
    detail::make_value(r, detail::kFill, value, [&](int, int) { return value; }, site);
    return r;
}

#ifdef FGEMU_STRICT_ADDRESS_SPACES
// The address-space lint compiles and never runs: declarations for the spaces MSL can
// load from and store to.
#define FGEMU_SIMDGROUP_LOAD_STORE(AS)                                                                          \
    template <class T, int C, int R, class P>                                                                   \
    void simdgroup_load(simdgroup_matrix<T, C, R>& d, const AS P* src, unsigned long elements_per_row = C,      \
                        ulong2 origin = ulong2(0), bool transpose = false);                                     \
    template <class T, int C, int R, class P>                                                                   \
    void simdgroup_store(const simdgroup_matrix<T, C, R>& s, AS P* dst, unsigned long elements_per_row = C,     \
                         ulong2 origin = ulong2(0), bool transpose = false);
FGEMU_SIMDGROUP_LOAD_STORE(FGEMU_DEVICE)
FGEMU_SIMDGROUP_LOAD_STORE(FGEMU_THREADGROUP)
#undef FGEMU_SIMDGROUP_LOAD_STORE
#else
template <class T, int C, int R, class P>
inline void simdgroup_load(simdgroup_matrix<T, C, R>& d, const P* src, unsigned long elements_per_row = C,
                           ulong2 origin = ulong2(0), bool transpose = false,
                           fgemu::Site site = fgemu::Site::here()) {
    const detail::MatrixAccess key{detail::kLoad, uint64_t(src), elements_per_row, origin.x, origin.y, transpose,
                                   sizeof(P), 0};
    const fgemu::MatrixMemo memo = fgemu::matrix_memo(site);
    if (memo.recorded) {
        if (std::memcmp(memo.key, &key, sizeof key) != 0)
            fgemu::kernel_fault("simdgroup_load: lanes pass different arguments (they must be uniform)", site);
        d.share(*memo.value);
        return;
    }
    auto& e = d.fresh();
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) {
            const unsigned long row = transpose ? c : r, col = transpose ? r : c;
            e[r][c] = T(float(src[(origin.y + row) * elements_per_row + origin.x + col]));
        }
    detail::record(memo, key, d.handle);
}

template <class T, int C, int R, class P>
inline void simdgroup_store(const simdgroup_matrix<T, C, R>& s, P* dst, unsigned long elements_per_row = C,
                            ulong2 origin = ulong2(0), bool transpose = false,
                            fgemu::Site site = fgemu::Site::here()) {
    const detail::MatrixAccess key{detail::kStore, uint64_t(dst), elements_per_row, origin.x, origin.y, transpose,
                                   sizeof(P), s.handle};
    const fgemu::MatrixMemo memo = fgemu::matrix_memo(site);
    if (memo.recorded) {
        if (std::memcmp(memo.key, &key, offsetof(detail::MatrixAccess, value)) != 0)
            fgemu::kernel_fault("simdgroup_store: lanes pass different arguments (they must be uniform)", site);
        if (std::memcmp(memo.key, &key, sizeof key) == 0) return;  // this value is stored already
    }
    const auto& e = s.elements(site);
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) {
            const unsigned long row = transpose ? c : r, col = transpose ? r : c;
            dst[(origin.y + row) * elements_per_row + origin.x + col] = P(float(e[r][c]));
        }
    if (!memo.recorded) detail::record(memo, key, s.handle);
}
#endif  // FGEMU_STRICT_ADDRESS_SPACES

// d = a * b + c, accumulated in float.
template <class TD, class TA, class TB, class TC, int M, int N, int K>
inline void simdgroup_multiply_accumulate(simdgroup_matrix<TD, N, M>& d, const simdgroup_matrix<TA, K, M>& a,
                                          const simdgroup_matrix<TB, N, K>& b, const simdgroup_matrix<TC, N, M>& c,
                                          fgemu::Site site = fgemu::Site::here()) {
    const detail::MatrixAccess key{detail::kMultiply, a.handle, b.handle, c.handle, 0, 0, 0, 0};
    const fgemu::MatrixMemo memo = fgemu::matrix_memo(site);
    if (memo.recorded && std::memcmp(memo.key, &key, sizeof key) == 0) {
        d.share(*memo.value);
        return;
    }
    const auto& ea = a.elements(site);
    const auto& eb = b.elements(site);
    const auto& ec = c.elements(site);
    float acc[M][N];
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) acc[i][j] = float(ec[i][j]);
    for (int i = 0; i < M; ++i)
        for (int k = 0; k < K; ++k) {
            const float aik = float(ea[i][k]);
            for (int j = 0; j < N; ++j) acc[i][j] += aik * float(eb[k][j]);
        }
    simdgroup_matrix<TD, N, M> r;  // d may alias c: fill a new value, then assign
    auto& er = r.fresh();
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) er[i][j] = TD(acc[i][j]);
    if (!memo.recorded) detail::record(memo, key, r.handle);  // a lane with other operands keeps its own
    d = static_cast<simdgroup_matrix<TD, N, M>&&>(r);
}
template <class TD, class TA, class TB, int M, int N, int K>
inline void simdgroup_multiply(simdgroup_matrix<TD, N, M>& d, const simdgroup_matrix<TA, K, M>& a,
                               const simdgroup_matrix<TB, N, K>& b, fgemu::Site site = fgemu::Site::here()) {
    simdgroup_multiply_accumulate(d, a, b, make_filled_simdgroup_matrix<TD, N, M>(TD(0), site), site);
}

}  // namespace metal
