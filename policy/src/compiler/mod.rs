//! TOML policy compiler (std): source text to [`CompiledPolicy`] and diagnostics.
//!
//! `checker` walks the document and hands each rule to its kind's checker
//! (`modbus`, `modbus_limit`, `ble`, `connect`, `listen`), which record a `spec`;
//! `layout` turns the specs into tables; `compiled` is the result.

mod ble;
mod checker;
mod compiled;
mod connect;
mod diagnostic;
mod document;
mod layout;
mod listen;
mod modbus;
mod modbus_limit;
mod spec;
pub(crate) mod syntax;

use checker::Compiler;
pub use compiled::{Compiled, CompiledPolicy, RuleInfo};
pub use diagnostic::{CompileErrors, Diagnostic, Severity};
use document::RawDocument;

/// Compiles policy `source`; `origin` (a file name) appears in every diagnostic.
pub fn compile(source: &str, origin: &str) -> Result<Compiled, CompileErrors> {
    let mut compiler = Compiler::new(source, origin);
    let document = match toml::from_str::<RawDocument>(source) {
        Ok(document) => document,
        Err(error) => {
            let span = error.span().unwrap_or(0..0);
            let rule = compiler
                .lines
                .enclosing_table(span.start)
                .map(|(kind, n)| format!("rule {kind} #{n}"));
            let message = error.message().trim_end().replace('\n', " ");
            compiler.push(Severity::Error, span, rule, message);
            return Err(CompileErrors {
                diagnostics: compiler.errors,
            });
        }
    };
    compiler.run(&document);
    if compiler.errors.is_empty() {
        let policy = compiler.finish(document.policy.and_then(|p| p.name));
        match policy {
            Ok(policy) => {
                let mut warnings = compiler.warnings;
                warnings.sort_by_key(|d| (d.line, d.column));
                Ok(Compiled { policy, warnings })
            }
            Err(()) => Err(CompileErrors {
                diagnostics: compiler.errors,
            }),
        }
    } else {
        compiler.errors.sort_by_key(|d| (d.line, d.column));
        Err(CompileErrors {
            diagnostics: compiler.errors,
        })
    }
}
