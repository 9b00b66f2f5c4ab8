//! `warden policy check`: compile a policy file and report diagnostics and a summary.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::compiler::{CompileErrors, CompiledPolicy, Diagnostic, compile};
use crate::tables::RuleKind;

/// What `warden policy check FILE` prints: diagnostics and a summary line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    /// The file as named on the command line.
    pub file: String,
    /// Errors (the policy did not compile if any).
    pub errors: Vec<Diagnostic>,
    /// Warnings (shadowed, overlapping, unreachable rules).
    pub warnings: Vec<Diagnostic>,
    /// Summary of the compiled policy, when it compiled.
    pub summary: Option<String>,
}

impl CheckReport {
    /// True if the policy compiled (warnings allowed).
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

pub(super) fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for diagnostic in self.errors.iter().chain(&self.warnings) {
            writeln!(f, "{diagnostic}")?;
        }
        let warnings = plural(self.warnings.len(), "warning");
        match &self.summary {
            Some(summary) if self.is_ok() => {
                writeln!(f, "{}: ok: {summary}; {warnings}", self.file)
            }
            _ => writeln!(
                f,
                "{}: not compiled: {}, {warnings}",
                self.file,
                plural(self.errors.len(), "error")
            ),
        }
    }
}

/// The policy file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// Reading failed.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Compiles `path` and reports every error and warning.
pub fn check_file(path: &Path) -> Result<CheckReport, CheckError> {
    let source = std::fs::read_to_string(path).map_err(|source| CheckError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(check_source(&source, &path.display().to_string()))
}

/// Compiles `source` (named `origin` in messages) and reports.
pub fn check_source(source: &str, origin: &str) -> CheckReport {
    match compile(source, origin) {
        Ok(compiled) => CheckReport {
            file: origin.to_string(),
            errors: Vec::new(),
            warnings: compiled.warnings,
            summary: Some(summarise(&compiled.policy)),
        },
        Err(CompileErrors { diagnostics }) => CheckReport {
            file: origin.to_string(),
            errors: diagnostics,
            warnings: Vec::new(),
            summary: None,
        },
    }
}

fn summarise(policy: &CompiledPolicy) -> String {
    let t = policy.tables();
    let mut kinds = Vec::new();
    for (kind, name) in [
        (RuleKind::Modbus, "modbus"),
        (RuleKind::ModbusLimit, "modbus_limit"),
        (RuleKind::Ble, "ble"),
        (RuleKind::Connect, "connect"),
        (RuleKind::Listen, "listen"),
    ] {
        let n = t.rules.iter().filter(|r| r.kind == kind).count();
        if n > 0 {
            kinds.push(format!("{n} {name}"));
        }
    }
    format!(
        "{} ({}), {}, {}, {} of tables, {}",
        plural(t.rules.len(), "rule"),
        if kinds.is_empty() {
            "everything is denied".to_string()
        } else {
            kinds.join(", ")
        },
        plural(t.bridges.len(), "bridge"),
        plural(t.compartments.len(), "compartment"),
        plural(policy.encode().len(), "byte"),
        plural(t.rate_slots as usize, "rate bucket"),
    )
}
