//! Chaos: queries and mutations on three worker processes while a worker is killed at a random
//! moment of each statement (and a fresh process takes its place), and another hangs for a
//! moment. Every answer must equal DataFusion's on one node, every table its reference after
//! every statement, and no statement may hang or fail.
//!
//! CI runs a few rounds; `DIRK_CHAOS_ROUNDS=N` runs more (the figures in benches/README.md
//! come from such a run), `DIRK_CHAOS_SEED` replays one.

use crate::dtable::compare::{assert_same, text_of, try_dirk};
use crate::dtable::harness::start;
use dirk_dtable::tpch::QUERIES;
use dirk_dtable::Session;
use std::time::{Duration, Instant};

/// A small deterministic generator: the seed is printed, so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The columns of `orders`, with `o_totalprice` replaced by `price`.
fn orders_with_price(price: &str) -> String {
    format!(
        "SELECT o_orderkey, o_custkey, o_orderstatus, {price} AS o_totalprice, o_orderdate, \
         o_orderpriority, o_clerk, o_shippriority, o_comment FROM orders"
    )
}

/// One statement of a round: what Dirk runs, and what brings the reference to the same state
/// (for a mutation) or answers the same (for a query).
enum Statement {
    Query(&'static str),
    /// Dirk's statement, the reference's `CREATE OR REPLACE TABLE` equivalent, and the query
    /// that compares the table afterwards.
    Mutation(String, String, &'static str),
}

fn statement(rng: &mut Rng, round: u64) -> Statement {
    // Quick TPC-H queries over every table (1, 3, 5, 6, 10, 12, 14, 19).
    const QUICK: [usize; 8] = [0, 2, 4, 5, 9, 11, 13, 18];
    let r = round % 7;
    match rng.below(4) {
        0 | 1 => Statement::Query(QUERIES[QUICK[rng.below(8) as usize]]),
        2 => Statement::Mutation(
            format!("UPDATE orders SET o_totalprice = o_totalprice + 1 WHERE o_orderkey % 7 = {r}"),
            format!(
                "CREATE OR REPLACE TABLE orders AS {}",
                orders_with_price(&format!(
                    "CAST(CASE WHEN o_orderkey % 7 = {r} THEN o_totalprice + 1 \
                     ELSE o_totalprice END AS DECIMAL(15, 2))"
                ))
            ),
            "SELECT count(*) AS n, sum(o_totalprice) AS p, sum(o_orderkey) AS k FROM orders",
        ),
        _ => Statement::Mutation(
            format!("DELETE FROM lineitem WHERE l_orderkey % 11 = {r} AND l_linenumber = 2"),
            format!(
                "CREATE OR REPLACE TABLE lineitem AS SELECT * FROM lineitem \
                 WHERE NOT (l_orderkey % 11 = {r} AND l_linenumber = 2)"
            ),
            "SELECT count(*) AS n, sum(l_quantity) AS q, sum(l_extendedprice) AS p FROM lineitem",
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_survive_killed_replaced_and_hung_workers() {
    let rounds: u64 = std::env::var("DIRK_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let seed: u64 = std::env::var("DIRK_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("chaos: {rounds} rounds, DIRK_CHAOS_SEED={seed}");
    let mut rng = Rng(seed);
    let mut workers = start(3);
    let s = std::sync::Arc::new(
        Session::builder()
            .workers(workers.addresses())
            .token(workers.token())
            .partitions(6)
            .build()
            .unwrap(),
    );
    s.load_tpch(0.01).await.unwrap();
    let reference = crate::dtable::tpch::reference_at(0.01).await;
    let (mut kills, mut hangs, mut queries, mut mutations) = (0, 0, 0, 0);
    let (mut slowest, mut worst_slowdown) = (Duration::ZERO, 0.0f64);
    for round in 0..rounds {
        let stmt = statement(&mut rng, round);
        let sql = match &stmt {
            Statement::Query(q) => q.to_string(),
            Statement::Mutation(m, _, _) => m.clone(),
        };
        let what = format!("round {round} (seed {seed}): {sql}");
        let q = s.clone();
        let dirk_sql = sql.clone();
        let started = Instant::now();
        let run = tokio::spawn(async move { try_dirk(&q, &dirk_sql).await });
        // A worker killed at a random moment of the statement (or just after it), then a
        // fresh process joins; every other round another worker hangs for 1.5 s (less than the
        // heartbeat's 5 s: slow, not lost).
        tokio::time::sleep(Duration::from_millis(rng.below(1200))).await;
        let victim = rng.below(3) as usize;
        workers.kill(victim);
        kills += 1;
        if round % 2 == 1 {
            let hung = (victim + 1 + rng.below(2) as usize) % 3;
            workers.pause(hung);
            tokio::time::sleep(Duration::from_millis(1500)).await;
            workers.resume(hung);
            hangs += 1;
        }
        for (_, address) in workers.replace_exited().unwrap() {
            s.add_worker(&address).await.unwrap();
        }
        let got = tokio::time::timeout(Duration::from_secs(180), run)
            .await
            .unwrap_or_else(|_| panic!("{what}: hangs"))
            .unwrap()
            .unwrap_or_else(|e| panic!("{what}: fails: {e}"));
        let took = started.elapsed();
        slowest = slowest.max(took);
        match stmt {
            Statement::Query(q) => {
                queries += 1;
                let want = reference.sql(q).await.unwrap().collect().await.unwrap();
                assert_same(&got, &want, true, &what);
                // What the faults cost it: the same query again, without them.
                let again = Instant::now();
                try_dirk(&s, q).await.unwrap();
                worst_slowdown =
                    worst_slowdown.max(took.as_secs_f64() / again.elapsed().as_secs_f64());
            }
            Statement::Mutation(_, redo, check) => {
                mutations += 1;
                reference.sql(&redo).await.unwrap().collect().await.unwrap();
                let want = reference.sql(check).await.unwrap().collect().await.unwrap();
                let got = try_dirk(&s, check)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: the check fails: {e}"));
                assert_eq!(text_of(&got), text_of(&want), "{what}: the table differs");
            }
        }
    }
    for table in dirk_dtable::tpch::TABLES {
        let count = format!("SELECT count(*) FROM {table}");
        let got = try_dirk(&s, &count).await.unwrap();
        let want = reference
            .sql(&count)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(
            text_of(&got),
            text_of(&want),
            "seed {seed}: {table} at the end"
        );
    }
    eprintln!(
        "chaos: {rounds} rounds: {queries} queries and {mutations} mutations right, \
         {kills} workers killed and replaced, {hangs} hung for 1.5 s; slowest statement \
         {slowest:?}, worst slowdown of a query {worst_slowdown:.1}x"
    );
}
