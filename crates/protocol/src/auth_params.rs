//! RFC 9110 §11 authentication header syntax, as needed by the Payment scheme.
//!
//! `WWW-Authenticate = #challenge` and `challenge = auth-scheme [ 1*SP ( token68 / #auth-param ) ]`.
//! One header line may hold several challenges of several schemes joined by commas, and the
//! commas that separate challenges are the same ones that separate auth-params. This module
//! splits a line into top-level elements (commas outside quoted strings), then groups them by
//! scheme: an element that starts with `token 1*SP` and is not `token BWS "="` opens a new
//! challenge. Everything is a single linear pass: no backtracking, whatever the input.

use std::borrow::Cow;

/// One scheme and its raw elements (auth-params or a token68), borrowed from the header line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawScheme<'a> {
    /// The auth-scheme as written (compare case-insensitively).
    pub scheme: &'a str,
    /// The elements after the scheme: `name=value` auth-params, or one token68.
    pub elements: Vec<&'a str>,
}

/// An auth-param value, unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamValue<'a> {
    /// The value after quoted-string unescaping (or the token as is).
    pub value: Cow<'a, str>,
    /// Text after the value inside the same element (non-empty only in malformed input).
    pub trailing: &'a str,
    /// False when a quoted-string had no closing quote.
    pub terminated: bool,
}

/// Why one element is not an auth-param.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamSyntaxError {
    /// No `token` before `=`.
    MissingName,
    /// No `=` after the name.
    MissingEquals,
    /// Nothing (or not a token / quoted-string) after `=`.
    MissingValue,
}

/// `tchar` from RFC 9110 §5.6.2.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

fn trim_ows(s: &str) -> &str {
    s.trim_matches(|c| c == ' ' || c == '\t')
}

fn token_len(s: &str) -> usize {
    s.bytes().take_while(|&b| is_tchar(b)).count()
}

/// Split a header line on commas that are outside quoted strings. An unterminated quoted string
/// runs to the end of the line. Empty elements (`a,,b`) are dropped, as `#rule` lists allow.
pub fn split_top_level(line: &str) -> Vec<&str> {
    let bytes = line.as_bytes();
    let mut elements = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_quotes => i += 1, // skip the escaped octet
            b'"' => in_quotes = !in_quotes,
            b',' if !in_quotes => {
                push_element(&mut elements, &line[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    push_element(&mut elements, &line[start.min(line.len())..]);
    elements
}

fn push_element<'a>(elements: &mut Vec<&'a str>, raw: &'a str) {
    let trimmed = trim_ows(raw);
    if !trimmed.is_empty() {
        elements.push(trimmed);
    }
}

/// Group a header line's elements by scheme. Elements before the first scheme are dropped.
pub fn group_schemes(line: &str) -> Vec<RawScheme<'_>> {
    let mut schemes: Vec<RawScheme<'_>> = Vec::new();
    for element in split_top_level(line) {
        let name_len = token_len(element);
        let after_name = &element[name_len..];
        let after_ows = after_name.trim_start_matches([' ', '\t']);
        let opens_scheme = name_len > 0
            && !after_ows.starts_with('=')
            && (after_ows.is_empty() || after_name.len() > after_ows.len());
        if opens_scheme {
            let mut elements = Vec::new();
            if !after_ows.is_empty() {
                elements.push(after_ows);
            }
            schemes.push(RawScheme {
                scheme: &element[..name_len],
                elements,
            });
        } else if let Some(current) = schemes.last_mut() {
            current.elements.push(element);
        }
    }
    schemes
}

/// Parse one `name BWS "=" BWS ( token / quoted-string )` element. The name is returned as
/// written; auth-param names compare case-insensitively.
pub fn parse_param(element: &str) -> Result<(&str, ParamValue<'_>), ParamSyntaxError> {
    let name_len = token_len(element);
    if name_len == 0 {
        return Err(ParamSyntaxError::MissingName);
    }
    let name = &element[..name_len];
    let rest = element[name_len..].trim_start_matches([' ', '\t']);
    let Some(rest) = rest.strip_prefix('=') else {
        return Err(ParamSyntaxError::MissingEquals);
    };
    let rest = rest.trim_start_matches([' ', '\t']);
    if let Some(quoted) = rest.strip_prefix('"') {
        return Ok((name, parse_quoted(quoted)));
    }
    let value_len = token_len(rest);
    if value_len == 0 {
        return Err(ParamSyntaxError::MissingValue);
    }
    let trailing = trim_ows(&rest[value_len..]);
    Ok((
        name,
        ParamValue {
            value: Cow::Borrowed(&rest[..value_len]),
            trailing,
            terminated: true,
        },
    ))
}

/// Read a quoted-string body (after the opening quote), unescaping `\x` to `x`.
fn parse_quoted(body: &str) -> ParamValue<'_> {
    let bytes = body.as_bytes();
    // Fast path: no escapes before the closing quote.
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                return ParamValue {
                    value: Cow::Borrowed(&body[..i]),
                    trailing: trim_ows(&body[i + 1..]),
                    terminated: true,
                };
            }
            b'\\' => break,
            _ => i += 1,
        }
    }
    let mut out = String::with_capacity(body.len());
    out.push_str(&body[..i]);
    let mut chars = body[i..].char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, escaped)) => out.push(escaped),
                None => break,
            },
            '"' => {
                return ParamValue {
                    value: Cow::Owned(out),
                    trailing: trim_ows(&body[i + at + 1..]),
                    terminated: true,
                };
            }
            other => out.push(other),
        }
    }
    ParamValue {
        value: Cow::Owned(out),
        trailing: "",
        terminated: false,
    }
}

/// Write `value` as a quoted-string, escaping `"` and `\`. The caller has refused control
/// characters already.
pub fn push_quoted(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// True when `value` may be sent in a quoted-string: no control characters other than HTAB
/// (so no CR or LF: header injection), no DEL.
pub fn is_quotable(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_outside_quotes_only() {
        assert_eq!(
            split_top_level(r#"a="x,y", b=c,, d"#),
            vec![r#"a="x,y""#, "b=c", "d"]
        );
    }

    #[test]
    fn groups_several_schemes_on_one_line() {
        let groups =
            group_schemes(r#"Bearer realm="x", error="y", Payment id="1", realm="r", Basic abc=="#);
        let names: Vec<_> = groups.iter().map(|g| g.scheme).collect();
        assert_eq!(names, ["Bearer", "Payment", "Basic"]);
        assert_eq!(groups[1].elements, [r#"id="1""#, r#"realm="r""#]);
        assert_eq!(groups[2].elements, ["abc=="]);
    }

    #[test]
    fn param_with_bad_whitespace_is_not_a_scheme() {
        let groups = group_schemes(r#"Payment id = "1" , realm ="r""#);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].elements, [r#"id = "1""#, r#"realm ="r""#]);
    }

    #[test]
    fn unescapes_quoted_strings() {
        let (name, v) = parse_param(r#"description="a \"b\" \\c""#).unwrap();
        assert_eq!(name, "description");
        assert_eq!(v.value, r#"a "b" \c"#);
        assert!(v.terminated);
    }

    #[test]
    fn reports_unterminated_quotes() {
        let (_, v) = parse_param(r#"x="abc\"#).unwrap();
        assert!(!v.terminated);
    }
}
