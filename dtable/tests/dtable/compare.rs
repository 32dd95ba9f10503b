//! Comparing results with DataFusion's: row by row, or as multisets where order is undefined.

use arrow::array::{Float64Array, RecordBatch};
use arrow::util::pretty::pretty_format_batches;

/// One cell: floats keep their value (compared with a relative tolerance, since the order of a
/// parallel float sum changes its last bits), everything else compares as text.
#[derive(Debug, Clone)]
enum Cell {
    Float(f64),
    Text(String),
}

impl Cell {
    fn key(&self) -> String {
        match self {
            Cell::Float(v) => format!("{v:.6e}"),
            Cell::Text(s) => s.clone(),
        }
    }

    fn same(&self, other: &Cell) -> bool {
        match (self, other) {
            (Cell::Float(a), Cell::Float(b)) => {
                a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
            }
            (Cell::Text(a), Cell::Text(b)) => a == b,
            _ => false,
        }
    }
}

fn rows(batches: &[RecordBatch], ordered: bool) -> Vec<Vec<Cell>> {
    use arrow::array::Array;
    use arrow::datatypes::DataType;
    let mut out = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            let row = b
                .columns()
                .iter()
                .map(|col| match col.data_type() {
                    DataType::Float64 if col.is_valid(r) => Cell::Float(
                        col.as_any()
                            .downcast_ref::<Float64Array>()
                            .unwrap()
                            .value(r),
                    ),
                    _ => Cell::Text(arrow::util::display::array_value_to_string(col, r).unwrap()),
                })
                .collect();
            out.push(row);
        }
    }
    if !ordered {
        out.sort_by_key(|row: &Vec<Cell>| row.iter().map(Cell::key).collect::<Vec<_>>());
    }
    out
}

/// Batches as the table a shell prints (for plans: `EXPLAIN`'s text).
pub(crate) fn text_of(batches: &[RecordBatch]) -> String {
    pretty_format_batches(batches).unwrap().to_string()
}

/// `storage_bytes=` and `storage_requests=` of the stage that scans, in `EXPLAIN ANALYZE`.
pub(crate) fn storage_read(analyzed: &str) -> (u64, u64) {
    let line = analyzed
        .lines()
        .find(|l| l.contains("storage_requests="))
        .unwrap_or_else(|| panic!("no storage read counted: {analyzed}"));
    let field = |name: &str| -> u64 {
        line.split(&format!("{name}="))
            .nth(1)
            .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {line}"))
    };
    (field("storage_bytes"), field("storage_requests"))
}

pub(crate) fn assert_same(got: &[RecordBatch], want: &[RecordBatch], ordered: bool, what: &str) {
    let names = |bs: &[RecordBatch]| {
        bs.first().map(|b| {
            b.schema()
                .fields()
                .iter()
                .map(|f| f.data_type().clone())
                .collect::<Vec<_>>()
        })
    };
    if let (Some(g), Some(w)) = (names(got), names(want)) {
        assert_eq!(g, w, "column types differ: {what}");
    }
    let (g, w) = (rows(got, ordered), rows(want, ordered));
    let show = |bs: &[RecordBatch]| pretty_format_batches(bs).unwrap().to_string();
    let equal = g.len() == w.len()
        && g.iter()
            .zip(&w)
            .all(|(a, b)| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same(y)));
    assert!(equal, "{what}\ngot:\n{}\nwant:\n{}", show(got), show(want));
}

/// Runs a query through the DataFusion reference and collects its result.
pub(crate) async fn run_datafusion(
    ctx: &datafusion::prelude::SessionContext,
    sql: &str,
) -> Vec<RecordBatch> {
    let df = ctx.sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    df.collect().await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Runs a statement through Dirk and collects its result, or its error.
pub(crate) async fn try_dirk(
    s: &dirk_dtable::Session,
    sql: &str,
) -> dirk_dtable::Result<Vec<RecordBatch>> {
    s.sql(sql).await?.collect().await
}

/// Runs a query through Dirk, failing (instead of hanging the suite) if it takes over 120 s.
pub(crate) async fn run_dirk(s: &dirk_dtable::Session, sql: &str, what: &str) -> Vec<RecordBatch> {
    let run = try_dirk(s, sql);
    match tokio::time::timeout(std::time::Duration::from_secs(120), run).await {
        Ok(r) => r.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => panic!("{what}: no result after 120 s"),
    }
}
