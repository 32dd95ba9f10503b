//! Bounds on protobuf bytes before they are decoded.
//!
//! prost decodes nested messages by recursion, and Dirk turns its recursion limit off (a plan
//! nests two messages per node; a 64-table join nests more than prost's 100). So before a plan
//! fragment from the network is decoded, its nesting is measured here without recursion, and a
//! fragment nested deeper than [`MAX_FRAGMENT_DEPTH`] is refused with an error instead of
//! overflowing the decoding thread's stack.

/// The deepest nesting of protobuf messages a fragment may have. The deepest fragments Dirk
/// makes (SQLite's 64-table joins in `select5`) nest about 400 deep; a task thread's stack
/// ([`dirk_engine::PROCESSOR_STACK`]) holds the decoding of this many with room to spare.
pub(crate) const MAX_FRAGMENT_DEPTH: usize = 1500;

/// The fields of one message, or `None` when `bytes` is not a well-formed message. Yields the
/// payload of each length-delimited field (which may be a nested message, a string or bytes).
fn length_delimited_fields(bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let mut fields = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let key = varint(&mut rest)?;
        if key >> 3 == 0 || key >> 3 > u64::from(u32::MAX >> 3) {
            return None;
        }
        match key & 7 {
            0 => {
                varint(&mut rest)?;
            }
            1 => rest = rest.get(8..)?,
            5 => rest = rest.get(4..)?,
            2 => {
                let n = usize::try_from(varint(&mut rest)?).ok()?;
                fields.push(rest.get(..n)?);
                rest = &rest[n..];
            }
            // Groups (3, 4) are not used by proto3; other wire types do not exist.
            _ => return None,
        }
    }
    Some(fields)
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..10 {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The nesting depth of the protobuf message `bytes` (1 for a message with no nested message),
/// or an error once it passes `limit`. A length-delimited field counts as a nested message
/// when its bytes are a well-formed message, so a string that happens to look like one can only
/// make the measure larger than the truth, never smaller. Takes no recursion, and time
/// proportional to the size times the depth.
pub(crate) fn nesting_depth(bytes: &[u8], limit: usize) -> Result<usize, String> {
    // Each message is parsed once: the fields that parse as messages are kept with their depth.
    let Some(top) = length_delimited_fields(bytes) else {
        return Ok(1);
    };
    let mut deepest = 1;
    let mut pending = vec![(top, 1usize)];
    while let Some((fields, depth)) = pending.pop() {
        for field in fields.into_iter().filter(|f| !f.is_empty()) {
            let Some(nested) = length_delimited_fields(field) else {
                continue;
            };
            if depth + 1 > limit {
                return Err(format!(
                    "the plan fragment nests more than {limit} messages deep"
                ));
            }
            deepest = deepest.max(depth + 1);
            pending.push((nested, depth + 1));
        }
    }
    Ok(deepest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message whose field 1 holds `inner`.
    fn wrap(inner: &[u8]) -> Vec<u8> {
        let mut m = vec![(1 << 3) | 2];
        let mut n = inner.len();
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                m.push(b);
                break;
            }
            m.push(b | 0x80);
        }
        m.extend_from_slice(inner);
        m
    }

    #[test]
    fn depth_is_measured_and_bounded() {
        // field 1 = varint 150
        let leaf = vec![0x08, 0x96, 0x01];
        assert_eq!(nesting_depth(&leaf, 10), Ok(1));
        let mut m = leaf.clone();
        for _ in 0..9 {
            m = wrap(&m);
        }
        assert_eq!(nesting_depth(&m, 10), Ok(10));
        assert!(nesting_depth(&wrap(&m), 10).is_err());
        // Deeper than any stack would hold by recursion: refused, without recursion.
        let mut deep = leaf;
        for _ in 0..5_000 {
            deep = wrap(&deep);
        }
        let e = nesting_depth(&deep, MAX_FRAGMENT_DEPTH).unwrap_err();
        assert!(e.contains("more than 1500"), "{e}");
        // Bytes that are no message at all have depth 1: the decoder refuses them itself.
        assert_eq!(nesting_depth(&[0xff, 0xff], 10), Ok(1));
    }

    /// A plan of `n` projections over an empty scan, encoded as Dirk encodes fragments.
    fn projections(n: usize) -> Vec<u8> {
        use arrow::datatypes::{DataType, Field, Schema};
        use datafusion::physical_expr::expressions::Column;
        use datafusion::physical_plan::empty::EmptyExec;
        use datafusion::physical_plan::projection::ProjectionExec;
        use datafusion::physical_plan::ExecutionPlan;
        use std::sync::Arc;
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        let mut plan: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(schema));
        for _ in 0..n {
            let a = Arc::new(Column::new("a", 0)) as _;
            plan = Arc::new(ProjectionExec::try_new(vec![(a, "a".to_string())], plan).unwrap());
        }
        crate::kernels::fragment::encode_plan(&plan).unwrap()
    }

    #[test]
    fn the_deepest_fragment_allowed_decodes_on_a_task_thread_and_a_deeper_one_is_refused() {
        let on_task_thread = || {
            let allowed = projections(700);
            let depth = nesting_depth(&allowed, MAX_FRAGMENT_DEPTH).unwrap();
            assert!(depth > MAX_FRAGMENT_DEPTH - 100, "{depth}");
            let ctx = datafusion::execution::TaskContext::default();
            crate::kernels::fragment::decode_fragment(&allowed, &ctx).unwrap();
            let e = crate::kernels::fragment::decode_fragment(&projections(800), &ctx)
                .unwrap_err()
                .to_string();
            assert!(e.contains("nests more than 1500"), "{e}");
        };
        std::thread::Builder::new()
            .stack_size(dirk_engine::PROCESSOR_STACK)
            .spawn(on_task_thread)
            .unwrap()
            .join()
            .unwrap();
    }
}
