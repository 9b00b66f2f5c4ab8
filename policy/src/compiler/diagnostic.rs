//! Compiler diagnostics: errors and warnings with file, line, column and rule.

use std::fmt;

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The policy is not compiled.
    Error,
    /// The policy compiles, but a rule probably does not do what was meant.
    Warning,
}

/// One message about the policy source, pointing at a file, line and column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The origin file name given to the compiler.
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column (in characters).
    pub column: u32,
    /// The rule it is about (`rule "setpoint" (modbus #2)`), if any.
    pub rule: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {severity}: ",
            self.file, self.line, self.column
        )?;
        if let Some(rule) = &self.rule {
            write!(f, "{rule}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// The policy did not compile; every error found, in source order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.diagnostics))]
pub struct CompileErrors {
    /// The errors (never empty).
    pub diagnostics: Vec<Diagnostic>,
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Maps byte offsets of one source text to 1-based lines and columns.
pub(crate) struct LineIndex<'s> {
    source: &'s str,
    line_starts: Vec<usize>,
}

impl<'s> LineIndex<'s> {
    pub(crate) fn new(source: &'s str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex {
            source,
            line_starts,
        }
    }

    /// Line and column of a byte offset.
    pub(crate) fn position(&self, offset: usize) -> (u32, u32) {
        let offset = offset.min(self.source.len());
        let line = self
            .line_starts
            .partition_point(|start| *start <= offset)
            .max(1);
        let start = self.line_starts[line - 1];
        let column = self
            .source
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        (
            u32::try_from(line).unwrap_or(u32::MAX),
            u32::try_from(column).unwrap_or(u32::MAX),
        )
    }

    /// Start of the `[[...]]` header line that opens the table whose body starts at
    /// `offset` (or `offset` itself if the table is inline).
    pub(crate) fn header_before(&self, offset: usize) -> usize {
        let line = self.line_starts.partition_point(|start| *start <= offset);
        for index in (0..line).rev() {
            let start = self.line_starts[index];
            let end = self
                .line_starts
                .get(index + 1)
                .copied()
                .unwrap_or(self.source.len());
            let text = self.source.get(start..end).unwrap_or("").trim();
            if text.starts_with("[[") {
                return start;
            }
            if index + 1 < line && !(text.is_empty() || text.starts_with('#')) {
                break;
            }
        }
        offset
    }

    /// Byte offset of a 1-based line and column (the inverse of `position`).
    pub(crate) fn offset_of(&self, line: u32, column: u32) -> usize {
        let start = self
            .line_starts
            .get((line as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0);
        let rest = self.source.get(start..).unwrap_or("");
        start
            + rest
                .char_indices()
                .nth((column as usize).saturating_sub(1))
                .map_or(0, |(i, _)| i)
    }

    /// The `[[kind]]` array table that holds `offset` and its 1-based index, found by
    /// scanning headers (used for TOML errors, before rules are known).
    pub(crate) fn enclosing_table(&self, offset: usize) -> Option<(String, usize)> {
        let mut found: Option<(String, usize)> = None;
        let mut counts: Vec<(String, usize)> = Vec::new();
        for (i, start) in self.line_starts.iter().enumerate() {
            if *start > offset {
                break;
            }
            let end = self
                .line_starts
                .get(i + 1)
                .copied()
                .unwrap_or(self.source.len());
            let line = self.source.get(*start..end).unwrap_or("").trim();
            if let Some(kind) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
                let kind = kind.trim().to_string();
                let count = match counts.iter_mut().find(|(k, _)| *k == kind) {
                    Some((_, n)) => {
                        *n += 1;
                        *n
                    }
                    None => {
                        counts.push((kind.clone(), 1));
                        1
                    }
                };
                found = Some((kind, count));
            } else if line.starts_with('[') {
                found = None;
            }
        }
        found
    }
}
