//! Source of the generated aggregation kernels: per-slot accumulator fields, and the module
//! that folds rows into slots (registers, shared memory, a dense table or a global hash table).

use super::*;

/// What an aggregate accumulates per group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AggKind {
    /// `COUNT(*)`: the group's row count (slot field 0).
    CountStar,
    /// `COUNT(x)`: non-NULL values.
    Count,
    /// `SUM(x)` of Int64 (wrapping) or Float64.
    Sum,
    /// `MIN(x)`, kept as a totalOrder key.
    Min,
    /// `MAX(x)`, kept as a totalOrder key.
    Max,
    /// `AVG(x)` of Float64: count and sum.
    Avg,
}

/// One aggregate of a generated aggregation kernel.
#[derive(Debug, Clone)]
pub(crate) struct AggSpec {
    pub(crate) kind: AggKind,
    pub(crate) arg: Option<GExpr>,
}

/// A per-slot accumulator array. Every field is 8 bytes wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Count,
    SumInt,
    SumFloat,
    MinKey,
    MaxKey,
}

impl Field {
    fn c_type(self) -> &'static str {
        match self {
            Field::Count | Field::SumInt => "u64",
            Field::SumFloat => "double",
            Field::MinKey | Field::MaxKey => "i64",
        }
    }
}

/// Field 0 is the group's row count; then each aggregate's fields: `(value?, count)`.
pub(crate) fn agg_fields(aggs: &[AggSpec]) -> (Vec<Field>, Vec<(Option<usize>, usize)>) {
    let mut fields = vec![Field::Count];
    let mut layout = Vec::new();
    for a in aggs {
        let value = match a.kind {
            AggKind::CountStar => {
                layout.push((None, 0));
                continue;
            }
            AggKind::Count => None,
            AggKind::Sum | AggKind::Avg => {
                Some(if a.arg.as_ref().is_some_and(|e| e.ty().is_float()) {
                    Field::SumFloat
                } else {
                    Field::SumInt
                })
            }
            AggKind::Min => Some(Field::MinKey),
            AggKind::Max => Some(Field::MaxKey),
        };
        let value_field = value.map(|f| {
            fields.push(f);
            fields.len() - 1
        });
        fields.push(Field::Count);
        layout.push((value_field, fields.len() - 1));
    }
    (fields, layout)
}

/// Group slots a block of threads keeps in its own registers when the whole key space is this
/// small (no GROUP BY is one slot).
pub(crate) const PRIVATE_SLOTS_MAX: u64 = 16;

/// The aggregation module: entries `agg_init`, `agg_private`, `agg_shared`, `agg_global` and
/// `agg_hash`, which differ in where group slots live (see `ops::aggregate`). All take the same
/// parameters: the inputs, key parameters (`kmin`, `kstride`, `knull` per key), `n`, `nslots`,
/// the hash `table` and `cap_mask`, one pointer per slot field, and `flags`.
pub(crate) fn aggregate_module(
    predicate: Option<&GExpr>,
    keys: &[(usize, GpuType)],
    aggs: &[AggSpec],
    inputs: &Inputs,
    private_slots: u64,
) -> (crate::device::KernelSource, Params) {
    let agg_shapes: Vec<String> = aggs
        .iter()
        .map(|a| {
            format!(
                "{:?}({})",
                a.kind,
                a.arg.as_ref().map_or(String::new(), |e| e.shape())
            )
        })
        .collect();
    let shape = format!(
        "aggregate {} where {} by {:?} [{}] private {private_slots}",
        inputs.shape(),
        predicate.map_or("-".to_string(), |p| p.shape()),
        keys,
        agg_shapes.join(", ")
    );
    let (fields, layout) = agg_fields(aggs);
    let mut ins = inputs.params();
    for j in 0..keys.len() {
        ins.push("i64", format!("kmin{j}"));
        ins.push("u64", format!("kstride{j}"));
        ins.push("u64", format!("knull{j}"));
    }
    let mut all = ins.clone();
    all.push("u64", "n");
    all.push("u64", "nslots");
    all.push("u64* __restrict__", "table");
    all.push("u64", "cap_mask");
    let mut slot_params = Params::default();
    for (f, field) in fields.iter().enumerate() {
        slot_params.push(format!("{}*", field.c_type()), format!("s{f}"));
    }
    all.extend(&slot_params);
    all.push("u32* __restrict__", "flags");

    let mut s = format!(
        "// {shape}\n{PRELUDE}\nstruct In {{\n{}}};\n",
        ins.struct_members()
    );
    writeln!(
        s,
        "#define PRIVATE_SLOTS {private_slots}\n#define NFIELDS {}",
        fields.len()
    )
    .unwrap();
    s.push_str(&keep_row_fn(inputs, predicate));
    // The group code: a mixed-radix number of the keys' offsets from their minimum, the digit
    // `knull` standing for NULL.
    s.push_str("__device__ __forceinline__ u64 group_of(const In& in, u64 i) {\n  (void)in; (void)i;\n  u64 code = 0;\n");
    for (j, (index, _)) in keys.iter().enumerate() {
        let valid = if inputs.nullable().contains(index) {
            format!("vbit(in.c{index}v, i)")
        } else {
            "true".into()
        };
        writeln!(
            s,
            "  code += ({valid} ? (u64)(i64)in.c{index}[i] - (u64)in.kmin{j} : in.knull{j}) * in.kstride{j};"
        )
        .unwrap();
    }
    s.push_str("  return code;\n}\n");
    // Slots: one array per field.
    writeln!(s, "struct Slots {{\n{}}};", slot_params.struct_members()).unwrap();
    s.push_str("__device__ __forceinline__ Slots carve(u64* base, u64 nslots) {\n  Slots s;\n");
    for (f, field) in fields.iter().enumerate() {
        writeln!(s, "  s.s{f} = ({}*)(base + {f} * nslots);", field.c_type()).unwrap();
    }
    s.push_str("  return s;\n}\n");
    s.push_str("__device__ __forceinline__ void slot_init(Slots s, u64 k) {\n");
    for (f, field) in fields.iter().enumerate() {
        let init = match field {
            Field::MinKey => "I64_MAX",
            Field::MaxKey => "I64_MIN",
            _ => "0",
        };
        writeln!(s, "  s.s{f}[k] = {init};").unwrap();
    }
    s.push_str("}\n");
    // Update slot k with row i.
    let mut e = Emitter::new(inputs.nullable());
    let mut updates = String::from("  slot_add<A>(&s.s0[k], (u64)1);\n");
    for (a, (value, count)) in aggs.iter().zip(&layout) {
        let Some(arg) = &a.arg else { continue };
        let (v, o) = e.emit(arg);
        let mut u = format!("slot_add<A>(&s.s{count}[k], (u64)1);");
        if let Some(vf) = value {
            let op = match fields[*vf] {
                Field::SumInt => format!("slot_add<A>(&s.s{vf}[k], (u64)(i64){v});"),
                Field::SumFloat => format!("slot_add<A>(&s.s{vf}[k], (double){v});"),
                Field::MinKey => format!("slot_min<A>(&s.s{vf}[k], (i64)tkey({v}));"),
                Field::MaxKey => format!("slot_max<A>(&s.s{vf}[k], (i64)tkey({v}));"),
                Field::Count => unreachable!(),
            };
            u.push(' ');
            u.push_str(&op);
        }
        writeln!(updates, "  if ({o}) {{ {u} }}").unwrap();
    }
    write!(
        s,
        "template <bool A> __device__ __forceinline__ void slot_update(Slots s, u64 k, const In& in, u64 i, u32* flags) {{\n  (void)in; (void)flags;\n{}{updates}}}\n",
        e.body
    )
    .unwrap();
    // Merge slot sk of one table into slot dk of another (a block's or thread's partial into a
    // wider one).
    s.push_str("__device__ __forceinline__ void slot_merge(Slots d, u64 dk, Slots s, u64 sk) {\n  u64 rows = s.s0[sk];\n  if (rows == 0) return;\n  slot_add<true>(&d.s0[dk], rows);\n");
    for (f, field) in fields.iter().enumerate().skip(1) {
        let op = match field {
            Field::Count | Field::SumInt | Field::SumFloat => "slot_add<true>",
            Field::MinKey => "slot_min<true>",
            Field::MaxKey => "slot_max<true>",
        };
        writeln!(s, "  {op}(&d.s{f}[dk], s.s{f}[sk]);").unwrap();
    }
    s.push_str("}\n");
    let names = ins.names();
    let slot_names = slot_params.names();
    write!(
        s,
        r#"
#ifndef DIRK_HOST
#define GRID_STRIDE(i, n) for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
extern "C" __global__ void agg_init({sig}) {{
  Slots g = {{ {slot_names} }};
  GRID_STRIDE(k, nslots) {{ slot_init(g, k); if (table) table[k] = EMPTY_KEY; }}
}}
// Few groups: each thread accumulates in its own slots, then a block's threads merge into
// shared memory, and the block into the global slots.
extern "C" __global__ void agg_private({sig}) {{
  In in = {{ {names} }};
  Slots g = {{ {slot_names} }};
  u64 own[NFIELDS * PRIVATE_SLOTS];
  Slots t = carve(own, PRIVATE_SLOTS);
  for (u64 k = 0; k < PRIVATE_SLOTS; k++) slot_init(t, k);
  GRID_STRIDE(i, n) {{ if (keep_row(in, i, flags)) slot_update<false>(t, group_of(in, i), in, i, flags); }}
  extern __shared__ u64 smem[];
  Slots b = carve(smem, PRIVATE_SLOTS);
  for (u64 k = threadIdx.x; k < PRIVATE_SLOTS; k += blockDim.x) slot_init(b, k);
  __syncthreads();
  for (u64 k = 0; k < PRIVATE_SLOTS; k++) slot_merge(b, k, t, k);
  __syncthreads();
  for (u64 k = threadIdx.x; k < PRIVATE_SLOTS; k += blockDim.x) slot_merge(g, k, b, k);
}}
// A key space that fits in shared memory: a block-private table, merged at the end.
extern "C" __global__ void agg_shared({sig}) {{
  In in = {{ {names} }};
  Slots g = {{ {slot_names} }};
  extern __shared__ u64 smem[];
  Slots b = carve(smem, nslots);
  for (u64 k = threadIdx.x; k < nslots; k += blockDim.x) slot_init(b, k);
  __syncthreads();
  GRID_STRIDE(i, n) {{ if (keep_row(in, i, flags)) slot_update<true>(b, group_of(in, i), in, i, flags); }}
  __syncthreads();
  for (u64 k = threadIdx.x; k < nslots; k += blockDim.x) slot_merge(g, k, b, k);
}}
// A dense key space too large for shared memory: global slots indexed by the group code.
extern "C" __global__ void agg_global({sig}) {{
  In in = {{ {names} }};
  Slots g = {{ {slot_names} }};
  GRID_STRIDE(i, n) {{ if (keep_row(in, i, flags)) slot_update<true>(g, group_of(in, i), in, i, flags); }}
}}
// A sparse key space: an open-addressing table of group codes.
extern "C" __global__ void agg_hash({sig}) {{
  In in = {{ {names} }};
  Slots g = {{ {slot_names} }};
  GRID_STRIDE(i, n) {{ if (keep_row(in, i, flags)) slot_update<true>(g, hash_slot(table, cap_mask, group_of(in, i)), in, i, flags); }}
}}
#else
#define HOST_PROLOGUE \
{unpack}  In in = {{ {names} }}; (void)in; (void)table; (void)cap_mask; \
  Slots g = {{ {slot_names} }};
// The emulator runs the private and shared strategies as blocks of HOST_BLOCK rows: a private
// table per block, merged into the global one, exercising init, update and merge.
#define HOST_BLOCK 1000
static void host_blocks(void** args, u64 private_slots) {{
  HOST_PROLOGUE
  u64 slots = private_slots ? private_slots : nslots;
  std::vector<u64> own(NFIELDS * slots);
  for (u64 start = 0; start < n; start += HOST_BLOCK) {{
    Slots t = carve(own.data(), slots);
    for (u64 k = 0; k < slots; k++) slot_init(t, k);
    for (u64 i = start; i < n && i < start + HOST_BLOCK; i++) if (keep_row(in, i, flags)) slot_update<false>(t, group_of(in, i), in, i, flags);
    for (u64 k = 0; k < slots; k++) slot_merge(g, k, t, k);
  }}
}}
extern "C" void host_agg_init(void** args) {{
  HOST_PROLOGUE
  for (u64 k = 0; k < nslots; k++) {{ slot_init(g, k); if (table) table[k] = EMPTY_KEY; }}
}}
extern "C" void host_agg_private(void** args) {{ host_blocks(args, PRIVATE_SLOTS); }}
extern "C" void host_agg_shared(void** args) {{ host_blocks(args, 0); }}
extern "C" void host_agg_global(void** args) {{
  HOST_PROLOGUE
  for (u64 i = 0; i < n; i++) if (keep_row(in, i, flags)) slot_update<true>(g, group_of(in, i), in, i, flags);
}}
extern "C" void host_agg_hash(void** args) {{
  HOST_PROLOGUE
  for (u64 i = 0; i < n; i++) if (keep_row(in, i, flags)) slot_update<true>(g, hash_slot(table, cap_mask, group_of(in, i)), in, i, flags);
}}
#endif
"#,
        sig = all.signature(),
        unpack = all.host_unpack().replace('\n', " \\\n"),
    )
    .unwrap();
    (
        crate::device::KernelSource {
            key: module_key("aggregate", &shape),
            text: s,
        },
        all,
    )
}
