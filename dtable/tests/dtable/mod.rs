mod api;
mod compare;
mod files;
mod mutation;
mod queries;
mod statements;
mod tpch;
