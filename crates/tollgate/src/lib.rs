//! The `tollgate` binary's parts: the command line (`cli`, and `ledger` for the token
//! ledger's commands, `rehearse` for `test` and `explain`), logging set-up (`logging`),
//! hot reload (`reload`) and the process lifecycle (`run`: signals, drain, exit).

#![forbid(unsafe_code)]

pub mod cli;
mod ledger;
mod logging;
mod rehearse;
mod reload;
mod run;
