//! Everything a DataFrame user needs in one import: `use dirk_dtable::prelude::*;`
//!
//! Expressions and functions are DataFusion's (`col`, `lit`, `sum`, `count`, `avg`, window
//! functions, string and date functions, ...), so they mean exactly what they mean there.

pub use crate::builder::SessionBuilder;
pub use crate::dataframe::{DataFrame, GroupBy};
pub use crate::session::Session;
pub use crate::table::DTable;
pub use crate::{DirkError, Result};
pub use datafusion::common::JoinType;
pub use datafusion::functions_aggregate::expr_fn::*;
pub use datafusion::functions_window::expr_fn::{
    cume_dist, dense_rank, lag, lead, ntile, percent_rank, rank, row_number,
};
pub use datafusion::logical_expr::{
    case, cast, col, ident, lit, when, Expr, ExprFunctionExt, SortExpr, WindowFrame,
};
pub use datafusion::prelude::{
    array_length, concat, date_part, date_trunc, lower, make_array, upper, CsvReadOptions,
    ParquetReadOptions,
};
