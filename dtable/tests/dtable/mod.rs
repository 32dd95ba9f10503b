mod api;
mod compare;
mod files;
mod queries;
mod statements;
mod tpch;
