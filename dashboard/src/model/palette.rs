//! What colour means, decided once: every line, bar and marker of an outcome class, throttling
//! scope or event kind gets its meaning here, and `views::palette` turns meanings into pixels.
//! Green is success, grey a client's own mistake, amber throttling, red a server fault; nothing
//! else may use those colours by accident (an `ok` line drawn red misleads at a glance).

use super::sli;

/// The meaning of a colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Meaning {
    /// Answered as asked.
    Ok,
    /// The caller's mistake (validation, denied, invalid ciphertext, ...): a correct answer.
    ClientError,
    /// Refused by a rate limit.
    Throttled,
    /// The sidecar or its backend failed.
    ServerError,
    /// No semantic colour: the plot's own sequence.
    Neutral,
}

/// The outcome class of a `kms_sidecar_requests_total` outcome label.
pub fn outcome_class(outcome: &str) -> &'static str {
    if outcome == "ok" {
        "ok"
    } else if sli::is_bad(outcome) {
        "server error"
    } else if outcome == "ThrottlingException" {
        "throttled"
    } else {
        "client error"
    }
}

/// The meaning of a plotted line's name: an outcome class, an outcome, or a throttling scope.
pub fn meaning(name: &str) -> Meaning {
    match name {
        "ok" => Meaning::Ok,
        "client error" => Meaning::ClientError,
        "throttled" | "ThrottlingException" => Meaning::Throttled,
        "server error" => Meaning::ServerError,
        n if sli::is_bad(n) => Meaning::ServerError,
        n if n.ends_with("Exception") => Meaning::ClientError,
        _ => Meaning::Neutral,
    }
}

/// The meaning of an event marker kind (`/v1/history` events).
pub fn event_meaning(kind: &str, detail: &str) -> Meaning {
    match kind {
        "breaker" if detail.ends_with(" open") => Meaning::ServerError,
        "breaker" if detail.ends_with(" closed") => Meaning::Ok,
        "breaker" | "faults_on" => Meaning::Throttled,
        "faults_off" => Meaning::Ok,
        _ => Meaning::Neutral,
    }
}

/// The legend name of an event marker. egui_plot shows one legend entry per name and greys an
/// entry whose markers differ in colour, so every name here maps to one colour: a breaker
/// transition is named by the state it entered (`event: breaker open`), other events by kind.
pub fn event_legend(kind: &str, detail: &str) -> String {
    let kind = kind.replace('_', " ");
    if kind == "breaker" {
        let state = detail
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .replace('_', "-");
        format!("event: breaker {state}")
    } else {
        format!("event: {kind}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_legend_name_has_one_colour() {
        let events = [
            ("breaker", "embedded breaker open"),
            ("breaker", "upstream breaker open"),
            ("breaker", "embedded breaker half_open"),
            ("breaker", "embedded breaker closed"),
            ("faults_on", "error_rate 0.5"),
            ("faults_off", "cleared"),
            ("reload", "configuration reloaded: rate limits"),
            ("start", "started"),
        ];
        let mut colours = std::collections::BTreeMap::new();
        for (kind, detail) in events {
            let meaning = event_meaning(kind, detail);
            let previous = colours.insert(event_legend(kind, detail), meaning);
            assert!(
                previous.is_none_or(|m| m == meaning),
                "{kind} {detail}: one legend name, two colours"
            );
        }
        assert_eq!(
            event_legend("breaker", "embedded breaker half_open"),
            "event: breaker half-open"
        );
        assert_eq!(event_legend("faults_on", "x"), "event: faults on");
        assert_eq!(colours.len(), 7);
    }

    #[test]
    fn outcome_classes_have_their_meaning() {
        let cases = [
            ("ok", "ok", Meaning::Ok),
            (
                "AccessDeniedException",
                "client error",
                Meaning::ClientError,
            ),
            (
                "InvalidCiphertextException",
                "client error",
                Meaning::ClientError,
            ),
            ("ThrottlingException", "throttled", Meaning::Throttled),
            ("KMSInternalException", "server error", Meaning::ServerError),
            (
                "DependencyTimeoutException",
                "server error",
                Meaning::ServerError,
            ),
            (
                "KeyUnavailableException",
                "server error",
                Meaning::ServerError,
            ),
        ];
        for (outcome, class, m) in cases {
            assert_eq!(outcome_class(outcome), class, "{outcome}");
            assert_eq!(meaning(class), m, "{class}");
            assert_eq!(meaning(outcome), m, "{outcome}");
        }
        assert_eq!(meaning("Encrypt"), Meaning::Neutral);
        assert_eq!(
            event_meaning("breaker", "embedded breaker open"),
            Meaning::ServerError
        );
        assert_eq!(
            event_meaning("breaker", "embedded breaker closed"),
            Meaning::Ok
        );
        assert_eq!(event_meaning("faults_on", "{}"), Meaning::Throttled);
        assert_eq!(event_meaning("rotation", "k rotated"), Meaning::Neutral);
    }
}
