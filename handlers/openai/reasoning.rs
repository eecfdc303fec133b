//! Reasoning models without a model-specific setting: which `reasoning_effort` to send, found
//! from the deployment's own answers and remembered for the process.
//!
//! Reasoning models (the gpt-5 family) count hidden reasoning tokens inside
//! `max_completion_tokens`, and at their default effort a short classify budget is spent
//! entirely on reasoning. The lowest effort each model accepts differs (gpt-5 / -mini / -nano:
//! `minimal`; gpt-5.1 and later: `none`, with `minimal` refused), and models that do not reason
//! refuse the parameter altogether. So, unless `AOAI_REASONING_EFFORT` says otherwise, the
//! first call of the process sends `minimal` and learns from the answer:
//!
//! - 200: the model reasons and accepts `minimal`;
//! - 400 "Unrecognized request argument supplied: reasoning_effort" (or `unsupported_parameter`
//!   naming it): the model does not reason; send nothing from now on;
//! - 400 `unsupported_value` / `invalid_value` for `reasoning_effort`: the message lists the
//!   supported values; use the lowest.
//!
//! Until the first answer settles it, calls wait for that probe (bounded by their deadlines),
//! so at most one call of the process meets a 400.

use std::sync::Mutex;

use serde_json::Value;

use crate::error::ApiError;

/// A `reasoning_effort` value, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Effort {
    None,
    Minimal,
    Low,
    Medium,
    High,
}

impl Effort {
    pub const ALL: [Effort; 5] = [Effort::None, Effort::Minimal, Effort::Low, Effort::Medium, Effort::High];

    pub fn as_str(self) -> &'static str {
        match self {
            Effort::None => "none",
            Effort::Minimal => "minimal",
            Effort::Low => "low",
            Effort::Medium => "medium",
            Effort::High => "high",
        }
    }

    pub fn parse(value: &str) -> Option<Effort> {
        Effort::ALL.into_iter().find(|e| e.as_str().eq_ignore_ascii_case(value.trim()))
    }

    /// Completion tokens added to an answer's budget for hidden reasoning at this effort, so
    /// a summary or a label is not starved. Azure counts `max_completion_tokens` against the
    /// deployment's tokens-per-minute quota, so the reserve grows with the effort instead of
    /// being large for every call. An answer cut off anyway is retried with a larger budget.
    pub fn reserve(self) -> u32 {
        match self {
            Effort::None => 0,
            Effort::Minimal => 256,
            Effort::Low => 1024,
            Effort::Medium => 4096,
            Effort::High => 16384,
        }
    }
}

/// What the process knows about the deployment's model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learned {
    /// No answer yet: the next call probes with `minimal`.
    Unknown,
    /// The model refused `reasoning_effort`: it does not reason.
    NotReasoning,
    /// The model reasons and accepts this effort (the lowest it accepts, unless configured).
    Effort(Effort),
}

/// What a refused call means for the next attempt.
#[derive(Debug)]
pub enum Refusal {
    /// Not about `reasoning_effort`: handle the 400 as usual.
    Other,
    /// The effort to send was corrected: send the call again at once.
    Adjusted,
    /// `AOAI_REASONING_EFFORT` names an effort the model refuses: a configuration error.
    Misconfigured(ApiError),
}

/// The process's choice of `reasoning_effort` for the one deployment it calls.
#[derive(Debug)]
pub struct ReasoningPolicy {
    /// `AOAI_REASONING_EFFORT`, when set.
    configured: Option<Effort>,
    learned: Mutex<Learned>,
    /// Held by the call that probes an unknown deployment; the others wait for its answer.
    pub(super) probe: tokio::sync::Mutex<()>,
}

impl ReasoningPolicy {
    pub fn new(configured: Option<Effort>) -> Self {
        let learned = match configured {
            Some(effort) => Learned::Effort(effort),
            None => Learned::Unknown,
        };
        Self { configured, learned: Mutex::new(learned), probe: tokio::sync::Mutex::new(()) }
    }

    pub fn learned(&self) -> Learned {
        *self.learned.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, learned: Learned) {
        let mut current = self.learned.lock().unwrap_or_else(|e| e.into_inner());
        if *current != learned {
            tracing::info!(?learned, "reasoning_effort settled for this deployment");
        }
        *current = learned;
    }

    pub fn configured(&self) -> Option<Effort> {
        self.configured
    }

    /// The effort to send now (`None`: send no `reasoning_effort`).
    pub fn effort_to_send(&self) -> Option<Effort> {
        match self.learned() {
            Learned::Unknown => Some(Effort::Minimal),
            Learned::NotReasoning => None,
            Learned::Effort(effort) => Some(effort),
        }
    }

    /// A 200 to a call sent with `sent`: the model accepts it.
    pub fn accepted(&self, sent: Option<Effort>) {
        if let Some(effort) = sent
            && self.learned() == Learned::Unknown
        {
            self.set(Learned::Effort(effort));
        }
    }

    /// A 400 to a call sent with `sent`, whose body is `text`.
    pub fn refused(&self, sent: Option<Effort>, text: &str, deployment: &str) -> Refusal {
        let Some(sent) = sent else { return Refusal::Other };
        let parsed: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        let error = &parsed["error"];
        let message = error["message"].as_str().unwrap_or_default();
        let code = error["code"].as_str().unwrap_or_default();
        let about_effort = error["param"].as_str() == Some("reasoning_effort") || message.contains("reasoning_effort");
        if !about_effort {
            return Refusal::Other;
        }
        let unrecognized = message.contains("Unrecognized request argument") || code == "unsupported_parameter";
        let accepted = supported_values(message);
        if let Some(configured) = self.configured {
            let why = if unrecognized {
                format!(
                    "deployment `{deployment}` runs a model that does not reason and refuses reasoning_effort. Remove AOAI_REASONING_EFFORT"
                )
            } else {
                let list: Vec<&str> = accepted.iter().map(|e| e.as_str()).collect();
                format!(
                    "deployment `{deployment}` does not accept reasoning_effort `{}` (it accepts: {}). Set AOAI_REASONING_EFFORT to one of those, or remove it to use the lowest",
                    configured.as_str(),
                    if list.is_empty() { "see the message".to_owned() } else { list.join(", ") }
                )
            };
            return Refusal::Misconfigured(ApiError::Configuration {
                message: format!("AOAI_REASONING_EFFORT={}: {why} ({message}).", configured.as_str()),
            });
        }
        if unrecognized {
            self.set(Learned::NotReasoning);
            return Refusal::Adjusted;
        }
        // The lowest listed value; if the list cannot be read, the next guess below or above.
        let next = accepted.first().copied().or(match sent {
            Effort::Minimal => Some(Effort::None),
            Effort::None => Some(Effort::Low),
            _ => None,
        });
        match next {
            Some(effort) if effort != sent => {
                self.set(Learned::Effort(effort));
                Refusal::Adjusted
            }
            _ => Refusal::Other,
        }
    }
}

/// The efforts in "... Supported values are: 'none', 'low', 'medium', and 'high'.", lowest first.
fn supported_values(message: &str) -> Vec<Effort> {
    let Some((_, list)) = message.split_once("upported values are") else { return Vec::new() };
    let mut efforts: Vec<Effort> = list.split('\'').skip(1).step_by(2).filter_map(Effort::parse).collect();
    efforts.sort();
    efforts.dedup();
    efforts
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEWER: &str = r#"{"error":{"message":"Unsupported value: 'reasoning_effort' does not support 'minimal' with this model. Supported values are: 'none', 'low', 'medium', and 'high'.","type":"invalid_request_error","param":"reasoning_effort","code":"unsupported_value"}}"#;
    const PLAIN: &str = r#"{"error":{"message":"Unrecognized request argument supplied: reasoning_effort","type":"invalid_request_error","param":null,"code":null}}"#;
    const AZURE_INVALID: &str = r#"{"error":{"message":"Invalid value: 'none'. Supported values are: 'low', 'medium', and 'high'.","type":"invalid_request_error","param":"reasoning_effort","code":"invalid_value"}}"#;

    #[test]
    fn learns_the_lowest_effort_from_the_refusal() {
        let policy = ReasoningPolicy::new(None);
        assert_eq!(policy.effort_to_send(), Some(Effort::Minimal));
        assert!(matches!(policy.refused(Some(Effort::Minimal), NEWER, "d"), Refusal::Adjusted));
        assert_eq!(policy.learned(), Learned::Effort(Effort::None));
        assert_eq!(policy.effort_to_send(), Some(Effort::None));
        let policy = ReasoningPolicy::new(None);
        assert!(matches!(policy.refused(Some(Effort::None), AZURE_INVALID, "d"), Refusal::Adjusted));
        assert_eq!(policy.effort_to_send(), Some(Effort::Low));
    }

    #[test]
    fn a_model_that_does_not_reason_gets_no_effort() {
        let policy = ReasoningPolicy::new(None);
        assert!(matches!(policy.refused(Some(Effort::Minimal), PLAIN, "d"), Refusal::Adjusted));
        assert_eq!(policy.effort_to_send(), None);
        // Other 400s are not about the effort.
        let policy = ReasoningPolicy::new(None);
        let other = r#"{"error":{"code":"BadRequest","message":"Model gpt-5-mini is enabled only for api versions 2024-12-01-preview and later"}}"#;
        assert!(matches!(policy.refused(Some(Effort::Minimal), other, "d"), Refusal::Other));
        assert!(matches!(policy.refused(None, PLAIN, "d"), Refusal::Other));
        policy.accepted(Some(Effort::Minimal));
        assert_eq!(policy.learned(), Learned::Effort(Effort::Minimal));
    }

    #[test]
    fn a_configured_effort_is_kept_and_a_refusal_names_the_setting() {
        let policy = ReasoningPolicy::new(Some(Effort::Minimal));
        assert_eq!(policy.effort_to_send(), Some(Effort::Minimal));
        let Refusal::Misconfigured(error) = policy.refused(Some(Effort::Minimal), NEWER, "chat") else { panic!() };
        let text = error.to_string();
        assert!(text.contains("AOAI_REASONING_EFFORT") && text.contains("none, low, medium, high"), "{text}");
        assert_eq!(policy.effort_to_send(), Some(Effort::Minimal));
    }
}
