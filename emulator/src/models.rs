//! The models behind the emulator's deployments and what each one accepts, as Azure OpenAI
//! documents them (sources in docs/troubleshooting.md and the `today` note):
//!
//! - non-reasoning chat models (gpt-4o / gpt-4.1 family) take `temperature`, `max_tokens` and
//!   the rest, and reject `reasoning_effort` ("Unrecognized request argument supplied");
//! - gpt-5 / -mini / -nano: reasoning, efforts `minimal`..`high`, default `medium`;
//! - gpt-5.1 and later: reasoning, efforts `none`, `low`..`high` (`minimal` rejected), default `none`.
//!
//! Reasoning models reject `max_tokens`, `temperature` other than 1, `top_p`, penalties and
//! `logprobs` with 400, count hidden reasoning tokens inside `max_completion_tokens`, and are
//! served on the dated route only from api-version 2024-12-01-preview.
//!
//! A deployment's model is found by its name (deployments are usually named after their model,
//! as `infra/main.bicep` does), or set explicitly with [`crate::EmulatorConfig::deployment_models`].

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
        Effort::ALL.into_iter().find(|e| e.as_str() == value)
    }

    /// Hidden reasoning tokens the emulator spends at this effort (fixed, so tests are
    /// deterministic). `medium` is more than a classify call's whole budget of about 50 tokens,
    /// which is how a real gpt-5-mini starves a label when no effort is sent.
    pub fn reasoning_tokens(self) -> u64 {
        match self {
            Effort::None => 0,
            Effort::Minimal => 8,
            Effort::Low => 96,
            Effort::Medium => 384,
            Effort::High => 1536,
        }
    }
}

/// How a reasoning model reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reasoning {
    /// Accepted `reasoning_effort` values, lowest first.
    pub efforts: &'static [Effort],
    /// The effort used when the request names none.
    pub default: Effort,
}

/// One model version as deployed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelProfile {
    /// The model name (`gpt-5-mini`).
    pub name: String,
    /// The model version (`2025-08-07`).
    pub version: String,
    /// `None` for a model that does not reason.
    pub reasoning: Option<Reasoning>,
}

/// gpt-5, gpt-5-mini, gpt-5-nano.
const GPT5: Reasoning =
    Reasoning { efforts: &[Effort::Minimal, Effort::Low, Effort::Medium, Effort::High], default: Effort::Medium };
/// gpt-5.1 and later.
const GPT51: Reasoning =
    Reasoning { efforts: &[Effort::None, Effort::Low, Effort::Medium, Effort::High], default: Effort::None };

/// The models the emulator knows: (name, version, reasoning).
const CATALOG: &[(&str, &str, Option<Reasoning>)] = &[
    ("gpt-4o-mini", "2024-07-18", None),
    ("gpt-4o", "2024-11-20", None),
    ("gpt-4.1-mini", "2025-04-14", None),
    ("gpt-4.1-nano", "2025-04-14", None),
    ("gpt-4.1", "2025-04-14", None),
    ("gpt-5-mini", "2025-08-07", Some(GPT5)),
    ("gpt-5-nano", "2025-08-07", Some(GPT5)),
    ("gpt-5", "2025-08-07", Some(GPT5)),
    ("gpt-5.1", "2025-11-13", Some(GPT51)),
    ("gpt-5.2", "2025-12-11", Some(GPT51)),
    ("gpt-5.4-mini", "2026-03-17", Some(GPT51)),
    ("gpt-5.4-nano", "2026-03-17", Some(GPT51)),
    ("gpt-5.4", "2026-03-05", Some(GPT51)),
];

/// The first dated api-version that serves reasoning models.
pub const REASONING_MIN_API_VERSION: &str = "2024-12-01-preview";

impl ModelProfile {
    /// The catalog model called `name`, if the emulator knows it.
    pub fn known(name: &str) -> Option<ModelProfile> {
        CATALOG.iter().find(|(n, _, _)| *n == name).map(|(n, v, r)| ModelProfile {
            name: (*n).to_owned(),
            version: (*v).to_owned(),
            reasoning: *r,
        })
    }

    /// A non-reasoning model reported as `reported` (`name-version`), for a deployment the
    /// catalog does not know.
    pub fn plain(reported: &str) -> ModelProfile {
        let (name, version) = match reported.len().checked_sub(11) {
            Some(at) if reported.is_char_boundary(at) && reported[at..].starts_with('-') => {
                (reported[..at].to_owned(), reported[at + 1..].to_owned())
            }
            _ => (reported.to_owned(), String::new()),
        };
        ModelProfile { name, version, reasoning: None }
    }

    /// The `model` field of a completion: `gpt-5-mini-2025-08-07`.
    pub fn reported_name(&self) -> String {
        if self.version.is_empty() { self.name.clone() } else { format!("{}-{}", self.name, self.version) }
    }

    pub fn reasons(&self) -> bool {
        self.reasoning.is_some()
    }

    /// Whether a dated api-version serves this model (the `v1` route serves every model).
    pub fn serves_api_version(&self, api_version: &str) -> bool {
        // Dated versions sort by their date prefix; `-preview` of the same date counts as it.
        !self.reasons() || date_of(api_version) >= date_of(REASONING_MIN_API_VERSION)
    }
}

fn date_of(api_version: &str) -> &str {
    api_version.get(..10).unwrap_or(api_version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_and_gate() {
        let mini = ModelProfile::known("gpt-5-mini").unwrap();
        assert_eq!(mini.reported_name(), "gpt-5-mini-2025-08-07");
        assert_eq!(mini.reasoning.unwrap().efforts[0], Effort::Minimal);
        let newer = ModelProfile::known("gpt-5.4-mini").unwrap();
        assert!(!newer.reasoning.unwrap().efforts.contains(&Effort::Minimal));
        assert!(!mini.serves_api_version("2024-10-21") && mini.serves_api_version("2024-12-01-preview"));
        assert!(mini.serves_api_version("2025-04-01-preview"));
        let plain = ModelProfile::plain("gpt-4o-mini-2024-07-18");
        assert_eq!((plain.name.as_str(), plain.version.as_str()), ("gpt-4o-mini", "2024-07-18"));
        assert!(plain.serves_api_version("2024-10-21"));
        assert_eq!(ModelProfile::plain("custom").reported_name(), "custom");
    }
}
