//! Library side of `warden policy check FILE` and `warden policy explain FILE`.
//!
//! `check` compiles and reports; `explain` evaluates one request, written in the
//! small request language of `request_text`, and says why.

mod check;
mod explain;
mod request_text;

pub use check::{CheckError, CheckReport, check_file, check_source};
pub use explain::{ExplainError, Explanation, explain, explain_file};
pub use request_text::{ParsedRequest, RequestTextError, parse_request};
