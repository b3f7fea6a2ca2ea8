//! Human-readable output: aligned fields and tables, money, and policy or token rules in words.
//! Everything the server sent is printed on one line per value, control characters replaced.

use serde_json::Value;

/// Columns between table cells and between a label and its value.
const GAP: &str = "  ";

/// `text` with every control character (newlines, escapes) replaced by a space.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A JSON value as display text: strings as they are, null as `-`, anything else as JSON.
pub fn show(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => one_line(s),
        other => one_line(&other.to_string()),
    }
}

/// Member `field` of `value` as display text (`-` when absent or null).
pub fn text(value: &Value, field: &str) -> String {
    show(value.get(field).unwrap_or(&Value::Null))
}

/// `{"amount","currency"}` as `250 usd` (amounts stay integer minor units, as in the API).
pub fn money(value: &Value) -> String {
    format!("{} {}", text(value, "amount"), text(value, "currency"))
}

/// Labelled lines, the values aligned.
pub fn fields(rows: &[(&str, String)]) -> String {
    let width = rows
        .iter()
        .map(|(label, _)| label.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (label, value) in rows {
        let pad = width - label.chars().count();
        out.push_str(label);
        out.push_str(&" ".repeat(pad));
        out.push_str(GAP);
        out.push_str(&one_line(value));
        out.push('\n');
    }
    out
}

/// A table with a header line, the columns aligned (the last one is not padded).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| one_line(cell)).collect())
        .collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str(GAP);
            }
            line.push_str(cell);
            line.push_str(&" ".repeat(width - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The items of a JSON array (none when it is not one).
pub fn items(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}

fn names(value: &Value) -> String {
    items(value).iter().map(show).collect::<Vec<_>>().join(", ")
}

fn moneys(value: &Value) -> String {
    items(value)
        .iter()
        .map(money)
        .collect::<Vec<_>>()
        .join(", ")
}

fn budget(value: &Value) -> String {
    match value.get("period").and_then(Value::as_str) {
        Some("rolling") => format!(
            "{} per rolling {} s",
            money(value),
            text(value, "windowSeconds")
        ),
        Some(period) => format!("{} per {}", money(value), one_line(period)),
        None => money(value),
    }
}

/// A policy's or a token's limits, one labelled line per rule, in the order the server sent
/// them. Members this version does not know are shown as JSON rather than dropped.
pub fn rules(limits: &Value) -> Vec<(&'static str, String)> {
    let Some(map) = limits.as_object() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, value) in map {
        match key.as_str() {
            "timeZone" => out.push(("time zone", show(value))),
            "maxPerPayment" => out.push(("max per payment", moneys(value))),
            "approvalAbove" => out.push(("approval above", moneys(value))),
            "budgets" => out.extend(items(value).iter().map(|b| ("budget", budget(b)))),
            "merchants" => {
                if let Some(allow) = value.get("allow").filter(|a| !items(a).is_empty()) {
                    out.push(("merchants allowed", names(allow)));
                }
                if let Some(deny) = value.get("deny").filter(|d| !items(d).is_empty()) {
                    out.push(("merchants denied", names(deny)));
                }
            }
            "merchantsAllow" => out.push(("merchants allowed", names(value))),
            "methods" => out.push(("methods", names(value))),
            "currencies" => out.push(("currencies", names(value))),
            "velocity" => out.push((
                "velocity",
                format!(
                    "at most {} payments per {} s",
                    text(value, "maxPayments"),
                    value
                        .get("windowSeconds")
                        .map_or_else(|| "60".to_owned(), show)
                ),
            )),
            other => out.push(("other", format!("{} = {}", one_line(other), show(value)))),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_policy_reads_as_one_line_per_rule() {
        let policy = json!({
            "timeZone": "Europe/Berlin",
            "maxPerPayment": [{"amount": "500", "currency": "usd"}],
            "budgets": [
                {"amount": "1000", "currency": "usd", "period": "day"},
                {"amount": "90", "currency": "eur", "period": "rolling", "windowSeconds": 3600}
            ],
            "merchants": {"allow": ["api.example.com", "ten_1"], "deny": ["evil"]},
            "velocity": {"maxPayments": 10, "windowSeconds": 60},
            "approvalAbove": [{"amount": "200", "currency": "usd"}],
            "future": true
        });
        let text = fields(&rules(&policy));
        assert_eq!(
            text,
            "time zone          Europe/Berlin\n\
             max per payment    500 usd\n\
             budget             1000 usd per day\n\
             budget             90 eur per rolling 3600 s\n\
             merchants allowed  api.example.com, ten_1\n\
             merchants denied   evil\n\
             velocity           at most 10 payments per 60 s\n\
             approval above     200 usd\n\
             other              future = true\n"
        );
    }

    #[test]
    fn tables_align_columns_and_keep_cells_on_one_line() {
        let rows = vec![
            vec!["agt_1".to_owned(), "a\nb".to_owned(), "v1".to_owned()],
            vec!["agt_22".to_owned(), "-".to_owned(), "none".to_owned()],
        ];
        assert_eq!(
            table(&["ID", "NAME", "POLICY"], &rows),
            "ID      NAME  POLICY\nagt_1   a b   v1\nagt_22  -     none\n"
        );
    }
}
