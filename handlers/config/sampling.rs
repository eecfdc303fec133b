//! Trace sampling: `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`, read here (not by the
//! OpenTelemetry SDK) so that one parse decides both which traces are kept and the sample rate
//! Application Insights is told, which rescales its counts (a request kept at 0.25 counts 4).
//! Names are the standard ones (any case); a ratio outside 0..=1 fails start-up instead of
//! silently falling back to 1.0 as the SDK would.

use super::ConfigError;
use super::table::{OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG, echo};

/// Which traces are exported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceSampling {
    /// `parentbased_*`: a span with a parent follows the parent's sampled flag (the caller's
    /// `traceparent`); only root spans are decided by `ratio`.
    pub parent_based: bool,
    /// The share of traces kept, 0..=1 (`always_on` 1, `always_off` 0).
    pub ratio: f64,
}

impl Default for TraceSampling {
    /// The SDK's default: `parentbased_always_on`.
    fn default() -> Self {
        Self { parent_based: true, ratio: 1.0 }
    }
}

impl TraceSampling {
    /// What Application Insights is told each kept item stands for: the ratio when it is in
    /// (0, 1), else 1 (nothing is sent at 0).
    pub fn sample_rate(&self) -> f64 {
        if self.ratio > 0.0 && self.ratio < 1.0 { self.ratio } else { 1.0 }
    }
}

pub(super) fn sampling(get: &impl Fn(&str) -> Option<String>) -> Result<TraceSampling, ConfigError> {
    let Some(sampler) = OTEL_TRACES_SAMPLER.one_of(get)? else { return Ok(TraceSampling::default()) };
    let (parent_based, kind) = match sampler.strip_prefix("parentbased_") {
        Some(kind) => (true, kind),
        None => (false, sampler),
    };
    let ratio = match kind {
        "always_on" => 1.0,
        "always_off" => 0.0,
        _ => ratio(get)?,
    };
    Ok(TraceSampling { parent_based, ratio })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<TraceSampling, ConfigError> {
        let get = |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned());
        sampling(&get)
    }

    #[test]
    fn samplers_and_ratios() {
        assert_eq!(read(&[]).unwrap(), TraceSampling { parent_based: true, ratio: 1.0 });
        let quarter = read(&[("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0.25")]).unwrap();
        assert_eq!(quarter, TraceSampling { parent_based: false, ratio: 0.25 });
        assert_eq!(quarter.sample_rate(), 0.25);
        let parent =
            read(&[("OTEL_TRACES_SAMPLER", "ParentBased_TraceIdRatio"), ("OTEL_TRACES_SAMPLER_ARG", "0.1")]).unwrap();
        assert_eq!(parent, TraceSampling { parent_based: true, ratio: 0.1 });
        assert_eq!(read(&[("OTEL_TRACES_SAMPLER", "traceidratio")]).unwrap().ratio, 1.0);
        let off = read(&[("OTEL_TRACES_SAMPLER", "always_off"), ("OTEL_TRACES_SAMPLER_ARG", "junk")]).unwrap();
        assert_eq!((off.ratio, off.sample_rate()), (0.0, 1.0));
        assert_eq!(read(&[("OTEL_TRACES_SAMPLER", "always_on")]).unwrap().sample_rate(), 1.0);
    }

    #[test]
    fn bad_values_name_the_setting() {
        for arg in ["1.5", "-0.1", "half", "NaN"] {
            let error = read(&[("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", arg)]).unwrap_err();
            assert_eq!(error.setting, "OTEL_TRACES_SAMPLER_ARG", "{arg}");
            assert!(error.message.contains("0..=1"), "{}", error.message);
        }
        let error = read(&[("OTEL_TRACES_SAMPLER", "jaeger_remote")]).unwrap_err();
        assert_eq!(error.setting, "OTEL_TRACES_SAMPLER");
        assert!(error.message.contains("traceidratio"), "{}", error.message);
    }
}
