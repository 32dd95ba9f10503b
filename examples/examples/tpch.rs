//! TPC-H generated in-process by tasks, then query 1 run through SQL.
//!
//! ```text
//! cargo run -p dirk-examples --example tpch
//! ```

use dirk_dtable::{tpch, Result, Session};

#[tokio::main]
async fn main() -> Result<()> {
    let session = Session::builder().build()?;
    for (name, table) in session.load_tpch(0.01).await? {
        println!(
            "{name}: {} rows, {} partitions",
            table.num_rows(),
            table.num_partitions()
        );
    }
    let q1 = session.sql(tpch::QUERIES[0]).await?.collect().await?;
    println!("{}", arrow::util::pretty::pretty_format_batches(&q1)?);
    assert_eq!(q1.iter().map(|b| b.num_rows()).sum::<usize>(), 4);
    Ok(())
}
