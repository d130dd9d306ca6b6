//! Debug output without secrets: structs that hold a password implement `Debug` by hand and
//! show it through [`Redacted`], so `{:?}` in a log or an error never prints it.

use std::fmt;

/// Shows whether an optional secret is set, never its value.
pub struct Redacted<'a, T>(pub &'a Option<T>);

impl<T> fmt::Debug for Redacted<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(_) => f.write_str("Some(<redacted>)"),
            None => f.write_str("None"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_presence_only() {
        assert_eq!(
            format!("{:?}", Redacted(&Some("hunter2"))),
            "Some(<redacted>)"
        );
        assert_eq!(format!("{:?}", Redacted::<String>(&None)), "None");
    }
}
