//! `causeway flow`: one flow as a tree of its events and where each went, once or until it
//! settles; and `causeway flow replay`, the flow's dead letters in every subscription.
//!
//! The rendering reads the API's JSON as a `serde_json::Value` and shows what it knows, so
//! that fields added to the contract later neither break it nor need it to change.

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    io::Write as _,
    time::Duration,
};

use serde_json::Value;
use tokio::time::Instant;
use uuid::Uuid;

use super::{ApiTarget, CliError, call};

/// How to look a flow up and show it.
#[derive(Clone, Debug, clap::Args)]
pub struct ShowArgs {
    /// The flow's correlation id.
    #[arg(required_unless_present = "event_id", conflicts_with = "event_id")]
    pub correlation_id: Option<String>,
    /// Find the flow by one of its events instead.
    #[arg(long, value_name = "UUID")]
    pub event_id: Option<Uuid>,
    /// `text`: a tree; `json`: the API's answer as is.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Redraw every second until the flow settles or --timeout passes; the exit code says
    /// how it ended.
    #[arg(long)]
    pub watch: bool,
    /// How long --watch waits for the flow to settle, such as `30s` or `5m`.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration, requires = "watch")]
    pub timeout: Duration,
}

/// How a flow is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// A tree of events and hops, for people.
    Text,
    /// The API's JSON, pretty-printed, for scripts.
    Json,
}

/// A flow command other than showing one.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum FlowCommand {
    /// Send the flow's dead letters back for delivery, in every subscription of the sidecar.
    Replay {
        /// The flow's correlation id.
        correlation_id: String,
    },
}

/// Where a watched flow ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every hop delivered, and its definition (when one matches) complete.
    Settled,
    /// Stuck, or its definition failed or is late.
    Stuck,
    /// Neither, when the time ran out; or settled while its definition still waits for
    /// the event that completes it.
    InProgress,
}

impl Verdict {
    /// The verdict on a flow as the API shows it: a definition's outcome, when there is
    /// one, says whether the flow did what it is for.
    pub fn of(flow: &Value) -> Verdict {
        let outcome = flow["definition"]["outcome"].as_str();
        if flow["state"] == "stuck" || matches!(outcome, Some("failed" | "late")) {
            Verdict::Stuck
        } else if outcome == Some("complete")
            || (flow["state"] == "settled" && outcome != Some("in_progress"))
        {
            Verdict::Settled
        } else {
            Verdict::InProgress
        }
    }
}

/// Fetches the flow and returns it as `output` asks.
pub async fn show(target: &ApiTarget, args: &ShowArgs) -> Result<String, CliError> {
    let flow = fetch(target, args).await?;
    Ok(format(&flow, args.output))
}

/// Fetches the flow every second and prints it to stdout when it changed (redrawn in place
/// on a terminal), until it settles or `args.timeout` passes; returns how it ended.
pub async fn watch(target: &ApiTarget, args: &ShowArgs) -> Result<Verdict, CliError> {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let deadline = Instant::now() + args.timeout;
    let mut shown = String::new();
    loop {
        let flow = fetch(target, args).await?;
        let text = format(&flow, args.output);
        if text != shown {
            let mut stdout = std::io::stdout().lock();
            // A terminal shows the latest state only; a pipe or a file gets each new state.
            let lead = match (terminal, shown.is_empty()) {
                (true, _) => "\x1b[H\x1b[2J",
                (false, true) => "",
                (false, false) => "\n",
            };
            let _ = write!(stdout, "{lead}{text}");
            let _ = stdout.flush();
            shown = text;
        }
        let verdict = Verdict::of(&flow);
        // Every hop of a settled flow has its outcome: nothing more is coming to watch.
        let finished = verdict == Verdict::Settled || flow["state"] == "settled";
        if finished || Instant::now() >= deadline {
            return Ok(verdict);
        }
        tokio::time::sleep_until((Instant::now() + Duration::from_secs(1)).min(deadline)).await;
    }
}

/// Replays the flow's dead letters and says how many, per subscription.
pub async fn replay(target: &ApiTarget, correlation_id: &str) -> Result<String, CliError> {
    let path = format!("/v1/flows/{}/replay", path_segment(correlation_id));
    let replayed = call(target, reqwest::Method::POST, &path, None).await?;
    let mut out = format!("replayed {}\n", replayed["replayed"]);
    if let Some(subscriptions) = replayed["subscriptions"].as_object() {
        let width = subscriptions.keys().map(|k| k.chars().count()).max();
        for (name, count) in subscriptions {
            let _ = writeln!(out, "  {name:<width$}  {count}", width = width.unwrap_or(0));
        }
    }
    Ok(out)
}

async fn fetch(target: &ApiTarget, args: &ShowArgs) -> Result<Value, CliError> {
    let path = match (&args.event_id, &args.correlation_id) {
        (Some(event_id), _) => format!("/v1/flows?event_id={event_id}"),
        (None, Some(id)) => format!("/v1/flows/{}", path_segment(id)),
        // clap requires one of the two.
        (None, None) => "/v1/flows/".to_owned(),
    };
    call(target, reqwest::Method::GET, &path, None).await
}

fn format(flow: &Value, output: Output) -> String {
    match output {
        Output::Text => render(flow),
        Output::Json => serde_json::to_string_pretty(flow).unwrap_or_default() + "\n",
    }
}

/// `id` as one path segment: everything but unreserved characters percent-encoded, so that
/// a `/`, `?`, `#` or `%` in a correlation id stays part of it.
fn path_segment(id: &str) -> String {
    let mut segment = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            segment.push(char::from(byte));
        } else {
            let _ = write!(segment, "%{byte:02X}");
        }
    }
    segment
}

/// The flow as text: a header line, then its events as a tree by causation, each with one
/// line per hop.
pub fn render(flow: &Value) -> String {
    let mut out = header(flow);
    let events = flow["events"].as_array().map_or(&[][..], Vec::as_slice);
    Tree::new(events).draw(&mut out);
    if flow["truncated"] == true {
        out.push_str("(truncated: the flow has more receipts than the sidecar keeps for one)\n");
    }
    out
}

fn header(flow: &Value) -> String {
    let mut line = text(&flow["correlation_id"]).to_owned();
    let _ = write!(line, "  {}", text(&flow["state"]));
    if let Some(reason) = flow["reason"].as_str() {
        let _ = write!(line, ": {reason}");
    }
    if let Some(scope) = flow["scope"].as_str() {
        let _ = write!(line, "  scope: {scope}");
    }
    let definition = &flow["definition"];
    if definition.is_object() {
        let _ = write!(
            line,
            "  definition {}: {}",
            text(&definition["name"]),
            text(&definition["outcome"])
        );
        let reason = definition["reason"].as_str();
        if let Some(reason) = reason.filter(|r| Some(*r) != flow["reason"].as_str()) {
            let _ = write!(line, " ({reason})");
        }
    }
    line.push('\n');
    line
}

/// The events of a flow by causation: an event is drawn under its parent, and one whose
/// parent is not in the flow is a root.
struct Tree<'a> {
    events: &'a [Value],
    children: Vec<Vec<usize>>,
    roots: Vec<usize>,
}

impl<'a> Tree<'a> {
    fn new(events: &'a [Value]) -> Self {
        let mut index = HashMap::new();
        for (i, event) in events.iter().enumerate() {
            if let Some(id) = event["event_id"].as_str() {
                index.entry(id).or_insert(i);
            }
        }
        let mut children = vec![Vec::new(); events.len()];
        let mut roots = Vec::new();
        for (i, event) in events.iter().enumerate() {
            let parent = event["causation_id"].as_str().and_then(|id| index.get(id));
            match parent {
                Some(&parent) if parent != i => children[parent].push(i),
                _ => roots.push(i),
            }
        }
        Tree {
            events,
            children,
            roots,
        }
    }

    fn draw(&self, out: &mut String) {
        let mut drawn = HashSet::new();
        for &root in &self.roots {
            self.draw_event(root, "", None, &mut drawn, out);
        }
        // Events in a causation loop have no root to hang from: each is drawn as one.
        for i in 0..self.events.len() {
            if !drawn.contains(&i) {
                self.draw_event(i, "", None, &mut drawn, out);
            }
        }
    }

    /// Draws event `i` after `prefix`; `last` says whether it is its parent's last child
    /// (`None` for a root).
    fn draw_event(
        &self,
        i: usize,
        prefix: &str,
        last: Option<bool>,
        drawn: &mut HashSet<usize>,
        out: &mut String,
    ) {
        drawn.insert(i);
        let (branch, below) = match last {
            None => ("", ""),
            Some(false) => ("├─ ", "│  "),
            Some(true) => ("└─ ", "   "),
        };
        let event = &self.events[i];
        let _ = writeln!(out, "{prefix}{branch}{}", event_line(event));
        let inner = format!("{prefix}{below}");
        // An event has one parent, so only a causation loop leads back to one drawn already.
        let children: Vec<usize> = self.children[i]
            .iter()
            .copied()
            .filter(|c| !drawn.contains(c))
            .collect();
        let rail = if children.is_empty() { "  " } else { "│ " };
        for hop in hop_lines(event) {
            let _ = writeln!(out, "{inner}{rail}{hop}");
        }
        for (n, &child) in children.iter().enumerate() {
            self.draw_event(child, &inner, Some(n + 1 == children.len()), drawn, out);
        }
    }
}

/// `OrderPlaced v1.0 (order) 0193abcd…6c7d at 12:00:00.123`.
fn event_line(event: &Value) -> String {
    let mut line = text(&event["event_type"]).to_owned();
    if let Some(version) = event["schema_version"].as_str() {
        let _ = write!(line, " v{version}");
    }
    if let Some(source) = event["source"].as_str() {
        let _ = write!(line, " ({source})");
    }
    let _ = write!(line, " {}", short_id(text(&event["event_id"])));
    if let Some(at) = event["occurred_at"].as_str() {
        let _ = write!(line, " at {}", clock(at, true));
    }
    if event["unrouted"] == true {
        line.push_str("  (unrouted: no subscription)");
    }
    line
}

/// One line per hop, `→ service/subscription  state  detail`, in aligned columns.
fn hop_lines(event: &Value) -> Vec<String> {
    let hops = event["hops"].as_array().map_or(&[][..], Vec::as_slice);
    let rows: Vec<(String, &str, String)> = hops
        .iter()
        .map(|hop| {
            let name = format!("{}/{}", text(&hop["service"]), text(&hop["subscription"]));
            (name, text(&hop["state"]), hop_detail(hop))
        })
        .collect();
    let name_width = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    let state_width = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
    rows.into_iter()
        .map(|(name, state, detail)| {
            let line = format!("→ {name:<name_width$}  {state:<state_width$}  {detail}");
            line.trim_end().to_owned()
        })
        .collect()
}

/// What a hop's state says beyond its name.
fn hop_detail(hop: &Value) -> String {
    let mut detail = String::new();
    match hop["state"].as_str() {
        Some("delivered") => {
            if let Some(took) = hop["took_ms"].as_u64() {
                let _ = write!(detail, "in {took} ms ");
            }
            if let Some(attempts) = hop["attempts"].as_u64() {
                let _ = write!(detail, "after {}", attempts_text(attempts));
            }
        }
        Some("dead_lettered") => {
            let why = match (hop["reason"].as_str(), last_failure(hop)) {
                (Some(reason), Some(failure)) => format!("{reason}: {failure}"),
                (Some(reason), None) => reason.to_owned(),
                (None, Some(failure)) => failure,
                (None, None) => String::new(),
            };
            detail.push_str(&why);
            if let Some(attempts) = hop["attempts"].as_u64() {
                let _ = write!(detail, " ({})", attempts_text(attempts));
            }
            if let Some(queue) = hop["dead_letter_queue"].as_str() {
                let _ = write!(detail, " → {queue}");
            }
        }
        Some("retrying") => {
            let mut parts = Vec::new();
            match (hop["attempts"].as_u64(), hop["max_attempts"].as_u64()) {
                (Some(n), Some(max)) => parts.push(format!("attempt {n} of {max}")),
                (Some(n), None) => parts.push(format!("attempt {n}")),
                _ => {}
            }
            match (hop["last_status"].as_u64(), hop["last_error"].as_str()) {
                (Some(status), _) => parts.push(format!("last {status}")),
                (None, Some(error)) => parts.push(format!("last: {error}")),
                (None, None) => {}
            }
            if let Some(next) = hop["next_attempt_at"].as_str() {
                parts.push(format!("next at {}", clock(next, false)));
            }
            detail = parts.join(", ");
        }
        Some("pending") => {
            // A replay starts the wait again: `since` is then the replay's time.
            let replayed = hop["replayed_at"].as_str();
            if let Some(since) = hop["since"].as_str().filter(|s| Some(*s) != replayed) {
                let _ = write!(detail, "since {}", clock(since, false));
            }
            if let Some(replayed) = replayed {
                let _ = write!(detail, ", replayed at {}", clock(replayed, false));
            }
        }
        Some("duplicate_skipped") => {
            if let Some(at) = hop["skipped_at"].as_str() {
                let _ = write!(detail, "at {}", clock(at, false));
            }
        }
        _ => {}
    }
    detail.trim_start_matches(", ").trim().to_owned()
}

/// The app's last answer, in words: its error, else its status.
fn last_failure(hop: &Value) -> Option<String> {
    match (hop["last_error"].as_str(), hop["last_status"].as_u64()) {
        (Some(error), _) => Some(error.to_owned()),
        (None, Some(status)) => Some(format!("the app answered {status}")),
        (None, None) => None,
    }
}

fn attempts_text(attempts: u64) -> String {
    match attempts {
        1 => "1 attempt".to_owned(),
        n => format!("{n} attempts"),
    }
}

/// A string field, `?` when it is missing or not a string.
fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("?")
}

/// An event id shortened to its first 8 and last 4 characters: the start is what one
/// recognises, and the end tells apart the ids of one flow, which (UUID v7) share their
/// first characters when made in the same minute.
fn short_id(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    if chars.len() <= 13 {
        return id.to_owned();
    }
    let head: String = chars[..8].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

/// The time of day of an RFC 3339 timestamp (UTC, as the API writes them), with
/// milliseconds or not; the text as is when it has no time part.
fn clock(timestamp: &str, millis: bool) -> String {
    let Some((_, time)) = timestamp.split_once('T') else {
        return timestamp.to_owned();
    };
    let time = time.trim_end_matches(['Z', 'z']);
    // Leave out an offset (`+01:00`, `-05:00`) after the seconds.
    let time = time.get(8..).map_or(time, |rest| {
        let end = rest.find(['+', '-']).map_or(time.len(), |at| at + 8);
        &time[..end]
    });
    let (seconds, fraction) = time.split_once('.').unwrap_or((time, ""));
    if millis && !fraction.is_empty() {
        let fraction: String = fraction.chars().take(3).collect();
        format!("{seconds}.{fraction:0<3}")
    } else {
        seconds.to_owned()
    }
}

#[cfg(test)]
mod tests;
