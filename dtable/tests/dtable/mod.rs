mod queries;
mod statements;
