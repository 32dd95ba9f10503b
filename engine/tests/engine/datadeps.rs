//! Datadeps: random sequences of reads and in-place writes on shared chunks give the same results
//! as serial execution.

use super::common::{context, value_chunk, value_of};
use dirk_engine::{Arg, TaskOptions};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Read chunk i into a new output chunk.
    Read(usize),
    /// chunk i := a * chunk i + b * chunk j (read-write i, read j).
    Affine(usize, usize, i64, i64),
    /// chunk i := c (write only).
    Set(usize, i64),
}

const CHUNKS: usize = 4;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..CHUNKS).prop_map(Op::Read),
        (0..CHUNKS, 0..CHUNKS, -3i64..4, -3i64..4).prop_map(|(i, j, a, b)| Op::Affine(i, j, a, b)),
        (0..CHUNKS, -100i64..100).prop_map(|(i, c)| Op::Set(i, c)),
    ]
}

fn check(ops: &[Op], workers: usize) {
    let (ctx, _) = context(workers);
    let chunks: Vec<_> = (0..CHUNKS)
        .map(|i| ctx.put(value_chunk(i as i64 + 1)).unwrap())
        .collect();
    let mut serial: Vec<i64> = (0..CHUNKS).map(|i| i as i64 + 1).collect();
    let mut reads = Vec::new();
    for op in ops {
        match *op {
            Op::Read(i) => {
                let h = ctx.spawn("copy", vec![Arg::read(&chunks[i])], TaskOptions::new());
                reads.push((h, serial[i]));
            }
            Op::Affine(i, j, a, b) => {
                let mut args = vec![Arg::read_write(&chunks[i])];
                let other = if i != j {
                    args.push(Arg::read(&chunks[j]));
                    serial[j]
                } else {
                    0
                };
                let opts = TaskOptions::new().params_json(&[a, b]).unwrap();
                ctx.spawn("affine", args, opts);
                serial[i] = a
                    .wrapping_mul(serial[i])
                    .wrapping_add(b.wrapping_mul(other));
            }
            Op::Set(i, c) => {
                let opts = TaskOptions::new().params_json(&[c]).unwrap();
                ctx.spawn("set", vec![Arg::write(&chunks[i])], opts);
                serial[i] = c;
            }
        }
    }
    for (h, expected) in reads {
        let got = value_of(&h.fetch().unwrap()[0]);
        assert_eq!(got, expected, "read by {:?}", h.id());
    }
    ctx.wait_idle().unwrap();
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(value_of(&ctx.fetch(c).unwrap()), serial[i], "chunk {i}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_reads_and_writes_equal_serial_execution(ops in prop::collection::vec(op(), 1..40)) {
        check(&ops, 4);
    }

    #[test]
    fn same_on_one_worker(ops in prop::collection::vec(op(), 1..20)) {
        check(&ops, 1);
    }
}

#[test]
fn writes_to_task_outputs_are_ordered_too() {
    // t0 makes a chunk; t1 reads it, t2 updates it in place, t3 reads it: t1 sees the old value,
    // t3 the new one, whether they name the output by task or by chunk.
    let (ctx, _) = context(3);
    let src = ctx.put(value_chunk(5)).unwrap();
    let t0 = ctx.spawn("copy", vec![Arg::read(&src)], TaskOptions::new());
    let t1 = ctx.spawn("copy", vec![Arg::output(&t0, 0)], TaskOptions::new());
    let opts = TaskOptions::new().params_json(&[10i64, 0]).unwrap();
    let _t2 = ctx.spawn(
        "affine",
        vec![Arg::output_with(&t0, 0, dirk_engine::Access::ReadWrite)],
        opts,
    );
    let t3 = ctx.spawn("copy", vec![Arg::output(&t0, 0)], TaskOptions::new());
    assert_eq!(value_of(&t1.fetch().unwrap()[0]), 5);
    assert_eq!(value_of(&t3.fetch().unwrap()[0]), 50);
    let out = &t0.wait().unwrap().chunks[0];
    let t4 = ctx.spawn("copy", vec![Arg::read(out)], TaskOptions::new());
    assert_eq!(value_of(&t4.fetch().unwrap()[0]), 50);
}
