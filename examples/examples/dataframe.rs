//! The DataFrame API: filters, derived columns, grouping, joins, sorting, windows and unions,
//! built as method chains and run as Dirk task graphs.
//!
//! ```text
//! cargo run -p dirk-examples --example dataframe
//! ```

use dirk_dtable::prelude::*;

#[tokio::main]
async fn main() -> Result<()> {
    let session = Session::builder().workers(2).partitions(4).build()?;
    session.load_tpch(0.01).await?;

    // Revenue per ship mode for large orders, highest first.
    let revenue = session
        .table_df("lineitem")
        .await?
        .filter(col("l_quantity").gt(lit(30)))?
        .with_column(
            "revenue",
            col("l_extendedprice") * (lit(1) - col("l_discount")),
        )?
        .group_by(vec![col("l_shipmode")])
        .agg(vec![
            sum(col("revenue")).alias("revenue"),
            count(lit(1)).alias("lines"),
        ])?
        .sort(vec![col("revenue").sort(false, true)])?;
    revenue.clone().show().await?;
    assert_eq!(revenue.count().await?, 7, "seven ship modes");

    // Customers joined with their nations; the three largest balances per nation.
    let customers = session.table_df("customer").await?;
    let nations = session
        .table_df("nation")
        .await?
        .select(vec![col("n_nationkey"), col("n_name")])?;
    let top = customers
        .join(nations, JoinType::Inner, &["c_nationkey"], &["n_nationkey"])?
        .window(vec![row_number()
            .partition_by(vec![col("n_name")])
            .order_by(vec![col("c_acctbal").sort(false, true)])
            .build()?
            .alias("rank")])?
        .filter(col("rank").lt_eq(lit(3)))?
        .select(vec![
            col("n_name"),
            col("c_name"),
            col("c_acctbal"),
            col("rank"),
        ])?
        .sort(vec![
            col("n_name").sort(true, true),
            col("rank").sort(true, true),
        ])?;
    top.clone().show_limit(9).await?;
    assert_eq!(top.count().await?, 75, "three per nation, 25 nations");

    // Semi and anti joins, distinct and union.
    let ordered = session
        .table_df("orders")
        .await?
        .select(vec![col("o_custkey")])?;
    let buyers = session.table_df("customer").await?.join(
        ordered.clone(),
        JoinType::LeftSemi,
        &["c_custkey"],
        &["o_custkey"],
    )?;
    let idle = session.table_df("customer").await?.join(
        ordered,
        JoinType::LeftAnti,
        &["c_custkey"],
        &["o_custkey"],
    )?;
    let (b, i) = (buyers.clone().count().await?, idle.clone().count().await?);
    println!("{b} customers ordered, {i} did not");
    let everyone = buyers
        .union(idle)?
        .select_columns(&["c_custkey"])?
        .distinct()?;
    assert_eq!(everyone.count().await?, b + i);
    Ok(())
}
