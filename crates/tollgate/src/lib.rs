//! The `tollgate` binary's parts: the command line (`cli`, and `ledger` for the token
//! ledger's commands), logging set-up (`logging`),
//! hot reload (`reload`) and the process lifecycle (`run`: signals, drain, exit).

#![forbid(unsafe_code)]

pub mod cli;
mod ledger;
mod logging;
mod reload;
mod run;
