//! What a job is made of: cargo invocations and checks written in xtask.

/// One step of a job: a cargo invocation, or a check written here.
pub enum Step {
    Cargo(Vec<String>),
    /// A cargo invocation run inside a folder of the repository.
    CargoIn(&'static str, Vec<String>),
    Check(&'static str, fn() -> Result<(), String>),
}

/// Owned arguments from string literals.
pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}
