//! A small PromQL tokenizer: the metric names an expression selects, and the Grafana variables
//! it uses. It knows PromQL's lexical structure (strings, label matchers, ranges, grouping
//! clauses, keywords, calls), enough to tell a metric name from a function, an aggregation, a
//! keyword or a label name; it does not check the grammar beyond balanced brackets.

use std::collections::BTreeSet;

/// What an expression refers to.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Refs {
    /// Metric names used as selectors (`name`, `name{...}`, `name[5m]`).
    pub(crate) metrics: BTreeSet<String>,
    /// Grafana variables (`$name`, `${name}`, `${name:format}`, `[[name]]`).
    pub(crate) variables: BTreeSet<String>,
}

/// Binary operators, modifiers and constants that look like identifiers.
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "atan2", "bool", "offset", "inf", "nan",
];

/// Clauses followed by a list of label names in parentheses.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Aggregation operators: calls, but their grouping clause may stand between the name and
/// the parenthesis (`sum by (job) (...)`).
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

struct Lexer<'a> {
    chars: Vec<char>,
    at: usize,
    refs: Refs,
    expr: &'a str,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    /// The next character that is not white space, without consuming it.
    fn next_significant(&self) -> Option<char> {
        self.chars[self.at..]
            .iter()
            .copied()
            .find(|c| !c.is_whitespace())
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.at += 1;
        }
    }

    fn ident(&mut self) -> String {
        let start = self.at;
        while self.peek().is_some_and(is_ident) {
            self.at += 1;
        }
        self.chars[start..self.at].iter().collect()
    }

    fn error(&self, what: &str) -> String {
        format!("{what} at character {} of {:?}", self.at, self.expr)
    }

    /// A Grafana variable starting at `$` (or `[[`).
    fn variable(&mut self) -> Result<(), String> {
        if self.peek() == Some('[') {
            self.at += 2;
            let name = self.ident();
            if self.chars.get(self.at..self.at + 2) != Some(&[']', ']']) {
                return Err(self.error("unterminated [[variable]]"));
            }
            self.at += 2;
            self.refs.variables.insert(name);
            return Ok(());
        }
        self.at += 1;
        if self.peek() == Some('{') {
            self.at += 1;
            let name = self.ident();
            while self.peek().is_some_and(|c| c != '}') {
                self.at += 1;
            }
            if self.peek() != Some('}') {
                return Err(self.error("unterminated ${variable}"));
            }
            self.at += 1;
            self.refs.variables.insert(name);
        } else {
            let name = self.ident();
            if name.is_empty() {
                return Err(self.error("a $ without a variable name"));
            }
            self.refs.variables.insert(name);
        }
        Ok(())
    }

    /// A quoted string; variables inside it count.
    fn string(&mut self) -> Result<(), String> {
        let quote = self.chars[self.at];
        self.at += 1;
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some('\\') if quote != '`' => self.at += 2,
                Some('$') => self.variable()?,
                Some(c) if c == quote => {
                    self.at += 1;
                    return Ok(());
                }
                Some(_) => self.at += 1,
            }
        }
    }

    /// From an opening bracket to its closing one, skipping what is inside (label matchers,
    /// ranges, label lists) but not the variables and strings in it.
    fn skip_group(&mut self, open: char, close: char) -> Result<(), String> {
        self.at += 1;
        loop {
            match self.peek() {
                None => return Err(self.error(&format!("unclosed {open:?}"))),
                Some('"' | '\'' | '`') => self.string()?,
                Some('$') => self.variable()?,
                Some(c) if c == open => return Err(self.error(&format!("nested {open:?}"))),
                Some(c) if c == close => {
                    self.at += 1;
                    return Ok(());
                }
                Some(_) => self.at += 1,
            }
        }
    }

    fn run(mut self) -> Result<Refs, String> {
        let mut depth = 0usize;
        while let Some(c) = self.peek() {
            match c {
                c if c.is_whitespace() => self.at += 1,
                '"' | '\'' | '`' => self.string()?,
                '$' => self.variable()?,
                '[' if self.chars.get(self.at + 1) == Some(&'[') => self.variable()?,
                // A range or subquery after a selector or a parenthesis.
                '[' => self.skip_group('[', ']')?,
                '{' => return Err(self.error("a selector without a metric name")),
                '(' => {
                    depth += 1;
                    self.at += 1;
                }
                ')' => {
                    depth = depth
                        .checked_sub(1)
                        .ok_or_else(|| self.error("unbalanced ')'"))?;
                    self.at += 1;
                }
                c if c.is_ascii_digit() || c == '.' => {
                    while self
                        .peek()
                        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '.')
                    {
                        self.at += 1;
                    }
                }
                c if is_ident_start(c) => self.word()?,
                '+' | '-' | '*' | '/' | '%' | '^' | '=' | '!' | '<' | '>' | ',' | '@' => {
                    self.at += 1;
                }
                other => return Err(self.error(&format!("unexpected {other:?}"))),
            }
        }
        if depth != 0 {
            return Err(self.error("unbalanced '('"));
        }
        Ok(self.refs)
    }

    /// An identifier: a keyword, a grouping clause, an aggregation, a call or a metric name.
    fn word(&mut self) -> Result<(), String> {
        let word = self.ident();
        let lower = word.to_ascii_lowercase();
        if GROUPING.contains(&lower.as_str()) {
            self.skip_space();
            if self.peek() == Some('(') {
                self.skip_group('(', ')')?;
            } else if lower != "group_left" && lower != "group_right" {
                return Err(self.error(&format!("{word} without a label list")));
            }
        } else if lower == "offset" {
            self.skip_space();
            if self.peek() == Some('-') {
                self.at += 1;
            }
            while self.peek().is_some_and(|c| c.is_ascii_alphanumeric()) {
                self.at += 1;
            }
        } else if KEYWORDS.contains(&lower.as_str())
            || AGGREGATIONS.contains(&lower.as_str())
            || self.next_significant() == Some('(')
        {
            // Calls are matched by the main loop's parenthesis count.
        } else {
            self.refs.metrics.insert(word);
            self.skip_space();
            if self.peek() == Some('{') {
                self.skip_group('{', '}')?;
            }
        }
        Ok(())
    }
}

/// The metric names and Grafana variables of a PromQL expression.
pub(crate) fn refs(expr: &str) -> Result<Refs, String> {
    Lexer {
        chars: expr.chars().collect(),
        at: 0,
        refs: Refs::default(),
        expr,
    }
    .run()
}

/// The refs of a Grafana query variable's query: `label_values(selector, label)`,
/// `label_values(label)`, `label_names()`, `metrics(regex)` or `query_result(expr)`.
pub(crate) fn variable_query_refs(query: &str) -> Result<Refs, String> {
    let query = query.trim();
    let (function, inner) = query
        .split_once('(')
        .and_then(|(f, rest)| Some((f.trim(), rest.strip_suffix(')')?)))
        .ok_or_else(|| format!("not a Prometheus variable query: {query:?}"))?;
    match function {
        "label_values" => match inner.rsplit_once(',') {
            Some((selector, _label)) => refs(selector),
            None => Ok(Refs::default()),
        },
        "query_result" => refs(inner),
        "label_names" | "metrics" => Ok(Refs::default()),
        other => Err(format!(
            "unknown variable query function {other:?} in {query:?}"
        )),
    }
}

#[test]
fn the_tokenizer_tells_metric_names_from_functions_keywords_and_labels() {
    let found = refs(
        r#"sum by (job, le) (rate(foo_bucket{a="b", c=~"$x|}"}[$__rate_interval]))
           / on (job) group_left (pod) bar offset 5m > bool 0 and baz
           or count without (instance) (max_over_time(qux[5m:1m])) unless vector(0)
           or topk(3, up) * -1.5e3 + inf"#,
    )
    .unwrap();
    assert_eq!(
        found.metrics,
        ["bar", "baz", "foo_bucket", "qux", "up"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        found.variables,
        ["__rate_interval", "x"].map(String::from).into()
    );
    let label_values =
        variable_query_refs(r#"label_values(causeway_broker_connected{namespace=~"$ns"}, job)"#)
            .unwrap();
    assert_eq!(
        label_values.metrics,
        ["causeway_broker_connected".to_owned()].into()
    );
    assert_eq!(label_values.variables, ["ns".to_owned()].into());
    for broken in [
        "sum(rate(x[5m])",
        "x{a=\"b}",
        "rate(x[5m)",
        "{job=\"a\"}",
        "x ; y",
        "sum by rate(x)",
    ] {
        assert!(refs(broken).is_err(), "{broken} was accepted");
    }
}
