// Prelude of every generated module. Compiled by NVRTC for the GPU, and by the host's C++
// compiler with -DDIRK_HOST for the host emulator, which runs the same row functions.
typedef long long i64;
typedef unsigned long long u64;
typedef int i32;
typedef unsigned int u32;
typedef unsigned char u8;

#ifdef DIRK_HOST
#include <string.h>
#include <vector>
#define __global__
#define __device__
#define __forceinline__ inline
static inline i64 __double_as_longlong(double x) { i64 b; memcpy(&b, &x, 8); return b; }
static inline i32 __float_as_int(float x) { i32 b; memcpy(&b, &x, 4); return b; }
// The emulator runs one thread: an atomic is the plain read-modify-write.
static inline u64 atomicAdd(u64* p, u64 v) { u64 o = *p; *p = o + v; return o; }
static inline double atomicAdd(double* p, double v) { double o = *p; *p = o + v; return o; }
static inline i64 atomicMin(i64* p, i64 v) { i64 o = *p; if (v < o) *p = v; return o; }
static inline i64 atomicMax(i64* p, i64 v) { i64 o = *p; if (v > o) *p = v; return o; }
static inline u64 atomicCAS(u64* p, u64 cmp, u64 v) { u64 o = *p; if (o == cmp) *p = v; return o; }
static inline u32 atomicOr(u32* p, u32 v) { u32 o = *p; *p = o | v; return o; }
#define ARG(T, k) (*(T*)args[k])
#endif

#define I32_MIN (-2147483647 - 1)
#define I64_MIN (-9223372036854775807LL - 1)
#define I64_MAX 9223372036854775807LL

// Flags a kernel raises for rows whose CPU result is an error or a rule it does not reproduce;
// the host then runs the work on the CPU.
#define FLAG_DIV_ZERO 1u
#define FLAG_CAST_RANGE 2u
__device__ __forceinline__ void raise_flag(u32* flags, u32 f) { atomicOr(flags, f); }

// Validity bit i of an Arrow bitmap (LSB first); a null bitmap means all valid.
__device__ __forceinline__ bool vbit(const u8* __restrict__ m, u64 i) {
  return m == 0 || ((m[i >> 3] >> (i & 7)) & 1);
}
__device__ __forceinline__ bool bbit(const u8* __restrict__ m, u64 i) {
  return (m[i >> 3] >> (i & 7)) & 1;
}

// IEEE 754 totalOrder keys, as arrow-rs compares floats (f64::total_cmp): -NaN < -inf < ... <
// -0.0 < +0.0 < ... < +inf < +NaN. The map is its own inverse.
__device__ __forceinline__ i64 tkey(double x) {
  i64 b = __double_as_longlong(x);
  return b ^ (i64)(((u64)(b >> 63)) >> 1);
}
__device__ __forceinline__ i32 tkey(float x) {
  i32 b = __float_as_int(x);
  return b ^ (i32)(((u32)(b >> 31)) >> 1);
}
// Comparison keys: DataFusion compares floats by totalOrder after turning -0.0 into +0.0
// (datafusion-physical-expr-common's `compare_op_for_nested`/`apply_cmp`), so NaN = NaN and
// NaN is greater than every number, while -0.0 = +0.0.
__device__ __forceinline__ i64 ckey(double x) { return tkey(x == 0.0 ? 0.0 : x); }
__device__ __forceinline__ i32 ckey(float x) { return tkey(x == 0.0f ? 0.0f : x); }
__device__ __forceinline__ i64 ckey(i64 x) { return x; }
__device__ __forceinline__ i32 ckey(i32 x) { return x; }
__device__ __forceinline__ bool ckey(bool x) { return x; }
__device__ __forceinline__ i64 tkey(i64 x) { return x; }
__device__ __forceinline__ i32 tkey(i32 x) { return x; }
__device__ __forceinline__ bool tkey(bool x) { return x; }

// Integer arithmetic wraps, as DataFusion's (add_wrapping unless fail_on_overflow); signed
// overflow is undefined in C++, so it is done unsigned.
__device__ __forceinline__ i32 wadd(i32 a, i32 b) { return (i32)((u32)a + (u32)b); }
__device__ __forceinline__ i32 wsub(i32 a, i32 b) { return (i32)((u32)a - (u32)b); }
__device__ __forceinline__ i32 wmul(i32 a, i32 b) { return (i32)((u32)a * (u32)b); }
__device__ __forceinline__ i64 wadd(i64 a, i64 b) { return (i64)((u64)a + (u64)b); }
__device__ __forceinline__ i64 wsub(i64 a, i64 b) { return (i64)((u64)a - (u64)b); }
__device__ __forceinline__ i64 wmul(i64 a, i64 b) { return (i64)((u64)a * (u64)b); }
__device__ __forceinline__ float wadd(float a, float b) { return a + b; }
__device__ __forceinline__ float wsub(float a, float b) { return a - b; }
__device__ __forceinline__ float wmul(float a, float b) { return a * b; }
__device__ __forceinline__ double wadd(double a, double b) { return a + b; }
__device__ __forceinline__ double wsub(double a, double b) { return a - b; }
__device__ __forceinline__ double wmul(double a, double b) { return a * b; }
// Integer division: arrow's div_checked errors on a zero divisor and on MIN / -1; the kernel
// raises a flag and the CPU path produces the error.
__device__ __forceinline__ i32 wdiv(i32 a, i32 b, u32* flags) {
  if (b == 0 || (b == -1 && a == I32_MIN)) { raise_flag(flags, FLAG_DIV_ZERO); return 0; }
  return a / b;
}
__device__ __forceinline__ i64 wdiv(i64 a, i64 b, u32* flags) {
  if (b == 0 || (b == -1 && a == I64_MIN)) { raise_flag(flags, FLAG_DIV_ZERO); return 0; }
  return a / b;
}
__device__ __forceinline__ float wdiv(float a, float b, u32*) { return a / b; }
__device__ __forceinline__ double wdiv(double a, double b, u32*) { return a / b; }

// Float to integer casts: arrow's cast (not `safe`) errors when the truncated value is out of
// range or NaN; in range it truncates toward zero like C.
__device__ __forceinline__ i32 f2i32(double x, u32* flags) {
  if (!(x > -2147483649.0 && x < 2147483648.0)) { raise_flag(flags, FLAG_CAST_RANGE); return 0; }
  return (i32)x;
}
__device__ __forceinline__ i64 f2i64(double x, u32* flags) {
  if (!(x >= -9223372036854775808.0 && x < 9223372036854775808.0)) { raise_flag(flags, FLAG_CAST_RANGE); return 0; }
  return (i64)x;
}
__device__ __forceinline__ i32 i64toi32(i64 x, u32* flags) {
  if (x < (i64)I32_MIN || x > 2147483647LL) { raise_flag(flags, FLAG_CAST_RANGE); return 0; }
  return (i32)x;
}

// Aggregate slot updates: atomic on the GPU's shared or global tables, plain on a thread's own.
template <bool A> __device__ __forceinline__ void slot_add(u64* p, u64 v) {
  if (A) atomicAdd(p, v); else *p += v;
}
template <bool A> __device__ __forceinline__ void slot_add(double* p, double v) {
  if (A) atomicAdd(p, v); else *p += v;
}
template <bool A> __device__ __forceinline__ void slot_min(i64* p, i64 v) {
  if (A) atomicMin(p, v); else if (v < *p) *p = v;
}
template <bool A> __device__ __forceinline__ void slot_max(i64* p, i64 v) {
  if (A) atomicMax(p, v); else if (v > *p) *p = v;
}

#define EMPTY_KEY 0xffffffffffffffffULL
__device__ __forceinline__ u64 mix64(u64 k) {
  k ^= k >> 33; k *= 0xff51afd7ed558ccdULL; k ^= k >> 33; k *= 0xc4ceb9fe1a85ec53ULL; k ^= k >> 33;
  return k;
}
// The slot of group code `code` in an open-addressing table of cap_mask + 1 slots (at most half
// full by construction, so the probe ends). Linear probing; insert by compare-and-swap.
__device__ __forceinline__ u64 hash_slot(u64* table, u64 cap_mask, u64 code) {
  u64 h = mix64(code) & cap_mask;
  for (;;) {
    u64 prev = atomicCAS(&table[h], EMPTY_KEY, code);
    if (prev == EMPTY_KEY || prev == code) return h;
    h = (h + 1) & cap_mask;
  }
}
