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

#[cfg(test)]
mod tests {
    use super::*;

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
