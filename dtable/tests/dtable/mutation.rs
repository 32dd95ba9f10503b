//! In-place mutation: UPDATE, DELETE, TRUNCATE, ALTER TABLE and the in-place DataFrame-style
//! methods, checked against DataFusion's own DML on a `MemTable`, and the five guarantees
//! (in place, snapshots, all or nothing, serializable, same answers as a reference).

use super::compare::{assert_same, run_dirk, try_dirk};
use arrow::array::{Array, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use dirk_dtable::prelude::*;
use proptest::prelude::*;
use std::sync::Arc;

/// `m(id, x, f, s)`: `n` rows; `x` has nulls every 7th row.
fn rows(n: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("x", DataType::Int64, true),
        Field::new("f", DataType::Float64, true),
        Field::new("s", DataType::Utf8, true),
    ]));
    let ids: Vec<i64> = (0..n).collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(Int64Array::from_iter(
                ids.iter().map(|i| (i % 7 != 3).then_some(i * 3 % 101)),
            )),
            Arc::new(Float64Array::from_iter_values(
                ids.iter().map(|i| *i as f64 / 4.0),
            )),
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| format!("s{}", i % 13)),
            )),
        ],
    )
    .unwrap()
}

fn dirk(workers: usize, partitions: usize, n: i64) -> Session {
    let s = super::harness::builder(workers)
        .partitions(partitions)
        .build()
        .unwrap();
    s.create_table("m", vec![rows(n)]).unwrap();
    s
}

fn datafusion_reference(n: i64) -> SessionContext {
    let ctx = SessionContext::new();
    let b = rows(n);
    let t = MemTable::try_new(b.schema(), vec![vec![b]]).unwrap();
    ctx.register_table("m", Arc::new(t)).unwrap();
    ctx
}

/// The row count a DML statement reports.
fn count_of(batches: &[RecordBatch]) -> u64 {
    let b = &batches[0];
    let c = b.column(0);
    match c.data_type() {
        DataType::UInt64 => c.as_primitive::<arrow::datatypes::UInt64Type>().value(0),
        DataType::Int64 => c.as_primitive::<Int64Type>().value(0) as u64,
        other => panic!("count of type {other}"),
    }
}

/// Runs `sql` on both; the counts and then the whole tables must agree.
async fn step(s: &Session, reference: &SessionContext, sql: &str) {
    let want = reference
        .sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql} on DataFusion: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{sql} on DataFusion: {e}"));
    let got = run_dirk(s, sql, sql).await;
    assert_eq!(count_of(&got), count_of(&want), "rows changed by {sql}");
    let all = "SELECT * FROM m";
    let want = reference.sql(all).await.unwrap().collect().await.unwrap();
    let got = run_dirk(s, all, all).await;
    assert_same(&got, &want, false, &format!("table after {sql}"));
}

const STATEMENTS: &[&str] = &[
    "UPDATE m SET x = x + 1 WHERE id % 3 = 0",
    "UPDATE m SET s = 'changed', f = f * 2 WHERE x > 50",
    "DELETE FROM m WHERE id % 5 = 0",
    "INSERT INTO m VALUES (1000, 1, 1.5, 'new'), (1001, NULL, NULL, NULL)",
    "UPDATE m SET x = NULL WHERE id < 10",
    "UPDATE m SET x = 0 WHERE x IS NULL",
    "UPDATE m AS t SET x = t.x * 2 WHERE t.s = 's4'",
    "UPDATE m SET f = -f",
    "DELETE FROM m WHERE s = 'no such value'",
    "DELETE FROM m WHERE x > 90 OR s IS NULL",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_match_datafusion_at_1_3_and_4_workers() {
    for workers in [1, 3, 4] {
        let s = dirk(workers, 3, 200);
        let reference = datafusion_reference(200);
        for sql in STATEMENTS {
            step(&s, &reference, sql).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_and_alter_table() {
    let s = dirk(2, 3, 100);
    let count = |sql: &'static str| {
        let s = &s;
        async move { count_of(&run_dirk(s, sql, sql).await) }
    };
    assert_eq!(
        count("ALTER TABLE m ADD COLUMN y BIGINT DEFAULT 7").await,
        100
    );
    let got = run_dirk(&s, "SELECT sum(y), count(y) FROM m", "sum y").await;
    assert_eq!(got[0].column(0).as_primitive::<Int64Type>().value(0), 700);
    // The new column is nullable (no NOT NULL): it can be set to null.
    assert_eq!(count("UPDATE m SET y = NULL WHERE id < 10").await, 10);
    assert_eq!(count("ALTER TABLE m ADD COLUMN z VARCHAR").await, 100);
    let got = run_dirk(&s, "SELECT count(z), count(*) FROM m", "z").await;
    assert_eq!(got[0].column(0).as_primitive::<Int64Type>().value(0), 0);
    assert_eq!(count("ALTER TABLE m DROP COLUMN z").await, 100);
    count("ALTER TABLE m RENAME COLUMN y TO why").await;
    let got = run_dirk(&s, "SELECT sum(why) FROM m", "renamed").await;
    assert_eq!(got[0].column(0).as_primitive::<Int64Type>().value(0), 630);
    count("ALTER TABLE m RENAME TO renamed").await;
    assert!(s.sql("SELECT * FROM m").await.is_err());
    assert_eq!(count("TRUNCATE renamed").await, 100);
    let got = run_dirk(&s, "SELECT count(*) FROM renamed", "truncated").await;
    assert_eq!(got[0].column(0).as_primitive::<Int64Type>().value(0), 0);
    // The schema stays, and the table takes rows again.
    count("INSERT INTO renamed (id, x, f, s, why) VALUES (1, 2, 3.0, 'a', 4)").await;
    let got = run_dirk(&s, "SELECT why FROM renamed", "after insert").await;
    assert_eq!(got[0].column(0).as_primitive::<Int64Type>().value(0), 4);
    for bad in [
        "ALTER TABLE renamed ADD COLUMN x BIGINT",
        "ALTER TABLE renamed DROP COLUMN nope",
        "ALTER TABLE nope ADD COLUMN a INT",
        "ALTER TABLE renamed ADD COLUMN n INT NOT NULL",
        "UPDATE renamed SET nope = 1",
        "UPDATE renamed SET x = 'text'",
    ] {
        let err = try_dirk(&s, bad).await.err();
        let err = err
            .unwrap_or_else(|| panic!("{bad} should fail"))
            .to_string();
        assert!(!err.contains('\n'), "{bad}: one line: {err}");
    }
}

/// The column `c` of the single chunk of a one-partition table: its buffer's address, values.
fn column_of(s: &Session, table: &str, c: usize) -> (usize, Vec<Option<i64>>) {
    let t = s.table(table).unwrap();
    let chunk = s.engine().fetch(&t.partitions()[0][0]).unwrap();
    let a = chunk.batches()[0].column(c).as_primitive::<Int64Type>();
    (a.values().as_ptr() as usize, a.iter().collect())
}

/// Guarantee 1: an updated fixed-width column is written in its own buffer; untouched columns
/// are never copied (also when a column is added).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_write_in_place() {
    if !super::harness::on_cluster() {
        // Buffer addresses can be read only where the chunks live: in this process.
        buffers_are_written_in_place().await;
    }
    // An UPDATE whose expression needs no other table moves no data between workers.
    let s = dirk(2, 4, 1000);
    run_dirk(&s, "UPDATE m SET x = x + id WHERE id % 2 = 0", "update").await;
    let log = s.engine().event_log();
    let mutation: Vec<_> = log
        .records
        .iter()
        .filter(|r| r.name.starts_with("Update"))
        .collect();
    assert_eq!(mutation.len(), 8, "4 prepare and 4 apply tasks");
    assert_eq!(mutation.iter().map(|r| r.bytes_moved).sum::<u64>(), 0);
}

async fn buffers_are_written_in_place() {
    let s = dirk(1, 1, 1000);
    let (x_before, _) = column_of(&s, "m", 1);
    let (id_before, _) = column_of(&s, "m", 0);
    let got = run_dirk(&s, "UPDATE m SET x = 5 WHERE id < 100", "update").await;
    assert_eq!(count_of(&got), 100);
    let (x_after, values) = column_of(&s, "m", 1);
    assert_eq!(
        x_after, x_before,
        "x was copied instead of written in place"
    );
    assert!(values[..100].iter().all(|v| *v == Some(5)));
    assert_eq!(values[100], Some(300 % 101));
    assert_eq!(column_of(&s, "m", 0).0, id_before, "id was copied");

    // Nulls into a column that has a validity bitmap: still in place.
    run_dirk(&s, "UPDATE m SET x = NULL WHERE id >= 990", "nulls").await;
    let (x_nulls, values) = column_of(&s, "m", 1);
    assert_eq!(x_nulls, x_before);
    assert!(values[990..].iter().all(Option::is_none));

    run_dirk(&s, "ALTER TABLE m ADD COLUMN y BIGINT DEFAULT 1", "add").await;
    assert_eq!(column_of(&s, "m", 0).0, id_before, "ADD COLUMN copied id");
    assert_eq!(column_of(&s, "m", 1).0, x_before, "ADD COLUMN copied x");
}

/// Only chunks with matching rows are written: the others get no read-write task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untouched_partitions_are_not_written() {
    let s = dirk(2, 4, 1000);
    // Rows 0..250 are partition 0.
    run_dirk(&s, "UPDATE m SET x = 1 WHERE id < 10", "update").await;
    let log = s.engine().event_log();
    let applies = log
        .records
        .iter()
        .filter(|r| r.name.as_ref() == "UpdateApply")
        .count();
    assert_eq!(applies, 1);
}

/// Guarantee 2: a reader holding data from before a mutation keeps seeing it; the mutation
/// copies the shared buffer instead of writing under the reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_keep_their_snapshot() {
    let s = dirk(1, 1, 1000);
    let before = run_dirk(&s, "SELECT * FROM m", "before").await;
    let held = s
        .engine()
        .fetch(&s.table("m").unwrap().partitions()[0][0])
        .unwrap();
    let held_x = held.batches()[0]
        .column(1)
        .as_primitive::<Int64Type>()
        .clone();
    let held_values: Vec<_> = held_x.iter().collect();
    run_dirk(&s, "UPDATE m SET x = -1", "update").await;
    assert_eq!(held_x.iter().collect::<Vec<_>>(), held_values);
    let (x_after, values) = column_of(&s, "m", 1);
    assert_ne!(
        x_after,
        held_x.values().as_ptr() as usize,
        "written under a reader"
    );
    assert!(values.iter().all(|v| *v == Some(-1)));
    // A query result collected before is unchanged too.
    let reference = datafusion_reference(1000);
    let want = reference
        .sql("SELECT * FROM m")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_same(&before, &want, false, "result collected before the update");
    drop(held);
}

/// Guarantee 3: a statement that fails in any partition leaves every partition unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_statement_changes_nothing() {
    let s = dirk(2, 4, 400);
    // The last partition holds a value that does not cast.
    run_dirk(&s, "UPDATE m SET s = '12' WHERE id < 399", "prepare").await;
    run_dirk(&s, "UPDATE m SET s = 'twelve' WHERE id = 399", "prepare").await;
    let before = run_dirk(&s, "SELECT * FROM m", "before").await;
    for bad in [
        "UPDATE m SET x = CAST(s AS BIGINT)",
        "UPDATE m SET x = CAST(CASE WHEN id = 399 THEN 1e30 ELSE 1.0 END AS BIGINT)",
        "DELETE FROM m WHERE CAST(s AS BIGINT) > 0",
        "ALTER TABLE m ADD COLUMN bad INT DEFAULT 'x'",
    ] {
        let failed = match s.sql(bad).await {
            Ok(df) => df.collect().await.is_err(),
            Err(_) => true,
        };
        assert!(failed, "{bad} should fail");
        let after = run_dirk(&s, "SELECT * FROM m", "after").await;
        assert_same(&after, &before, false, &format!("table after failed {bad}"));
    }
}

/// Guarantee 4: concurrent statements give the result of some serial order. Tasks transfer
/// amounts between accounts (one statement each), insert and delete empty accounts, and read
/// the total, concurrently. Every read must see the total unchanged (a read that saw half a
/// statement, or one partition before and another after a statement, would not), and the
/// final balances must equal the serial replay (the transfers commute, so every serial order
/// gives the same balances).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_statements_are_serializable() {
    const ACCOUNTS: i64 = 40;
    for workers in [1, 3] {
        let s = Arc::new(
            super::harness::builder(workers)
                .partitions(4)
                .build()
                .unwrap(),
        );
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("balance", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..ACCOUNTS)),
                Arc::new(Int64Array::from_iter_values((0..ACCOUNTS).map(|_| 100))),
            ],
        )
        .unwrap();
        s.create_table("acct", vec![batch]).unwrap();
        let mut tasks = Vec::new();
        for t in 0..4i64 {
            let s = Arc::clone(&s);
            tasks.push(tokio::spawn(async move {
                let mut transfers = Vec::new();
                let mut rng = 17 + t as u64 * 31;
                let mut next = || {
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (rng >> 33) as i64
                };
                for i in 0..12 {
                    let (a, b, amount) = (next() % ACCOUNTS, next() % ACCOUNTS, next() % 9 + 1);
                    let sql = match i % 4 {
                        0 | 1 if a != b => {
                            transfers.push((a, b, amount));
                            format!(
                                "UPDATE acct SET balance = CASE WHEN id = {a} THEN balance - \
                                 {amount} ELSE balance + {amount} END WHERE id IN ({a}, {b})"
                            )
                        }
                        2 => format!("INSERT INTO acct VALUES ({}, 0)", 1000 + t * 100 + i),
                        _ => format!(
                            "DELETE FROM acct WHERE id = {} AND balance = 0",
                            1000 + t * 100 + i - 1
                        ),
                    };
                    run_dirk(&s, &sql, &sql).await;
                    let total = run_dirk(&s, "SELECT sum(balance) FROM acct", "total").await;
                    assert_eq!(
                        total[0].column(0).as_primitive::<Int64Type>().value(0),
                        ACCOUNTS * 100,
                        "a read saw part of a statement"
                    );
                }
                transfers
            }));
        }
        let mut want: Vec<i64> = vec![100; ACCOUNTS as usize];
        for t in tasks {
            for (a, b, amount) in t.await.unwrap() {
                want[a as usize] -= amount;
                want[b as usize] += amount;
            }
        }
        let got = run_dirk(
            &s,
            "SELECT id, balance FROM acct WHERE id < 1000 ORDER BY id",
            "final",
        )
        .await;
        let got: Vec<i64> = got
            .iter()
            .flat_map(|b| b.column(1).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        assert_eq!(got, want, "final balances with {workers} workers");
    }
}

/// The DataFrames.jl-style methods, against the same changes made with DataFusion's DML.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_methods() {
    let s = dirk(2, 3, 100);
    let reference = datafusion_reference(100);
    let five = rows(5);
    reference
        .register_table(
            "five",
            Arc::new(MemTable::try_new(five.schema(), vec![vec![five]]).unwrap()),
        )
        .unwrap();
    let df = |sql: &'static str| {
        let r = &reference;
        async move { count_of(&r.sql(sql).await.unwrap().collect().await.unwrap()) }
    };
    assert_eq!(
        s.update("m", col("id").lt(lit(10)), vec![("x", lit(-1))])
            .await
            .unwrap(),
        df("UPDATE m SET x = -1 WHERE id < 10").await
    );
    assert_eq!(
        s.fill_null("m", "x", lit(0)).await.unwrap(),
        df("UPDATE m SET x = 0 WHERE x IS NULL").await
    );
    assert_eq!(
        s.delete_where("m", col("id").gt_eq(lit(90))).await.unwrap(),
        df("DELETE FROM m WHERE id >= 90").await
    );
    assert_eq!(
        s.append("m", vec![rows(5)]).await.unwrap(),
        df("INSERT INTO m SELECT * FROM five").await
    );
    assert_eq!(
        s.with_column_inplace("m", "x", col("x") + lit(1))
            .await
            .unwrap(),
        df("UPDATE m SET x = x + 1").await
    );
    assert_eq!(
        s.with_column_inplace("m", "g", col("f") * lit(2.0))
            .await
            .unwrap(),
        95
    );
    assert_eq!(s.rename_column("m", "g", "double_f").await.unwrap(), 0);
    let got = run_dirk(&s, "SELECT sum(double_f) - 2 * sum(f) FROM m", "g").await;
    assert_eq!(
        got[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Float64Type>()
            .value(0),
        0.0
    );
    assert_eq!(s.drop_columns("m", &["double_f", "s"]).await.unwrap(), 95);
    assert_eq!(s.table("m").unwrap().schema().fields().len(), 3);
    let more = s
        .table_df("m")
        .await
        .unwrap()
        .filter(col("id").lt(lit(3)))
        .unwrap();
    assert_eq!(
        s.append_df("m", more).await.unwrap(),
        df("INSERT INTO m SELECT * FROM m WHERE id < 3").await
    );
    assert_eq!(
        s.sort_inplace("m", vec![col("id").sort(false, true)])
            .await
            .unwrap(),
        101
    );
    let t = s.table("m").unwrap();
    assert_eq!(t.num_partitions(), 3);
    let ids: Vec<i64> = t
        .collect(s.engine())
        .unwrap()
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(
        ids, sorted,
        "partitions hold consecutive ranges of the sorted rows"
    );

    let want = reference
        .sql("SELECT id, x, f FROM m")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let got = run_dirk(&s, "SELECT id, x, f FROM m", "methods").await;
    assert_same(&got, &want, false, "after the in-place methods");
    assert_eq!(s.truncate("m").await.unwrap(), 101);
}

#[derive(Debug, Clone)]
enum Op {
    Update {
        modulus: i64,
        delta: i64,
    },
    SetNull {
        below: i64,
    },
    FillNull {
        value: i64,
    },
    Delete {
        modulus: i64,
        rem: i64,
    },
    Insert {
        id: i64,
        x: Option<i64>,
    },
    Strings {
        modulus: i64,
    },
    /// A `MERGE` from a `VALUES` source of distinct ids: negative `x` deletes the matched row,
    /// others add to it, and unmatched ids are inserted.
    Merge {
        rows: Vec<(i64, i64)>,
    },
    /// Range statements on `id`, which statistics prune, and an in-place write of `id` that
    /// must invalidate them.
    ShiftIds {
        below: i64,
        by: i64,
    },
    DeleteRange {
        from: i64,
        to: i64,
    },
}

impl Op {
    fn sql(&self) -> String {
        match self {
            Op::Update { modulus, delta } => {
                format!("UPDATE m SET x = x + {delta}, f = f + 1 WHERE id % {modulus} = 0")
            }
            Op::SetNull { below } => format!("UPDATE m SET x = NULL WHERE id < {below}"),
            Op::FillNull { value } => format!("UPDATE m SET x = {value} WHERE x IS NULL"),
            Op::Delete { modulus, rem } => {
                format!("DELETE FROM m WHERE id % {modulus} = {rem}")
            }
            Op::Insert { id, x } => format!(
                "INSERT INTO m VALUES ({id}, {}, 0.5, 'ins')",
                x.map_or("NULL".to_string(), |v| v.to_string())
            ),
            Op::Strings { modulus } => {
                format!("UPDATE m SET s = concat(s, 'x') WHERE id % {modulus} = 1")
            }
            Op::ShiftIds { below, by } => {
                format!("UPDATE m SET id = id + {by} WHERE id < {below}")
            }
            Op::DeleteRange { from, to } => {
                format!("DELETE FROM m WHERE id BETWEEN {from} AND {to}")
            }
            Op::Merge { .. } => format!(
                "MERGE INTO m USING {} ON m.id = src.id \
                 WHEN MATCHED AND src.x < 0 THEN DELETE \
                 WHEN MATCHED THEN UPDATE SET x = m.x + src.x \
                 WHEN NOT MATCHED THEN INSERT VALUES (src.id, src.x, 0.25, 'merged')",
                self.source()
            ),
        }
    }

    fn source(&self) -> String {
        let Op::Merge { rows } = self else {
            return String::new();
        };
        let values: Vec<String> = rows.iter().map(|(i, x)| format!("({i}, {x})")).collect();
        format!("(VALUES {}) AS src(id, x)", values.join(", "))
    }

    /// Runs the operation on Dirk and on the reference: DataFusion's own DML where it has the
    /// statement, else the table DataFusion computes out of place.
    async fn check(&self, s: &Session, reference: &SessionContext) {
        if !matches!(self, Op::Merge { .. }) {
            return step(s, reference, &self.sql()).await;
        }
        let src = self.source();
        change_matches(
            s,
            reference,
            &self.sql(),
            &format!(
                "SELECT (SELECT count(*) FROM m JOIN {src} ON m.id = src.id) \
                      + (SELECT count(*) FROM {src} WHERE id NOT IN (SELECT id FROM m))"
            ),
            &format!(
                "SELECT m.id, m.x + src.x, m.f, m.s FROM m JOIN {src} ON m.id = src.id \
                 WHERE src.x >= 0 \
                 UNION ALL SELECT * FROM m WHERE id NOT IN (SELECT id FROM {src}) \
                 UNION ALL SELECT id, x, 0.25, 'merged' FROM {src} \
                 WHERE id NOT IN (SELECT id FROM m)"
            ),
        )
        .await
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (2..7i64, -5..5i64).prop_map(|(modulus, delta)| Op::Update { modulus, delta }),
        (0..60i64).prop_map(|below| Op::SetNull { below }),
        (-3..3i64).prop_map(|value| Op::FillNull { value }),
        (2..9i64, 0..2i64).prop_map(|(modulus, rem)| Op::Delete { modulus, rem }),
        (100..110i64, proptest::option::of(0..9i64)).prop_map(|(id, x)| Op::Insert { id, x }),
        (2..5i64).prop_map(|modulus| Op::Strings { modulus }),
        (0..80i64, 1..200i64).prop_map(|(below, by)| Op::ShiftIds { below, by }),
        (0..250i64, 0..30i64).prop_map(|(from, len)| Op::DeleteRange {
            from,
            to: from + len
        }),
        proptest::collection::btree_map(0..120i64, -3..9i64, 1..12).prop_map(|rows| Op::Merge {
            rows: rows.into_iter().collect()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

    /// Guarantee 5: random mutation sequences give the same table as DataFusion's own DML on
    /// a `MemTable`, after every step, with 1, 2 and 4 workers.
    #[test]
    fn random_mutations_match_datafusion(ops in proptest::collection::vec(op(), 1..7)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for workers in [1, 2, 4] {
                let s = dirk(workers, 3, 80);
                let reference = datafusion_reference(80);
                for o in &ops {
                    o.check(&s, &reference).await;
                }
            }
        });
    }
}

/// Guarantee 3, cancelled: a statement dropped part-way (here by a timeout) has changed either
/// nothing or everything, never some partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_statement_is_all_or_nothing() {
    let s = dirk(2, 4, 200_000);
    let sum = || async {
        let got = run_dirk(&s, "SELECT sum(x), count(x) FROM m", "sum").await;
        (
            got[0].column(0).as_primitive::<Int64Type>().value(0),
            got[0].column(1).as_primitive::<Int64Type>().value(0),
        )
    };
    for ms in [0, 1, 3, 10, 30, 100, 1000] {
        let (before, n) = sum().await;
        let update = async { s.sql("UPDATE m SET x = x + 1000").await?.collect().await };
        // Finished or dropped part-way: either way the table must be all or nothing.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(ms), update).await;
        let (after, _) = sum().await;
        assert!(
            after == before || after == before + 1000 * n,
            "after a cancel at {ms} ms: sum {after}, before {before}"
        );
    }
    // The session is still usable, and a later statement sees the state the cancels left.
    let (before, n) = sum().await;
    run_dirk(&s, "UPDATE m SET x = x - 1", "after").await;
    assert_eq!(sum().await.0, before - n);
}

/// `u(id, x, s)`: a source for the statements that read another table. Its ids step by 7 up
/// to 300, so some match `m`'s rows (0..n) and some do not; `x` is null every 4th row.
fn source_rows() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("x", DataType::Int64, true),
        Field::new("s", DataType::Utf8, true),
    ]));
    let ids: Vec<i64> = (0..300).step_by(7).collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(Int64Array::from_iter(
                ids.iter()
                    .enumerate()
                    .map(|(k, i)| (k % 4 != 1).then_some(i * 10)),
            )),
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| format!("u{i}")),
            )),
        ],
    )
    .unwrap()
}

fn with_source(workers: usize, partitions: usize, n: i64) -> (Session, SessionContext) {
    let s = dirk(workers, partitions, n);
    s.create_table("u", vec![source_rows()]).unwrap();
    let reference = datafusion_reference(n);
    let b = source_rows();
    let t = MemTable::try_new(b.schema(), vec![vec![b]]).unwrap();
    reference.register_table("u", Arc::new(t)).unwrap();
    (s, reference)
}

/// Runs `sql` on Dirk and checks the count it reports and the table after it against `count`
/// and `table_after`, both answered by DataFusion out of place on the table as it was.
async fn change_matches(
    s: &Session,
    reference: &SessionContext,
    sql: &str,
    count: &str,
    table_after: &str,
) {
    let want_count = reference.sql(count).await.unwrap().collect().await.unwrap();
    let want = reference
        .sql(table_after)
        .await
        .unwrap_or_else(|e| panic!("{table_after}: {e}"))
        .collect()
        .await
        .unwrap();
    let got = run_dirk(s, sql, sql).await;
    assert_eq!(
        count_of(&got),
        count_of(&want_count),
        "rows changed by {sql}"
    );
    let all = "SELECT * FROM m";
    let got = run_dirk(s, all, all).await;
    assert_same(&got, &want, false, &format!("table after {sql}"));
    // The reference moves on to the same table, under the table's column names.
    let old = reference.table_provider("m").await.unwrap().schema();
    let schema = Arc::new(Schema::new(
        old.fields()
            .iter()
            .zip(want[0].schema().fields())
            .map(|(o, w)| Field::new(o.name(), w.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let want = want
        .into_iter()
        .map(|b| RecordBatch::try_new(schema.clone(), b.columns().to_vec()).unwrap())
        .collect();
    reference.deregister_table("m").unwrap();
    let t = MemTable::try_new(schema, vec![want]).unwrap();
    reference.register_table("m", Arc::new(t)).unwrap();
}

/// `UPDATE ... FROM`, and `UPDATE`/`DELETE` whose `WHERE` holds a subquery: run as a query over
/// the target's tagged rows, written back in place (DataFusion answers the same out of place).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_from_and_subqueries_match_datafusion() {
    for workers in [1, 3] {
        let (s, reference) = with_source(workers, 3, 200);
        change_matches(
            &s,
            &reference,
            "UPDATE m SET x = u.x, s = u.s FROM u WHERE m.id = u.id AND u.x IS NOT NULL",
            "SELECT count(*) FROM m JOIN u ON m.id = u.id WHERE u.x IS NOT NULL",
            "SELECT m.id, CASE WHEN u.id IS NOT NULL THEN u.x ELSE m.x END AS x, m.f, \
             CASE WHEN u.id IS NOT NULL THEN u.s ELSE m.s END AS s \
             FROM m LEFT JOIN (SELECT * FROM u WHERE x IS NOT NULL) u ON m.id = u.id",
        )
        .await;
        change_matches(
            &s,
            &reference,
            "UPDATE m AS t SET f = t.f + 1 WHERE t.id IN (SELECT id + 1 FROM u)",
            "SELECT count(*) FROM m WHERE id IN (SELECT id + 1 FROM u)",
            "SELECT m.id, m.x, CASE WHEN k.id IS NOT NULL THEN m.f + 1 ELSE m.f END AS f, m.s \
             FROM m LEFT JOIN (SELECT DISTINCT id + 1 AS id FROM u) k ON m.id = k.id",
        )
        .await;
        change_matches(
            &s,
            &reference,
            "UPDATE m SET x = (SELECT max(x) FROM u) WHERE id < 5",
            "SELECT count(*) FROM m WHERE id < 5",
            "SELECT id, CASE WHEN id < 5 THEN mx ELSE x END AS x, f, s \
             FROM m CROSS JOIN (SELECT max(x) AS mx FROM u)",
        )
        .await;
        change_matches(
            &s,
            &reference,
            "DELETE FROM m WHERE EXISTS (SELECT 1 FROM u WHERE u.id = m.id + 2)",
            "SELECT count(*) FROM m WHERE id - 2 IN (SELECT id - 4 FROM u)",
            "SELECT * FROM m WHERE NOT EXISTS (SELECT 1 FROM u WHERE u.id = m.id + 2)",
        )
        .await;
    }
}

/// `MERGE INTO`: matched rows updated or deleted by the first clause that holds, unmatched
/// source rows inserted, unmatched target rows deleted; the same table DataFusion builds out of
/// place, at 1 and 3 workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_into_matches_datafusion() {
    for workers in [1, 3] {
        let (s, reference) = with_source(workers, 3, 200);
        change_matches(
            &s,
            &reference,
            "MERGE INTO m USING u ON m.id = u.id \
             WHEN MATCHED AND u.x IS NULL THEN DELETE \
             WHEN MATCHED THEN UPDATE SET x = u.x, s = u.s \
             WHEN NOT MATCHED THEN INSERT (id, x, f, s) VALUES (u.id, u.x, 0.5, u.s)",
            "SELECT (SELECT count(*) FROM m JOIN u ON m.id = u.id) \
                  + (SELECT count(*) FROM u WHERE id NOT IN (SELECT id FROM m))",
            "SELECT m.id, u.x, m.f, u.s FROM m JOIN u ON m.id = u.id WHERE u.x IS NOT NULL \
             UNION ALL SELECT * FROM m WHERE id NOT IN (SELECT id FROM u) \
             UNION ALL SELECT id, x, 0.5, s FROM u WHERE id NOT IN (SELECT id FROM m)",
        )
        .await;
        // Aliases, a derived source, a column-subset update, and NOT MATCHED BY SOURCE.
        change_matches(
            &s,
            &reference,
            "MERGE INTO m AS t USING (SELECT id, x FROM u WHERE id < 150) AS src ON t.id = src.id \
             WHEN MATCHED THEN UPDATE SET f = t.f * 2 \
             WHEN NOT MATCHED BY SOURCE AND t.id % 10 = 0 THEN DELETE",
            "SELECT (SELECT count(*) FROM m WHERE id IN (SELECT id FROM u WHERE id < 150)) \
                  + (SELECT count(*) FROM m WHERE id % 10 = 0 \
                     AND id NOT IN (SELECT id FROM u WHERE id < 150))",
            "SELECT m.id, m.x, CASE WHEN k.id IS NOT NULL THEN m.f * 2 ELSE m.f END AS f, m.s \
             FROM m LEFT JOIN (SELECT id FROM u WHERE id < 150) k ON m.id = k.id \
             WHERE k.id IS NOT NULL OR m.id % 10 <> 0",
        )
        .await;
        // Nothing matches: nothing changes.
        change_matches(
            &s,
            &reference,
            "MERGE INTO m USING u ON m.id = u.id + 100000 WHEN MATCHED THEN DELETE",
            "SELECT 0::BIGINT",
            "SELECT * FROM m",
        )
        .await;
    }
}

/// All or nothing for the row-targeted path: a target row matched twice, or a value that does
/// not cast, fails the statement and leaves the table as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_merge_changes_nothing() {
    let (s, _) = with_source(2, 4, 200);
    s.sql(
        "CREATE TABLE dup AS SELECT id, x FROM u UNION ALL SELECT id, x + 1 FROM u WHERE id = 70",
    )
    .await
    .unwrap();
    let before = run_dirk(&s, "SELECT * FROM m", "before").await;
    for (bad, why) in [
        (
            "MERGE INTO m USING dup ON m.id = dup.id WHEN MATCHED THEN UPDATE SET x = dup.x",
            "more than once",
        ),
        (
            "UPDATE m SET x = dup.x FROM dup WHERE m.id = dup.id",
            "more than once",
        ),
        (
            "MERGE INTO m USING u ON m.id = u.id WHEN MATCHED THEN UPDATE SET x = CAST(u.s AS BIGINT) \
             WHEN NOT MATCHED THEN INSERT VALUES (u.id, 1, 1.0, 'new')",
            "Cannot cast",
        ),
        (
            "MERGE INTO m USING u ON m.id = u.id WHEN NOT MATCHED THEN INSERT (x) VALUES (u.x)",
            "NOT NULL",
        ),
        (
            "MERGE INTO m USING u ON m.id = u.id WHEN MATCHED THEN INSERT VALUES (1, 1, 1.0, 'a')",
            "not allowed",
        ),
    ] {
        let err = try_dirk(&s, bad).await.err();
        let err = err.unwrap_or_else(|| panic!("{bad} should fail")).to_string();
        assert!(err.contains(why), "{bad}: {err}");
        assert!(!err.contains('\n'), "{bad}: the error is one line: {err}");
        let after = run_dirk(&s, "SELECT * FROM m", "after").await;
        assert_same(&after, &before, false, &format!("table after failed {bad}"));
    }
    // No statement left its temporary tables behind.
    assert_eq!(s.table_names(), vec!["dup", "m", "u"]);
}

/// An `UPDATE ... FROM` that writes only one column leaves the others' buffers alone and, on
/// one worker, writes the updated column's buffer in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_from_writes_in_place() {
    if super::harness::on_cluster() {
        // Buffer addresses can be read only where the chunks live: in this process.
        return;
    }
    let (s, _) = with_source(1, 1, 1000);
    let before_x = column_of(&s, "m", 1);
    let before_id = column_of(&s, "m", 0);
    let n = count_of(&run_dirk(&s, "UPDATE m SET x = u.x FROM u WHERE m.id = u.id", "u").await);
    assert_eq!(n, (0..300).step_by(7).count() as u64);
    let after_x = column_of(&s, "m", 1);
    assert_eq!(after_x.0, before_x.0, "x's buffer is written in place");
    assert_eq!(column_of(&s, "m", 0), before_id, "id is untouched");
    assert_ne!(after_x.1, before_x.1);
}

/// Partition pruning: a `WHERE` whose column's min/max rules a chunk out gives that chunk no
/// task; statistics are dropped when an in-place write changes the column, so a later statement
/// still finds the rows (checked against DataFusion after every step).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_rule_out_chunks() {
    let s = dirk(2, 4, 1000);
    let reference = datafusion_reference(1000);
    let tasks = |s: &Session, prefix: &str| {
        s.engine()
            .event_log()
            .records
            .iter()
            .filter(|r| r.name.starts_with(prefix))
            .count()
    };
    // Rows 0..250 are chunk 0, 250..500 chunk 1, and so on. A chunk's statistics task
    // computes every column the planner reads too (the numeric ones), so the check's `SELECT`
    // after each statement recomputes only the chunks and columns the statement wrote.
    step(&s, &reference, "UPDATE m SET x = 1 WHERE id < 10").await;
    assert_eq!(
        tasks(&s, "Stats"),
        5,
        "the first statement on id computes its statistics (4), the check's SELECT x of chunk 0"
    );
    assert_eq!(tasks(&s, "UpdatePrepare"), 1);
    s.engine().clear_event_log();
    step(&s, &reference, "DELETE FROM m WHERE id >= 900").await;
    step(
        &s,
        &reference,
        "UPDATE m SET f = 0 WHERE id BETWEEN 300 AND 320",
    )
    .await;
    assert_eq!(
        tasks(&s, "Stats"),
        1,
        "statistics are kept (the DELETE's new chunk inherits them); the check's SELECT \
         recomputes only chunk 1, whose f the UPDATE wrote"
    );
    assert_eq!(tasks(&s, "Delete"), 1);
    assert_eq!(tasks(&s, "UpdatePrepare"), 1);
    // An in-place write of id: chunk 0's statistics go, and the moved rows are still found.
    s.engine().clear_event_log();
    step(&s, &reference, "UPDATE m SET id = id + 5000 WHERE id < 5").await;
    step(&s, &reference, "DELETE FROM m WHERE id >= 5000").await;
    assert_eq!(
        tasks(&s, "Stats"),
        1,
        "only chunk 0's id statistics were dropped"
    );
    assert_eq!(tasks(&s, "Delete"), 1);
    // A predicate statistics cannot decide keeps every chunk.
    s.engine().clear_event_log();
    step(&s, &reference, "UPDATE m SET f = 1 WHERE x % 2 = 0").await;
    assert_eq!(tasks(&s, "UpdatePrepare"), 4);
}
