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

/// A URL as it may be shown: the password of its `user:password@` part replaced by `***`
/// (and a lone `secret@` too, which some tools read as a password).
pub fn url(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else {
        return s.to_string();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = match userinfo.split_once(':') {
                Some((u, _)) => format!("{u}:***"),
                None => "***".to_string(),
            };
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_without_passwords() {
        assert_eq!(url("redis://u:pw@h:1/2"), "redis://u:***@h:1/2");
        assert_eq!(url("redis://pw@h"), "redis://***@h");
        assert_eq!(url("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(url("/a/b"), "/a/b");
    }

    #[test]
    fn shows_presence_only() {
        assert_eq!(
            format!("{:?}", Redacted(&Some("hunter2"))),
            "Some(<redacted>)"
        );
        assert_eq!(format!("{:?}", Redacted::<String>(&None)), "None");
    }
}
