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

/// A URL whose secret is its path or query (a Slack or generic webhook, a healthchecks.io
/// ping URL), as it may be shown: its scheme and host only, without any `user:password@`.
/// Text that is not a URL shows as `<url>`.
pub fn url_origin(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else {
        return "<url>".to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}")
}

/// `text` (an error message, a response body) without `secret_url`: the URL, and its path
/// and query on their own, are replaced by [`url_origin`] and `/***`.
pub fn scrub_url(text: &str, secret_url: &str) -> String {
    let origin = url_origin(secret_url);
    let mut out = text.replace(secret_url, &origin);
    if let Some((_, rest)) = secret_url.split_once("://") {
        if let Some(i) = rest.find(['/', '?', '#']) {
            let tail = rest[i..].trim_end_matches('/');
            if tail.len() > 1 {
                out = out.replace(tail, "/***");
            }
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some((userinfo, _)) = rest[..end].rsplit_once('@') {
            if !userinfo.is_empty() {
                out = out.replace(userinfo, "***");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_show_their_origin_only() {
        let hook = "https://hooks.slack.com/services/T0/B0/very-secret";
        assert_eq!(url_origin(hook), "https://hooks.slack.com");
        assert_eq!(url_origin("http://u:pw@h:8080?k=v"), "http://h:8080");
        assert_eq!(url_origin("https://hc-ping.com"), "https://hc-ping.com");
        assert_eq!(url_origin("not a url/secret"), "<url>");
        let e = format!(
            "error sending request for url ({hook}): refused; path /services/T0/B0/very-secret"
        );
        let shown = scrub_url(&e, hook);
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(shown.contains("(https://hooks.slack.com)"), "{shown}");
        let shown = scrub_url("GET http://u:pw@h/x?token=abc", "http://u:pw@h/x?token=abc");
        assert_eq!(shown, "GET http://h");
        assert_eq!(scrub_url("u:pw failed", "http://u:pw@h/"), "*** failed");
    }

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
