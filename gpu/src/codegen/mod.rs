//! CUDA C++ source for generated kernels.
//!
//! A module is the prelude (`kernels/prelude.cuh`), an `In` struct of the kernel's inputs (one
//! member per column pointer and literal), the generated per-row device functions, the
//! `__global__` kernels (under `#ifndef DIRK_HOST`) and the host emulator's entries (under
//! `#ifdef DIRK_HOST`). Both kinds of entry take one parameter list, written once by
//! [`Params`], which also orders the launch arguments.

use std::collections::BTreeSet;
use std::fmt::Write;

use crate::column::GpuType;
use crate::ir::{ArithOp, CmpOp, GExpr, Param};

mod aggregate;

pub(crate) use aggregate::{
    agg_fields, aggregate_module, AggKind, AggSpec, Field, PRIVATE_SLOTS_MAX,
};

pub(crate) const PRELUDE: &str = include_str!("../../kernels/prelude.cuh");

/// A kernel's parameters, in order: C type and name.
#[derive(Debug, Default, Clone)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub(crate) fn push(&mut self, c_type: impl Into<String>, name: impl Into<String>) {
        self.0.push((c_type.into(), name.into()));
    }

    fn extend(&mut self, other: &Params) {
        self.0.extend(other.0.iter().cloned());
    }

    /// `T a, U b, …` for a `__global__` signature.
    fn signature(&self) -> String {
        self.0
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Declarations that read each parameter from the `void** args` of a host entry.
    fn host_unpack(&self) -> String {
        let mut s = String::new();
        for (k, (t, n)) in self.0.iter().enumerate() {
            writeln!(s, "  {t} {n} = ARG({t}, {k});").unwrap();
        }
        s
    }

    fn struct_members(&self) -> String {
        self.0
            .iter()
            .map(|(t, n)| format!("  {t} {n};\n"))
            .collect()
    }

    fn names(&self) -> String {
        self.0
            .iter()
            .map(|(_, n)| n.clone())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn param_c_type(p: &Param) -> &'static str {
    match p {
        Param::I32(_) => "i32",
        Param::I64(_) => "i64",
        Param::F32(_) => "float",
        Param::F64(_) => "double",
    }
}

/// The kernel inputs: each column read (values and validity pointers) and each literal.
#[derive(Debug, Clone)]
pub(crate) struct Inputs {
    /// Columns in parameter order, with whether each has a validity bitmap.
    pub(crate) columns: Vec<(usize, GpuType, bool)>,
    /// Literal parameter types, by slot.
    pub(crate) params: Vec<&'static str>,
}

impl Inputs {
    pub(crate) fn new(columns: Vec<(usize, GpuType, bool)>, params: &[Param]) -> Self {
        Inputs {
            columns,
            params: params.iter().map(param_c_type).collect(),
        }
    }

    fn params(&self) -> Params {
        let mut p = Params::default();
        for (index, ty, _) in &self.columns {
            p.push(
                format!("const {}* __restrict__", ty.c_type()),
                format!("c{index}"),
            );
            p.push("const u8* __restrict__", format!("c{index}v"));
        }
        for (slot, t) in self.params.iter().enumerate() {
            p.push(*t, format!("p{slot}"));
        }
        p
    }

    fn nullable(&self) -> BTreeSet<usize> {
        self.columns
            .iter()
            .filter(|(_, _, n)| *n)
            .map(|(i, _, _)| *i)
            .collect()
    }

    /// The part of a cache key the inputs decide: column types and nullability, literal types.
    pub(crate) fn shape(&self) -> String {
        let cols: Vec<String> = self
            .columns
            .iter()
            .map(|(i, t, n)| format!("c{i}:{t:?}{}", if *n { "?" } else { "" }))
            .collect();
        format!("[{}][{}]", cols.join(","), self.params.join(","))
    }
}

/// Writes SSA statements for expressions; each node becomes a value `vN` and a validity `oN`.
struct Emitter {
    body: String,
    next: usize,
    loaded: Vec<(usize, String, String)>,
    nullable: BTreeSet<usize>,
}

impl Emitter {
    fn new(nullable: BTreeSet<usize>) -> Self {
        Emitter {
            body: String::new(),
            next: 0,
            loaded: Vec::new(),
            nullable,
        }
    }

    fn fresh(&mut self) -> (String, String) {
        self.next += 1;
        (format!("v{}", self.next), format!("o{}", self.next))
    }

    fn line(&mut self, s: String) {
        self.body.push_str("  ");
        self.body.push_str(&s);
        self.body.push('\n');
    }

    /// Emits `e`; returns the names of its value and validity.
    fn emit(&mut self, e: &GExpr) -> (String, String) {
        match e {
            GExpr::Column { index, ty } => {
                if let Some((_, v, o)) = self.loaded.iter().find(|(i, _, _)| i == index) {
                    return (v.clone(), o.clone());
                }
                let (v, o) = self.fresh();
                if *ty == GpuType::Boolean {
                    self.line(format!("bool {v} = bbit(in.c{index}, i);"));
                } else {
                    self.line(format!("{} {v} = in.c{index}[i];", ty.c_type()));
                }
                if self.nullable.contains(index) {
                    self.line(format!("bool {o} = vbit(in.c{index}v, i);"));
                } else {
                    self.line(format!("const bool {o} = true;"));
                }
                self.loaded.push((*index, v.clone(), o.clone()));
                (v, o)
            }
            GExpr::Param { slot, ty } => {
                let (v, o) = self.fresh();
                self.line(format!(
                    "{} {v} = in.p{slot}; const bool {o} = true;",
                    ty.c_type()
                ));
                (v, o)
            }
            GExpr::Bool(b) => {
                let (v, o) = self.fresh();
                self.line(format!("const bool {v} = {b}; const bool {o} = true;"));
                (v, o)
            }
            GExpr::Null(ty) => {
                let (v, o) = self.fresh();
                let t = if *ty == GpuType::Boolean {
                    "bool"
                } else {
                    ty.c_type()
                };
                self.line(format!("const {t} {v} = 0; const bool {o} = false;"));
                (v, o)
            }
            GExpr::Cmp(op, l, r) => {
                let (lv, lo) = self.emit(l);
                let (rv, ro) = self.emit(r);
                let (v, o) = self.fresh();
                let c = match op {
                    CmpOp::Eq => "==",
                    CmpOp::NotEq => "!=",
                    CmpOp::Lt => "<",
                    CmpOp::LtEq => "<=",
                    CmpOp::Gt => ">",
                    CmpOp::GtEq => ">=",
                };
                self.line(format!("bool {o} = {lo} && {ro};"));
                self.line(format!("bool {v} = {o} && (ckey({lv}) {c} ckey({rv}));"));
                (v, o)
            }
            GExpr::And(l, r) => {
                let (lv, lo) = self.emit(l);
                let (rv, ro) = self.emit(r);
                let (v, o) = self.fresh();
                // Kleene: FALSE AND NULL is FALSE.
                self.line(format!(
                    "bool {o} = ({lo} && {ro}) || ({lo} && !{lv}) || ({ro} && !{rv});"
                ));
                self.line(format!("bool {v} = {lo} && {ro} && {lv} && {rv};"));
                (v, o)
            }
            GExpr::Or(l, r) => {
                let (lv, lo) = self.emit(l);
                let (rv, ro) = self.emit(r);
                let (v, o) = self.fresh();
                // Kleene: TRUE OR NULL is TRUE.
                self.line(format!("bool {v} = ({lo} && {lv}) || ({ro} && {rv});"));
                self.line(format!("bool {o} = ({lo} && {ro}) || {v};"));
                (v, o)
            }
            GExpr::Not(x) => {
                let (xv, xo) = self.emit(x);
                let (v, o) = self.fresh();
                self.line(format!("bool {o} = {xo}; bool {v} = {xo} && !{xv};"));
                (v, o)
            }
            GExpr::IsNull(x, negated) => {
                let (_, xo) = self.emit(x);
                let (v, o) = self.fresh();
                let test = if *negated { xo } else { format!("!{xo}") };
                self.line(format!("const bool {o} = true; bool {v} = {test};"));
                (v, o)
            }
            GExpr::Arith(op, l, r) => {
                let (lv, lo) = self.emit(l);
                let (rv, ro) = self.emit(r);
                let (v, o) = self.fresh();
                let t = l.ty().c_type();
                self.line(format!("bool {o} = {lo} && {ro};"));
                let f = match op {
                    ArithOp::Add => format!("wadd({lv}, {rv})"),
                    ArithOp::Sub => format!("wsub({lv}, {rv})"),
                    ArithOp::Mul => format!("wmul({lv}, {rv})"),
                    // Only valid rows divide: a NULL row's divisor is not looked at.
                    ArithOp::Div => format!("wdiv({lv}, {rv}, flags)"),
                };
                self.line(format!("{t} {v} = {o} ? {f} : ({t})0;"));
                (v, o)
            }
            GExpr::Cast(x, to) => {
                let (xv, xo) = self.emit(x);
                let (v, o) = self.fresh();
                let from = x.ty();
                let conv = match (from, to) {
                    (f, GpuType::Int32) if f.is_float() => format!("f2i32((double){xv}, flags)"),
                    (f, GpuType::Int64) if f.is_float() => format!("f2i64((double){xv}, flags)"),
                    (GpuType::Int64, GpuType::Int32) => format!("i64toi32({xv}, flags)"),
                    (_, t) => format!("({}){xv}", t.c_type()),
                };
                self.line(format!("bool {o} = {xo};"));
                self.line(format!(
                    "{} {v} = {o} ? {conv} : ({})0;",
                    to.c_type(),
                    to.c_type()
                ));
                (v, o)
            }
            GExpr::InList(x, list, negated) => {
                let (xv, xo) = self.emit(x);
                let mut found = Vec::new();
                let mut has_null = false;
                for item in list {
                    match item {
                        // DataFusion's IN list matches floats by bit pattern.
                        GExpr::Param { slot, .. } => {
                            found.push(format!("tkey({xv}) == tkey(in.p{slot})"))
                        }
                        _ => has_null = true,
                    }
                }
                let (v, o) = self.fresh();
                let any = if found.is_empty() {
                    "false".to_string()
                } else {
                    found.join(" || ")
                };
                self.line(format!("bool f{} = {xo} && ({any});", self.next));
                // x IN (…, NULL) is NULL unless x was found.
                self.line(format!(
                    "bool {o} = {xo} && (f{n} || {});",
                    !has_null,
                    n = self.next
                ));
                let val = if *negated {
                    format!("!f{}", self.next)
                } else {
                    format!("f{}", self.next)
                };
                self.line(format!("bool {v} = {o} && {val};"));
                (v, o)
            }
        }
    }
}

fn module_key(kind: &str, shape: &str) -> String {
    // FNV-1a: a stable key for file names; the shape itself is kept in the source's first line.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in shape.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("dirk_{kind}_{h:016x}")
}

fn keep_row_fn(inputs: &Inputs, predicate: Option<&GExpr>) -> String {
    let mut s = String::from(
        "__device__ __forceinline__ bool keep_row(const In& in, u64 i, u32* flags) {\n  (void)in; (void)i; (void)flags;\n",
    );
    match predicate {
        Some(p) => {
            let mut e = Emitter::new(inputs.nullable());
            let (v, o) = e.emit(p);
            s.push_str(&e.body);
            // WHERE keeps only TRUE: NULL is dropped.
            writeln!(s, "  return {o} && {v};").unwrap();
        }
        None => s.push_str("  return true;\n"),
    }
    s.push_str("}\n");
    s
}

/// The filter module for `predicate` over `inputs`: entry `filter` writes a selection bitmap
/// (Arrow layout, one word per 32 rows) and adds the number of selected rows to a counter.
pub(crate) fn filter_module(predicate: &GExpr, inputs: &Inputs) -> crate::device::KernelSource {
    let shape = format!("filter {} {}", inputs.shape(), predicate.shape());
    let ins = inputs.params();
    let mut all = ins.clone();
    all.push("u64", "n");
    all.push("u32* __restrict__", "out_bits");
    all.push("u64* __restrict__", "out_count");
    all.push("u32* __restrict__", "flags");
    let mut s = format!(
        "// {shape}\n{PRELUDE}\nstruct In {{\n{}}};\n",
        ins.struct_members()
    );
    s.push_str(&keep_row_fn(inputs, Some(predicate)));
    write!(
        s,
        r#"
#ifndef DIRK_HOST
extern "C" __global__ void filter({sig}) {{
  In in = {{ {names} }};
  u64 selected = 0;
  for (u64 base = (u64)blockIdx.x * blockDim.x; base < n; base += (u64)gridDim.x * blockDim.x) {{
    u64 i = base + threadIdx.x;
    bool keep = i < n && keep_row(in, i, flags);
    u32 word = __ballot_sync(0xffffffffu, keep);  // blockDim is a multiple of 32
    if ((threadIdx.x & 31) == 0 && i < n) {{ out_bits[i >> 5] = word; selected += __popc(word); }}
  }}
  if ((threadIdx.x & 31) == 0 && selected) atomicAdd(out_count, selected);
}}
#else
extern "C" void host_filter(void** args) {{
{unpack}  In in = {{ {names} }};
  u64 selected = 0;
  for (u64 w = 0; w < (n + 31) / 32; w++) {{
    u32 word = 0;
    for (u32 b = 0; b < 32; b++) {{ u64 i = w * 32 + b; if (i < n && keep_row(in, i, flags)) word |= 1u << b; }}
    out_bits[w] = word; selected += __builtin_popcount(word);
  }}
  *out_count += selected;
}}
#endif
"#,
        sig = all.signature(),
        names = ins.names(),
        unpack = all.host_unpack(),
    )
    .unwrap();
    crate::device::KernelSource {
        key: module_key("filter", &shape),
        text: s,
    }
}

/// Rows per compaction chunk: one block of 256 threads, a 32-row word each.
pub(crate) const CHUNK_WORDS: u64 = 256;

/// The compaction module (one per device): entries `chunk_counts`, `compact32`, `compact64` and
/// `compact_bits`. Its text does not vary, so it is written once per process.
pub(crate) fn compaction_module() -> &'static crate::device::KernelSource {
    static MODULE: std::sync::OnceLock<crate::device::KernelSource> = std::sync::OnceLock::new();
    MODULE.get_or_init(write_compaction_module)
}

fn write_compaction_module() -> crate::device::KernelSource {
    let text = format!(
        r#"// compaction
{PRELUDE}
#define CHUNK_WORDS {CHUNK_WORDS}
#ifndef DIRK_HOST
// Selected rows per chunk of CHUNK_WORDS words.
extern "C" __global__ void chunk_counts(const u32* __restrict__ bits, u64 nwords, u64* __restrict__ counts) {{
  for (u64 w = (u64)blockIdx.x * blockDim.x + threadIdx.x; w < nwords; w += (u64)gridDim.x * blockDim.x) {{
    u32 c = __popc(bits[w]);
    if (c) atomicAdd(&counts[w / CHUNK_WORDS], (u64)c);
  }}
}}
// Each block takes a chunk; thread t its word t. A block-wide scan of the words' counts gives
// each thread its first output position.
__device__ __forceinline__ u64 chunk_position(const u32* bits, u64 nwords, const u64* offsets, u64 chunk, u32* word_out) {{
  __shared__ u32 scan[CHUNK_WORDS];
  u64 w = chunk * CHUNK_WORDS + threadIdx.x;
  u32 word = w < nwords ? bits[w] : 0;
  u32 c = __popc(word);
  scan[threadIdx.x] = c;
  __syncthreads();
  for (u32 off = 1; off < CHUNK_WORDS; off <<= 1) {{
    u32 add = threadIdx.x >= off ? scan[threadIdx.x - off] : 0;
    __syncthreads();
    scan[threadIdx.x] += add;
    __syncthreads();
  }}
  u64 pos = offsets[chunk] + scan[threadIdx.x] - c;
  __syncthreads();
  *word_out = word;
  return pos;
}}
#define COMPACT_KERNEL(NAME, T) \
extern "C" __global__ void NAME(const u32* __restrict__ bits, u64 nwords, const u64* __restrict__ offsets, const T* __restrict__ src, T* __restrict__ dst) {{ \
  u64 nchunks = (nwords + CHUNK_WORDS - 1) / CHUNK_WORDS; \
  for (u64 chunk = blockIdx.x; chunk < nchunks; chunk += gridDim.x) {{ \
    u32 word; u64 pos = chunk_position(bits, nwords, offsets, chunk, &word); \
    u64 base = (chunk * CHUNK_WORDS + threadIdx.x) * 32; \
    while (word) {{ u32 b = __ffs(word) - 1; dst[pos++] = src[base + b]; word &= word - 1; }} \
  }} \
}}
COMPACT_KERNEL(compact32, u32)
COMPACT_KERNEL(compact64, u64)
// Bit-packed columns (validity, booleans): dst is zeroed; bits are set with atomicOr.
extern "C" __global__ void compact_bits(const u32* __restrict__ bits, u64 nwords, const u64* __restrict__ offsets, const u8* __restrict__ src, u32* __restrict__ dst) {{
  u64 nchunks = (nwords + CHUNK_WORDS - 1) / CHUNK_WORDS;
  for (u64 chunk = blockIdx.x; chunk < nchunks; chunk += gridDim.x) {{
    u32 word; u64 pos = chunk_position(bits, nwords, offsets, chunk, &word);
    u64 base = (chunk * CHUNK_WORDS + threadIdx.x) * 32;
    while (word) {{
      u32 b = __ffs(word) - 1;
      if (bbit(src, base + b)) atomicOr(&dst[pos >> 5], 1u << (pos & 31));
      pos++; word &= word - 1;
    }}
  }}
}}
#else
extern "C" void host_chunk_counts(void** args) {{
  const u32* bits = ARG(const u32*, 0); u64 nwords = ARG(u64, 1); u64* counts = ARG(u64*, 2);
  for (u64 w = 0; w < nwords; w++) counts[w / CHUNK_WORDS] += __builtin_popcount(bits[w]);
}}
template <class T> static void host_compact(void** args) {{
  const u32* bits = ARG(const u32*, 0); u64 nwords = ARG(u64, 1); const u64* offsets = ARG(const u64*, 2);
  const T* src = ARG(const T*, 3); T* dst = ARG(T*, 4);
  for (u64 w = 0; w < nwords; w++) {{
    u64 pos = offsets[w / CHUNK_WORDS];
    for (u64 v = (w / CHUNK_WORDS) * CHUNK_WORDS; v < w; v++) pos += __builtin_popcount(bits[v]);
    for (u32 b = 0; b < 32; b++) if ((bits[w] >> b) & 1) dst[pos++] = src[w * 32 + b];
  }}
}}
extern "C" void host_compact32(void** args) {{ host_compact<u32>(args); }}
extern "C" void host_compact64(void** args) {{ host_compact<u64>(args); }}
extern "C" void host_compact_bits(void** args) {{
  const u32* bits = ARG(const u32*, 0); u64 nwords = ARG(u64, 1); const u64* offsets = ARG(const u64*, 2);
  const u8* src = ARG(const u8*, 3); u32* dst = ARG(u32*, 4);
  for (u64 w = 0; w < nwords; w++) {{
    u64 pos = offsets[w / CHUNK_WORDS];
    for (u64 v = (w / CHUNK_WORDS) * CHUNK_WORDS; v < w; v++) pos += __builtin_popcount(bits[v]);
    for (u32 b = 0; b < 32; b++) if ((bits[w] >> b) & 1) {{ if (bbit(src, w * 32 + b)) dst[pos >> 5] |= 1u << (pos & 31); pos++; }}
  }}
}}
#endif
"#
    );
    crate::device::KernelSource {
        key: module_key("compaction", "v1"),
        text,
    }
}
