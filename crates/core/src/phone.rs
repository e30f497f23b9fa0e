use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, ErrorCode};

/// A validated phone number in E.164 form (`+14155550100`). `Debug` and `Display` mask all
/// but the last four digits, so a number that reaches a log line does not leak; the full
/// value is only available through [`PhoneNumber::as_e164`].
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PhoneNumber(String);

/// Longer input is refused before it reaches the parser (libphonenumber ports have had
/// denial-of-service bugs on pathological input).
const MAX_INPUT: usize = 64;

impl PhoneNumber {
    /// Parses international input: `+` and the country code, or digits that start with the
    /// country code (WhatsApp ids look like that). Spaces, dashes, dots and brackets are
    /// ignored.
    pub fn parse(raw: &str) -> Result<PhoneNumber, Error> {
        let invalid = || {
            Error::new(
                ErrorCode::ValidationFailed,
                "not a valid phone number; give it in international form, e.g. +14155550100",
            )
        };
        if raw.len() > MAX_INPUT {
            return Err(invalid());
        }
        let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
        let allowed = raw
            .chars()
            .all(|c| c.is_ascii_digit() || " -.()+".contains(c));
        if !allowed
            || digits.len() < 6
            || digits.len() > 15
            || raw
                .trim_start()
                .get(1..)
                .is_some_and(|rest| rest.contains('+'))
        {
            return Err(invalid());
        }
        let candidate = format!("+{digits}");
        // The parser must never take the process down; a panic is just invalid input.
        let parsed = std::panic::catch_unwind(|| phonenumber::parse(None, &candidate))
            .map_err(|_| invalid())?
            .map_err(|_| invalid())?;
        if !phonenumber::is_valid(&parsed) {
            return Err(invalid());
        }
        Ok(PhoneNumber(
            parsed.format().mode(phonenumber::Mode::E164).to_string(),
        ))
    }

    pub fn as_e164(&self) -> &str {
        &self.0
    }

    /// WhatsApp's id for the number: the digits without `+`.
    pub fn wa_id(&self) -> &str {
        self.0.trim_start_matches('+')
    }

    pub fn masked(&self) -> String {
        let digits = self.wa_id();
        let keep = digits.len().min(4);
        format!("+•••{}", &digits[digits.len() - keep..])
    }
}

impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneNumber({})", self.masked())
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_international_forms() {
        for raw in [
            "+1 415 555 0100",
            "14155550100",
            "+1 (415) 555-0100",
            "1.415.555.0100",
        ] {
            assert_eq!(
                PhoneNumber::parse(raw).unwrap().as_e164(),
                "+14155550100",
                "{raw}"
            );
        }
        assert_eq!(
            PhoneNumber::parse("+44 20 7946 0958").unwrap().as_e164(),
            "+442079460958"
        );
        assert_eq!(
            PhoneNumber::parse("+14155550100").unwrap().wa_id(),
            "14155550100"
        );
    }

    #[test]
    fn rejects_what_is_not_a_number() {
        for raw in [
            "",
            "+",
            "abc",
            "+1 415 555 010a",
            "12",
            "+1+4155550100",
            "+999 123 456 789",
            &"1".repeat(100),
        ] {
            let err = PhoneNumber::parse(raw).unwrap_err();
            assert_eq!(err.code(), ErrorCode::ValidationFailed, "{raw}");
        }
    }

    #[test]
    fn logs_see_only_the_last_four_digits() {
        let phone = PhoneNumber::parse("+14155550100").unwrap();
        assert_eq!(format!("{phone}"), "+•••0100");
        assert!(!format!("{phone:?}").contains("415555"));
    }
}
