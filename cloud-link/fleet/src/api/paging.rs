//! A list query's `limit` and `offset`, checked the same way by every endpoint.

use super::error::ApiError;

/// A query's `limit`: `default` when absent, else within `1..=max`.
pub(crate) fn limit_within(limit: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else if max == i64::MAX {
        Err(ApiError::BadRequest(format!(
            "limit {limit} must be at least 1"
        )))
    } else {
        Err(ApiError::BadRequest(format!(
            "limit {limit} is outside 1..={max}"
        )))
    }
}

/// A query's `offset`: 0 when absent, never negative.
pub(crate) fn offset_of(offset: Option<i64>) -> Result<i64, ApiError> {
    match offset.unwrap_or(0) {
        offset if offset < 0 => Err(ApiError::BadRequest(format!("offset {offset} is negative"))),
        offset => Ok(offset),
    }
}
