mod api;
pub(crate) mod compare;
mod files;
pub(crate) mod harness;
mod mutation;
mod providers;
mod queries;
mod statements;
mod tpch;
