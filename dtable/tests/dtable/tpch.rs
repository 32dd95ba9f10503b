//! TPC-H: all 22 queries at SF 0.01 equal DataFusion's on one node over the same data, with 1, 2,
//! 3 and 4 workers and 1, 3 and 8 partitions per table.

use super::compare::{assert_same, run_dirk};
use arrow::array::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use dirk_dtable::tpch::{TpchLayout, QUERIES, TABLES};
use dirk_dtable::Session;
use std::sync::Arc;

const SCALE: f64 = 0.01;

/// DataFusion on one node, over the tables as generated whole (one part each).
async fn reference() -> SessionContext {
    reference_at(SCALE).await
}

/// DataFusion on one node over TPC-H at `scale`, the tables as generated whole.
pub(crate) async fn reference_at(scale: f64) -> SessionContext {
    let gen = Session::builder().workers(1).partitions(1).build().unwrap();
    gen.load_tpch(scale).await.unwrap();
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    for t in TABLES {
        let table = gen.table(t).unwrap();
        let batches: Vec<RecordBatch> = table.collect(gen.engine()).unwrap();
        let mem = MemTable::try_new(table.schema().clone(), vec![batches]).unwrap();
        ctx.register_table(t, Arc::new(mem)).unwrap();
    }
    ctx
}

async fn check(workers: usize, partitions: usize, layout: TpchLayout, reference: &SessionContext) {
    // Generated in `partitions` parts by tasks on the workers: the same rows as one part.
    let s = super::harness::builder(workers)
        .partitions(partitions)
        .build()
        .unwrap();
    s.load_tpch_with(SCALE, layout).await.unwrap();
    let table_chunks: usize = TABLES
        .iter()
        .map(|t| s.table(t).unwrap().chunks().count())
        .sum();
    for (i, sql) in QUERIES.iter().enumerate() {
        let what = format!(
            "q{:02} on {workers} workers, {partitions} partitions, {layout:?}",
            i + 1
        );
        let want = reference.sql(sql).await.unwrap().collect().await.unwrap();
        let got = run_dirk(&s, sql, &what).await;
        assert!(!want.is_empty(), "{what}: the reference returned nothing");
        assert_same(&got, &want, true, &what);
    }
    // Each query freed what it made: the workers hold the tables and nothing else.
    let what = format!("after TPC-H on {workers} workers, {partitions} partitions");
    super::harness::assert_workers_hold(&s, table_chunks, &what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpch_equals_datafusion_at_every_worker_and_partition_count() {
    let reference = reference().await;
    // 1, 2 and 4 workers, and three: the cluster size the cluster tests use (on
    // `cluster_integration`, three processes).
    for workers in [1, 2, 3, 4] {
        for partitions in [1, 3, 8] {
            check(workers, partitions, TpchLayout::ByOrderKey, &reference).await;
        }
    }
    // The layout the planner does not know, where every join on order key is an exchange.
    check(2, 3, TpchLayout::AsGenerated, &reference).await;
}

/// `load_tpch` hash-partitions `orders` and `lineitem` by order key, partition `p` of both on
/// worker `p mod w`, and q04's join of the two then needs no exchange; as generated, it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_and_lineitem_are_laid_out_by_order_key() {
    for layout in [TpchLayout::ByOrderKey, TpchLayout::AsGenerated] {
        let s = super::harness::builder(3).partitions(4).build().unwrap();
        s.load_tpch_with(SCALE, layout).await.unwrap();
        let workers = s.engine().workers();
        for (name, key) in [("orders", "o_orderkey"), ("lineitem", "l_orderkey")] {
            let table = s.table(name).unwrap();
            if layout == TpchLayout::AsGenerated {
                assert!(table.hash_keys().is_none(), "{name} as generated");
                continue;
            }
            assert_eq!(table.hash_keys(), Some(&[key.to_string()][..]), "{name}");
            for (p, part) in table.partitions().iter().enumerate() {
                for c in part {
                    assert_eq!(c.owner, workers[p % workers.len()], "{name} partition {p}");
                }
            }
        }
        let plan = s.sql(QUERIES[3]).await.unwrap().explain().await.unwrap();
        assert_eq!(
            plan.contains("RepartitionExec: partitioning=Hash([o_orderkey"),
            layout == TpchLayout::AsGenerated,
            "q04 {layout:?}:\n{plan}"
        );
    }
}

/// The staged plan of every TPC-H query (2 workers, 4 partitions, SF 0.01 statistics) is kept in
/// `tests/golden/tpch/qNN.txt`; a change to a plan shows up as a diff in review. Run with
/// `DIRK_BLESS=1` to rewrite the files after an intended change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_tpch_plans_match_their_golden_files() {
    let s = super::harness::builder(2).partitions(4).build().unwrap();
    s.load_tpch(SCALE).await.unwrap();
    let dir = manifest_dir().join("tests/golden/tpch");
    let bless = std::env::var_os("DIRK_BLESS").is_some();
    let mut changed = Vec::new();
    for (i, sql) in QUERIES.iter().enumerate() {
        let plan = s.sql(sql).await.unwrap().explain().await.unwrap();
        let path = dir.join(format!("q{:02}.txt", i + 1));
        if bless {
            std::fs::write(&path, &plan).unwrap();
            continue;
        }
        let golden = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("{} is missing; run with DIRK_BLESS=1", path.display()));
        if golden != plan {
            changed.push(format!(
                "q{:02}:\n--- golden\n{golden}\n--- now\n{plan}",
                i + 1
            ));
        }
    }
    assert!(
        changed.is_empty(),
        "staged plans changed (rerun with DIRK_BLESS=1 if intended):\n{}",
        changed.join("\n")
    );
}

/// The crate's directory. Cargo sets it at run time too; that value wins, because a
/// binary reused from a build in another checkout would carry that checkout's path.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
