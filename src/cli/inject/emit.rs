//! Writes a YAML document in the style of the manifests under deploy/: block style, two-space
//! indents, sequences indented under their key, multi-line strings as literal blocks, and
//! every string quoted that a YAML 1.1 reader (Kubernetes' own) could take for something else.
//!
//! yaml_serde parses the input; it is not used to write, because its writer follows YAML 1.2
//! and leaves `yes`, `on` or `n` unquoted, which Kubernetes reads as booleans.

use yaml_serde::{Mapping, Value};

/// What cannot be written back.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    /// A `!tag`: Kubernetes manifests have none, and the tag's meaning is unknown here.
    #[error("a tagged value ({0}) is not supported")]
    Tagged(String),
    /// A mapping or a sequence used as a key.
    #[error("a mapping or sequence used as a key is not supported")]
    ComplexKey,
    /// What was written does not read back as the same document: a bug, caught here
    /// instead of writing a changed manifest.
    #[error("the output does not read back as the same document")]
    RoundTrip,
}

/// Appends `value` as one document (without a `---` line), and checks that it reads back
/// as the same value.
pub(crate) fn document(value: &Value, out: &mut String) -> Result<(), EmitError> {
    let start = out.len();
    match value {
        Value::Mapping(map) if !map.is_empty() => mapping(out, map, 0, false)?,
        Value::Sequence(items) if !items.is_empty() => sequence(out, items, 0, false)?,
        other => {
            scalar(out, other, 2, At::Item)?;
            out.push('\n');
        }
    }
    match yaml_serde::from_str::<Value>(&out[start..]) {
        Ok(read) if read == *value => Ok(()),
        _ => Err(EmitError::RoundTrip),
    }
}

/// The entries of a non-empty mapping at `indent`; the first one continues the current line
/// when `inline` (after `- `).
fn mapping(out: &mut String, map: &Mapping, indent: usize, inline: bool) -> Result<(), EmitError> {
    for (index, (key, value)) in map.iter().enumerate() {
        if index > 0 || !inline {
            pad(out, indent);
        }
        match key {
            Value::Mapping(_) | Value::Sequence(_) => return Err(EmitError::ComplexKey),
            key => scalar(out, key, indent, At::Key)?,
        }
        out.push(':');
        child(out, value, indent + 2)?;
    }
    Ok(())
}

/// The items of a non-empty sequence at `indent`; the first one continues the current line
/// when `inline`.
fn sequence(
    out: &mut String,
    items: &[Value],
    indent: usize,
    inline: bool,
) -> Result<(), EmitError> {
    for (index, item) in items.iter().enumerate() {
        if index > 0 || !inline {
            pad(out, indent);
        }
        out.push_str("- ");
        match item {
            Value::Mapping(map) if !map.is_empty() => mapping(out, map, indent + 2, true)?,
            Value::Sequence(inner) if !inner.is_empty() => sequence(out, inner, indent + 2, true)?,
            other => {
                scalar(out, other, indent + 2, At::Item)?;
                out.push('\n');
            }
        }
    }
    Ok(())
}

/// A value after `key:`: nested on the next lines, or a scalar on the same line.
fn child(out: &mut String, value: &Value, indent: usize) -> Result<(), EmitError> {
    match value {
        Value::Mapping(map) if !map.is_empty() => {
            out.push('\n');
            mapping(out, map, indent, false)
        }
        Value::Sequence(items) if !items.is_empty() => {
            out.push('\n');
            sequence(out, items, indent, false)
        }
        other => {
            out.push(' ');
            scalar(out, other, indent, At::Value)?;
            out.push('\n');
            Ok(())
        }
    }
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// Where a scalar is written.
#[derive(Clone, Copy, PartialEq)]
enum At {
    /// A mapping key: never a block.
    Key,
    /// After `key:`: a literal block may have an indentation indicator (relative to the key).
    Value,
    /// A sequence item, or a whole document: a literal block without an indicator.
    Item,
}

/// A scalar or an empty collection. A multi-line string becomes a literal block whose lines
/// are at `indent`.
fn scalar(out: &mut String, value: &Value, indent: usize, at: At) -> Result<(), EmitError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => string(out, s, indent, at),
        Value::Sequence(_) => out.push_str("[]"),
        Value::Mapping(_) => out.push_str("{}"),
        Value::Tagged(tagged) => return Err(EmitError::Tagged(tagged.tag.to_string())),
    }
    Ok(())
}

fn string(out: &mut String, s: &str, indent: usize, at: At) {
    if is_plain(s) {
        out.push_str(s);
    } else if let Some(header) = literal_header(s, at) {
        out.push_str(&header);
        for line in s.strip_suffix('\n').unwrap_or(s).split('\n') {
            out.push('\n');
            if !line.is_empty() {
                pad(out, indent);
                out.push_str(line);
            }
        }
    } else if s.chars().all(|c| !needs_escape(c)) {
        out.push('\'');
        out.push_str(&s.replace('\'', "''"));
        out.push('\'');
    } else {
        double_quoted(out, s);
    }
}

/// Whether `s` can be written without quotes and be read back as this string by a YAML 1.2
/// reader and a YAML 1.1 one: a conservative set of characters, nothing that starts like a
/// number, a date, an indicator or a YAML 1.1 boolean.
fn is_plain(s: &str) -> bool {
    const WORDS: &[&str] = &["y", "n", "yes", "no", "on", "off", "true", "false", "null"];
    let Some(first) = s.chars().next() else {
        return false;
    };
    let allowed = |c: char| c.is_ascii_alphanumeric() || " _./:=+@$()~,-".contains(c);
    let starts_well = match first {
        c if c.is_ascii_alphabetic() || matches!(c, '/' | '_' | '$') => true,
        // `-x` and `--flag` are strings; `-1`, `-.5` and `- x` are not.
        '-' => s[1..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '-'),
        // `128Mi`, `500m`, `20s`: a digit, then a letter that no number or date has.
        c if c.is_ascii_digit() => {
            !s.contains(':')
                && s.chars()
                    .any(|c| c.is_ascii_alphabetic() && !"abcdefABCDEFxXoObBtT".contains(c))
        }
        _ => false,
    };
    starts_well
        && s.chars().all(allowed)
        && !s.ends_with([' ', ':'])
        && !s.contains(": ")
        && !WORDS.iter().any(|w| s.eq_ignore_ascii_case(w))
        && matches!(yaml_serde::from_str::<Value>(s), Ok(Value::String(read)) if read == s)
}

/// The header of a literal block for `s` (`|`, `|-`, `|+`, with an indentation indicator
/// when the first line starts with a space), or `None` when `s` needs a quoted form.
fn literal_header(s: &str, at: At) -> Option<String> {
    let printable = s
        .chars()
        .all(|c| c == '\n' || c == '\t' || !needs_escape(c));
    if at == At::Key || !s.contains('\n') || s.starts_with('\n') || !printable {
        return None;
    }
    let indicator = if s.starts_with(' ') {
        // Relative to the key's indentation, where the lines are written 2 further in.
        if at != At::Value {
            return None;
        }
        "2"
    } else {
        ""
    };
    let chomp = match s.strip_suffix('\n') {
        None => "-",
        Some(rest) if rest.ends_with('\n') || rest.is_empty() => "+",
        Some(_) => "",
    };
    Some(format!("|{indicator}{chomp}"))
}

/// Characters a YAML reader does not take as written inside quotes or a block.
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
}

fn double_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}
