//! The body of every error answer of the fleet's HTTP API.

use serde::{Deserialize, Serialize};

/// The body of every error answer: `{"error": "..."}`, with the request field at fault
/// for a 422.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// The request field at fault (422 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}
