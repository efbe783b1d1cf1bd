//! Errors written on one line with their causes, for log lines and messages.

/// The error and its causes on one line ("error sending request: client error (Connect):
/// tcp connect error: Connection refused (os error 111)").
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
