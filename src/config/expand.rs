//! `${VAR}` in the configuration file: replaced by the environment variable's value.
//!
//! Every string value of the file is expanded, except shell command lines (`shell`,
//! `restore_shell`, the `before`/`after` hooks and `[stack] before_restore`/`after_restore`),
//! which `sh -c` expands itself when they run. `${VAR:-default}` gives `default` when VAR
//! is unset or empty, and `$${` is a literal `${`. A `$` not followed by `{` stays as it is.
//! A variable that is not set (without a default) is an error that names it and the key.

use crate::error::Error;
use anyhow::Result;
use toml::Value;

/// Keys whose values are shell command lines, left for the shell to expand.
const SHELL_KEYS: &[&str] = &[
    "shell",
    "restore_shell",
    "before",
    "after",
    "before_restore",
    "after_restore",
];

/// Expand every string in `table` (the file's top level) with `lookup`.
pub fn expand_table(
    table: &mut toml::Table,
    at: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<()> {
    for (k, v) in table.iter_mut() {
        if SHELL_KEYS.contains(&k.as_str()) {
            continue;
        }
        let here = if at.is_empty() {
            k.clone()
        } else {
            format!("{at}.{k}")
        };
        expand_value(v, &here, lookup)?;
    }
    Ok(())
}

fn expand_value(v: &mut Value, at: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<()> {
    match v {
        Value::String(s) => {
            *s = expand(s, lookup).map_err(|e| Error::usage(format!("{at}: {e}")))?
        }
        Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                expand_value(x, &format!("{at}[{i}]"), lookup)?;
            }
        }
        Value::Table(t) => expand_table(t, at, lookup)?,
        _ => {}
    }
    Ok(())
}

/// Expand one string.
pub fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(lit) = after.strip_prefix("${") {
            out.push_str("${");
            rest = lit;
            continue;
        }
        let Some(body) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let end = body
            .find('}')
            .ok_or_else(|| format!("unclosed ${{ in {s:?} (write $${{ for a literal ${{)"))?;
        let (name, default) = match body[..end].split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (&body[..end], None),
        };
        if !valid_name(name) {
            return Err(format!(
                "${{{}}} is not a variable reference: use ${{NAME}} or ${{NAME:-default}} \
                 (letters, digits and _), or $${{ for a literal ${{",
                &body[..end]
            ));
        }
        match (
            lookup(name).filter(|v| !v.is_empty() || default.is_none()),
            default,
        ) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (it is used as ${{{name}}}; \
                     ${{{name}:-default}} gives a default)"
                ))
            }
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(n: &str) -> Option<String> {
        match n {
            "DB" => Some("postgresql://u:pw@h/db".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_defaults_and_literals() {
        assert_eq!(expand("${DB}", &env).unwrap(), "postgresql://u:pw@h/db");
        assert_eq!(expand("a${DB}b", &env).unwrap(), "apostgresql://u:pw@h/dbb");
        assert_eq!(expand("${NOPE:-x}", &env).unwrap(), "x");
        assert_eq!(expand("${EMPTY:-x}", &env).unwrap(), "x");
        assert_eq!(expand("${EMPTY}", &env).unwrap(), "");
        assert_eq!(expand("$${DB} $HOME $", &env).unwrap(), "${DB} $HOME $");
        let e = expand("${NOPE}", &env).unwrap_err();
        assert!(e.contains("NOPE is not set"), "{e}");
        assert!(expand("${DB", &env).unwrap_err().contains("unclosed"));
        assert!(expand("${1x}", &env).is_err());
    }

    #[test]
    fn shell_lines_are_left_to_the_shell() {
        let mut t: toml::Table = toml::from_str(
            "a = \"${DB}\"\n[sources.x]\ncommand = [\"dump\", \"${DB}\"]\nshell = \"echo ${NOPE}\"\nbefore = [\"echo ${NOPE}\"]\n",
        )
        .unwrap();
        expand_table(&mut t, "", &env).unwrap();
        let x = t["sources"]["x"].as_table().unwrap();
        assert_eq!(t["a"].as_str(), Some("postgresql://u:pw@h/db"));
        assert_eq!(x["command"][1].as_str(), Some("postgresql://u:pw@h/db"));
        assert_eq!(x["shell"].as_str(), Some("echo ${NOPE}"));
        let mut t: toml::Table = toml::from_str("[sources.x]\nurl = \"${NOPE}\"\n").unwrap();
        let e = expand_table(&mut t, "", &env).unwrap_err().to_string();
        assert!(
            e.starts_with("sources.x.url: environment variable NOPE"),
            "{e}"
        );
    }
}
