mod compare;
mod queries;
mod statements;
mod tpch;
