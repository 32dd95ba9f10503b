//! SQL on a Dirk session: create a table, insert, query, and see the query's stages and what
//! its tasks did (`EXPLAIN ANALYZE`).
//!
//! ```text
//! cargo run -p dirk-examples --example sql
//! ```

use dirk_dtable::{Result, Session};

#[tokio::main]
async fn main() -> Result<()> {
    // Two in-process workers, three partitions per table.
    let session = Session::builder().workers(2).partitions(3).build()?;
    for sql in [
        "CREATE TABLE sales (region VARCHAR, item VARCHAR, amount DOUBLE)",
        "INSERT INTO sales VALUES ('north', 'tea', 3.5), ('south', 'tea', 2.0), \
         ('north', 'cake', 7.25), ('east', 'tea', 1.5), ('south', 'cake', 6.0)",
        "CREATE TABLE regions AS VALUES ('north', 'N'), ('south', 'S'), ('east', 'E')",
    ] {
        session.sql(sql).await?.collect().await?;
    }
    let query = "SELECT r.column2 AS code, s.item, sum(s.amount) AS total \
                 FROM sales s JOIN regions r ON s.region = r.column1 \
                 GROUP BY r.column2, s.item ORDER BY total DESC";
    let batches = session.sql(query).await?.collect().await?;
    println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 5, "five (region, item) groups");

    // The staged plan, then the same plan run with per-stage statistics.
    let analyzed = session
        .sql(&format!("EXPLAIN ANALYZE {query}"))
        .await?
        .collect()
        .await?;
    println!("{}", arrow::util::pretty::pretty_format_batches(&analyzed)?);
    Ok(())
}
