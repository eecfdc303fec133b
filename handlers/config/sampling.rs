//! Trace sampling: `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`, read here (not by the
//! OpenTelemetry SDK) so that one parse decides both which traces are kept and the sample rate
//! Application Insights is told, which rescales its counts (a request kept at 0.25 counts 4).
//! Names are the standard ones plus the Azure Monitor distros' two (`microsoft.rate_limited`,
//! `microsoft.fixed_percentage`), any case; an argument out of range fails start-up instead of
//! silently falling back as the SDK would.
//!
//! The default follows the exporter: with Application Insights export on, what the Azure Monitor
//! distros ship today (rate-limited, 5 traces per second per instance), because a batch of
//! thousands of documents is thousands of traces, each billed at ingestion and each costing the
//! handler CPU; else the OpenTelemetry SDK's `parentbased_always_on`.

use super::ConfigError;
use super::table::{APPLICATIONINSIGHTS_CONNECTION_STRING, OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG, echo};

/// The Azure Monitor distros' default rate: traces per second.
pub const DEFAULT_TRACES_PER_SECOND: f64 = 5.0;

/// Which traces are exported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TraceSampling {
    /// The OpenTelemetry samplers (`always_*`, `traceidratio`, `parentbased_*`): a root is kept
    /// by the SDK's `TraceIdRatioBased` rule at `ratio` (`always_on` 1, `always_off` 0).
    Ratio {
        /// `parentbased_*`: a span continuing a caller's trace follows the caller's sampled
        /// flag (its `traceparent`); only new traces are decided by `ratio`.
        parent_based: bool,
        ratio: f64,
    },
    /// `microsoft.fixed_percentage`: the Azure Monitor .NET exporter's rule (a DJB2 score of
    /// the trace id under `ratio`). A caller's sampled flag is not followed: it does not say at
    /// what rate.
    FixedPercentage { ratio: f64 },
    /// `microsoft.rate_limited`: about this many traces per second per instance, the kept
    /// share adapting to the traffic (and told to Application Insights with each item).
    RateLimited { per_second: f64 },
}

impl Default for TraceSampling {
    /// The SDK's default: `parentbased_always_on`.
    fn default() -> Self {
        Self::Ratio { parent_based: true, ratio: 1.0 }
    }
}

impl std::fmt::Display for TraceSampling {
    /// As the settings would say it, e.g. `microsoft.rate_limited 5/s` (for the start-up line).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Ratio { parent_based, ratio } => {
                let parent = if parent_based { "parentbased_" } else { "" };
                match ratio {
                    r if r >= 1.0 => write!(f, "{parent}always_on"),
                    r if r <= 0.0 => write!(f, "{parent}always_off"),
                    r => write!(f, "{parent}traceidratio {r}"),
                }
            }
            Self::FixedPercentage { ratio } => write!(f, "microsoft.fixed_percentage {ratio}"),
            Self::RateLimited { per_second } => write!(f, "microsoft.rate_limited {per_second}/s"),
        }
    }
}

pub(super) fn sampling(get: &impl Fn(&str) -> Option<String>) -> Result<TraceSampling, ConfigError> {
    let Some(sampler) = OTEL_TRACES_SAMPLER.one_of(get)? else {
        return Ok(if APPLICATIONINSIGHTS_CONNECTION_STRING.text(get)?.is_some() {
            TraceSampling::RateLimited { per_second: DEFAULT_TRACES_PER_SECOND }
        } else {
            TraceSampling::default()
        });
    };
    match sampler {
        "microsoft.rate_limited" => Ok(TraceSampling::RateLimited { per_second: per_second(get)? }),
        "microsoft.fixed_percentage" => Ok(TraceSampling::FixedPercentage { ratio: ratio(get)? }),
        _ => {
            let (parent_based, kind) = match sampler.strip_prefix("parentbased_") {
                Some(kind) => (true, kind),
                None => (false, sampler),
            };
            let ratio = match kind {
                "always_on" => 1.0,
                "always_off" => 0.0,
                _ => ratio(get)?,
            };
            Ok(TraceSampling::Ratio { parent_based, ratio })
        }
    }
}

/// `OTEL_TRACES_SAMPLER_ARG` for the ratio samplers: 1.0 when absent, as the specification says.
fn ratio(get: &impl Fn(&str) -> Option<String>) -> Result<f64, ConfigError> {
    let Some(text) = OTEL_TRACES_SAMPLER_ARG.text(get)? else { return Ok(1.0) };
    text.parse::<f64>().ok().filter(|r| (0.0..=1.0).contains(r)).ok_or_else(|| {
        ConfigError::new(
            OTEL_TRACES_SAMPLER_ARG.name,
            format!("must be a number in 0..=1 (the share of traces kept), got `{}`", echo(&text)),
        )
    })
}

/// `OTEL_TRACES_SAMPLER_ARG` for `microsoft.rate_limited`: traces per second, 5 when absent.
fn per_second(get: &impl Fn(&str) -> Option<String>) -> Result<f64, ConfigError> {
    let Some(text) = OTEL_TRACES_SAMPLER_ARG.text(get)? else { return Ok(DEFAULT_TRACES_PER_SECOND) };
    text.parse::<f64>().ok().filter(|r| r.is_finite() && *r >= 0.0).ok_or_else(|| {
        ConfigError::new(
            OTEL_TRACES_SAMPLER_ARG.name,
            format!("must be a number >= 0 (traces per second kept by microsoft.rate_limited), got `{}`", echo(&text)),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<TraceSampling, ConfigError> {
        let get = |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned());
        sampling(&get)
    }

    #[test]
    fn samplers_and_ratios() {
        assert_eq!(read(&[]).unwrap(), TraceSampling::Ratio { parent_based: true, ratio: 1.0 });
        let quarter = read(&[("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0.25")]).unwrap();
        assert_eq!(quarter, TraceSampling::Ratio { parent_based: false, ratio: 0.25 });
        let parent =
            read(&[("OTEL_TRACES_SAMPLER", "ParentBased_TraceIdRatio"), ("OTEL_TRACES_SAMPLER_ARG", "0.1")]).unwrap();
        assert_eq!(parent, TraceSampling::Ratio { parent_based: true, ratio: 0.1 });
        assert_eq!(
            read(&[("OTEL_TRACES_SAMPLER", "traceidratio")]).unwrap(),
            TraceSampling::Ratio { parent_based: false, ratio: 1.0 }
        );
        let off = read(&[("OTEL_TRACES_SAMPLER", "always_off"), ("OTEL_TRACES_SAMPLER_ARG", "junk")]).unwrap();
        assert_eq!(off, TraceSampling::Ratio { parent_based: false, ratio: 0.0 });
        let fixed =
            read(&[("OTEL_TRACES_SAMPLER", "microsoft.fixed_percentage"), ("OTEL_TRACES_SAMPLER_ARG", "0.5")]).unwrap();
        assert_eq!(fixed, TraceSampling::FixedPercentage { ratio: 0.5 });
        let rate =
            read(&[("OTEL_TRACES_SAMPLER", "Microsoft.Rate_Limited"), ("OTEL_TRACES_SAMPLER_ARG", "0.5")]).unwrap();
        assert_eq!(rate, TraceSampling::RateLimited { per_second: 0.5 });
        let rate =
            read(&[("OTEL_TRACES_SAMPLER", "microsoft.rate_limited"), ("OTEL_TRACES_SAMPLER_ARG", "100")]).unwrap();
        assert_eq!(rate, TraceSampling::RateLimited { per_second: 100.0 });
        assert_eq!(
            read(&[("OTEL_TRACES_SAMPLER", "microsoft.rate_limited")]).unwrap(),
            TraceSampling::RateLimited { per_second: 5.0 }
        );
    }

    #[test]
    fn with_application_insights_the_default_is_the_distros_rate_limit() {
        let connection =
            ("APPLICATIONINSIGHTS_CONNECTION_STRING", "InstrumentationKey=00000000-0000-4000-8000-000000000000");
        assert_eq!(read(&[connection]).unwrap(), TraceSampling::RateLimited { per_second: 5.0 });
        // A sampler that is set wins.
        let every = read(&[connection, ("OTEL_TRACES_SAMPLER", "parentbased_always_on")]).unwrap();
        assert_eq!(every, TraceSampling::default());
    }

    #[test]
    fn the_start_up_line_names_the_sampler_as_set() {
        assert_eq!(TraceSampling::RateLimited { per_second: 5.0 }.to_string(), "microsoft.rate_limited 5/s");
        assert_eq!(TraceSampling::default().to_string(), "parentbased_always_on");
        assert_eq!(TraceSampling::Ratio { parent_based: false, ratio: 0.25 }.to_string(), "traceidratio 0.25");
        assert_eq!(TraceSampling::FixedPercentage { ratio: 1.0 }.to_string(), "microsoft.fixed_percentage 1");
    }

    #[test]
    fn bad_values_name_the_setting() {
        for sampler in ["traceidratio", "microsoft.fixed_percentage"] {
            for arg in ["1.5", "-0.1", "half", "NaN"] {
                let error = read(&[("OTEL_TRACES_SAMPLER", sampler), ("OTEL_TRACES_SAMPLER_ARG", arg)]).unwrap_err();
                assert_eq!(error.setting, "OTEL_TRACES_SAMPLER_ARG", "{arg}");
                assert!(error.message.contains("0..=1"), "{}", error.message);
            }
        }
        for arg in ["-1", "inf", "NaN", "five"] {
            let error = read(&[("OTEL_TRACES_SAMPLER", "microsoft.rate_limited"), ("OTEL_TRACES_SAMPLER_ARG", arg)])
                .unwrap_err();
            assert_eq!(error.setting, "OTEL_TRACES_SAMPLER_ARG", "{arg}");
            assert!(error.message.contains(">= 0"), "{}", error.message);
        }
        let error = read(&[("OTEL_TRACES_SAMPLER", "jaeger_remote")]).unwrap_err();
        assert_eq!(error.setting, "OTEL_TRACES_SAMPLER");
        assert!(error.message.contains("microsoft.rate_limited"), "{}", error.message);
    }
}
