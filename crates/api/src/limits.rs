//! Bounds on free text in requests. Every bound is also written in its field's documentation,
//! so clients find it in the OpenAPI document; longer input is a 422 `validation_failed`.

use waypost_core::Error;

/// Most API fields that name or describe something: tenants, API keys, contacts, models.
pub(crate) const NAME_MAX: usize = 200;
/// Reasons and notes people type.
pub(crate) const NOTE_MAX: usize = 500;
/// Filters and searches in query strings.
pub(crate) const FILTER_MAX: usize = 200;

/// `value` has at most `max` characters (Unicode scalar values, as WhatsApp counts them).
pub(crate) fn at_most(field: &str, value: &str, max: usize) -> Result<(), Error> {
    if value.chars().count() > max {
        return Err(Error::validation(format!(
            "{field} must be at most {max} characters"
        )));
    }
    Ok(())
}

/// As [`at_most`], for an optional field.
pub(crate) fn at_most_opt(field: &str, value: Option<&str>, max: usize) -> Result<(), Error> {
    value.map_or(Ok(()), |v| at_most(field, v, max))
}
