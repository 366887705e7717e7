//! The `tollgate` binary's parts: the command line (`cli`), logging set-up (`logging`),
//! hot reload (`reload`) and the process lifecycle (`run`: signals, drain, exit).

#![forbid(unsafe_code)]

pub mod cli;
mod logging;
mod reload;
mod run;
