//! Local CSV and Parquet files: an external table read in place by each query, and resident
//! DTables whose byte ranges are each read by a task on the worker that then keeps the
//! partition. Also: repartitioning a table, and pinning one to a worker.
//!
//! ```text
//! cargo run -p dirk-examples --example files
//! ```

use dirk_dtable::prelude::*;
use dirk_engine::WorkerId;

#[tokio::main]
async fn main() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("dirk-example-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let csv = dir.join("trips.csv");
    let mut text = String::from("trip,city,km,fare\n");
    for i in 0..10_000 {
        let city = ["oslo", "lima", "pune", "kyiv"][i % 4];
        text.push_str(&format!(
            "{i},{city},{:.1},{:.2}\n",
            (i % 37) as f64 / 2.0,
            (i % 91) as f64
        ));
    }
    std::fs::write(&csv, text).expect("write csv");

    let session = Session::builder().workers(2).partitions(4).build()?;
    // An external table stays in its files: each query's tasks read their byte ranges.
    session
        .sql(&format!(
            "CREATE EXTERNAL TABLE trip_files STORED AS CSV LOCATION '{}' \
             OPTIONS ('format.has_header' 'true')",
            csv.display()
        ))
        .await?
        .collect()
        .await?;
    session
        .sql("SELECT city, count(*) AS trips FROM trip_files GROUP BY city ORDER BY city")
        .await?
        .show()
        .await?;
    // A resident DTable: the file split into byte ranges, each read by a task on the worker
    // that then keeps it.
    let trips = session
        .register_csv("trips", &csv.display().to_string(), CsvReadOptions::new())
        .await?;
    println!(
        "trips: {} rows in {} partitions, on workers {:?}",
        trips.num_rows(),
        trips.num_partitions(),
        trips.chunks().map(|c| c.owner.0).collect::<Vec<_>>()
    );
    assert_eq!(trips.num_rows(), 10_000);

    // Write Parquet through a query, then read it back as another table.
    let parquet = dir.join("by_city.parquet");
    session
        .sql(&format!(
            "COPY (SELECT city, count(*) AS n, avg(fare) AS fare FROM trips GROUP BY city) \
             TO '{}' STORED AS PARQUET",
            parquet.display()
        ))
        .await?
        .collect()
        .await?;
    let by_city = session
        .register_parquet(
            "by_city",
            &parquet.display().to_string(),
            ParquetReadOptions::default(),
        )
        .await?;
    assert_eq!(by_city.num_rows(), 4);
    session.table_df("by_city").await?.show().await?;

    // Layout: eight partitions, then hash-partitioned by city, then everything on worker 1.
    let t = session.repartition("trips", 8).await?;
    println!("repartitioned: {} partitions", t.num_partitions());
    let t = session.repartition_by("trips", &["city"], 4).await?;
    println!("by city: {} partitions", t.num_partitions());
    let t = session.pin_table("trips", WorkerId(1))?;
    assert!(t.chunks().all(|c| c.owner == WorkerId(1)));
    let n = session.table_df("trips").await?.count().await?;
    assert_eq!(n, 10_000);
    println!("pinned to worker 1: {n} rows");
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
