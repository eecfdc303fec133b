//! The token cache of one scope: single flight, refresh in the background, shared failures with
//! backoff, deadlines, refused tokens (the guarantees are listed in `mod.rs`).
//!
//! Every fetch runs as its own task, so a caller that reaches its deadline stops waiting without
//! cancelling the fetch the others wait on. Its result is published on a `watch` channel and
//! recorded in [`State`] in one critical section, so a caller sees either the fetch in flight or
//! its outcome, never neither. The lock is a `std` mutex never held across an await.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use azure_core::time::OffsetDateTime;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::credential::CredentialSource;
use super::diagnose::classify;
use super::{BearerToken, FETCH_LIMIT};
use crate::config::CredentialKind;
use crate::error::ApiError;

/// The first pause after a failed fetch; it doubles with each further failure.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest pause between fetches while they keep failing.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Refused tokens remembered (as SHA-256 digests) so that they are never handed out again.
const REFUSED_KEPT: usize = 16;

type Outcome = Result<BearerToken, ApiError>;

struct Cached {
    token: BearerToken,
    /// From here on, the next caller starts a refresh in the background.
    refresh_at: Instant,
    /// From here on, the token is not handed out any more: it could expire in flight.
    usable_until: Instant,
}

#[derive(Default)]
struct State {
    current: Option<Cached>,
    /// The fetch in flight: its outcome arrives here.
    fetch: Option<watch::Receiver<Option<Outcome>>>,
    /// Consecutive failed fetches.
    failures: u32,
    /// The last failure, when it happened, and when the next fetch may start.
    last_failure: Option<(Instant, ApiError)>,
    next_attempt: Option<Instant>,
    refused: VecDeque<[u8; 32]>,
}

/// What a caller does next, decided under the lock.
enum Step {
    Ready(BearerToken),
    Fail(ApiError),
    Join(watch::Receiver<Option<Outcome>>),
    SleepUntil(Instant),
}

pub(crate) struct ScopeCache {
    scope: Arc<str>,
    source: Arc<CredentialSource>,
    state: Mutex<State>,
}

impl ScopeCache {
    pub(crate) fn new(scope: &str, source: Arc<CredentialSource>) -> Self {
        Self { scope: Arc::from(scope), source, state: Mutex::new(State::default()) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A usable token, waiting for a fetch no later than `deadline`.
    pub(crate) async fn token(self: &Arc<Self>, deadline: Instant) -> Result<BearerToken, ApiError> {
        let asked_at = Instant::now();
        loop {
            match self.next_step(asked_at, deadline) {
                Step::Ready(token) => return Ok(token),
                Step::Fail(error) => return Err(error),
                Step::Join(outcome) => return self.wait(outcome, asked_at, deadline).await,
                Step::SleepUntil(at) => tokio::time::sleep_until(at.into()).await,
            }
        }
    }

    fn next_step(self: &Arc<Self>, asked_at: Instant, deadline: Instant) -> Step {
        let mut state = self.lock();
        let now = Instant::now();
        if let Some(cached) = &state.current
            && now < cached.usable_until
        {
            let token = cached.token.clone();
            let due = now >= cached.refresh_at;
            if due && state.fetch.is_none() && state.next_attempt.is_none_or(|at| now >= at) {
                // Refresh in the background; this caller and the others keep the current token.
                self.start_fetch(&mut state);
            }
            return Step::Ready(token);
        }
        if let Some(fetch) = &state.fetch {
            return Step::Join(fetch.clone());
        }
        // A fetch failed while this caller slept towards the next attempt: share that failure.
        if let Some((failed_at, error)) = &state.last_failure
            && *failed_at > asked_at
        {
            return Step::Fail(error.clone());
        }
        if let Some(at) = state.next_attempt.filter(|at| *at > now) {
            if at >= deadline {
                return Step::Fail(self.backing_off(&state, at - now));
            }
            return Step::SleepUntil(at);
        }
        Step::Join(self.start_fetch(&mut state))
    }

    /// The last failure, saying when the next attempt is due.
    fn backing_off(&self, state: &State, wait: Duration) -> ApiError {
        let next = format!(
            " (after {} failed attempts in a row; the next attempt is in {} s, after this call's deadline)",
            state.failures,
            wait.as_secs_f64().ceil()
        );
        match state.last_failure.as_ref().map(|(_, e)| e.clone()) {
            Some(ApiError::UpstreamUnavailable { message }) => {
                ApiError::UpstreamUnavailable { message: message + &next }
            }
            Some(ApiError::UpstreamAuthFailed { message, transient }) => {
                ApiError::UpstreamAuthFailed { message: message + &next, transient }
            }
            Some(other) => other,
            None => {
                ApiError::UpstreamUnavailable { message: format!("{} is backing off{next}", self.source.description()) }
            }
        }
    }

    async fn wait(
        &self,
        mut outcome: watch::Receiver<Option<Outcome>>,
        asked_at: Instant,
        deadline: Instant,
    ) -> Result<BearerToken, ApiError> {
        let arrived = tokio::time::timeout_at(deadline.into(), outcome.wait_for(Option::is_some)).await;
        match arrived {
            Ok(Ok(result)) => match &*result {
                Some(outcome) => outcome.clone(),
                None => Err(ApiError::internal("the token fetch ended without a result")),
            },
            Ok(Err(_)) => Err(ApiError::internal("the token fetch ended without a result")),
            Err(_) => {
                let hint = if self.source.kind() == CredentialKind::ManagedIdentity {
                    "the identity endpoint has not answered"
                } else {
                    "is the CLI waiting for input or for the network? Run it in a terminal to see"
                };
                Err(ApiError::UpstreamUnavailable {
                    message: format!(
                        "{} did not return a token for {} before this call's deadline (waited {:.1} s; {hint}). The fetch goes on in the background for up to {} s.",
                        self.source.description(),
                        self.scope,
                        asked_at.elapsed().as_secs_f64(),
                        FETCH_LIMIT.as_secs()
                    ),
                })
            }
        }
    }

    /// Starts the one fetch (the caller holds the lock and has checked none is in flight).
    fn start_fetch(self: &Arc<Self>, state: &mut State) -> watch::Receiver<Option<Outcome>> {
        let (publish, outcome) = watch::channel(None);
        state.fetch = Some(outcome.clone());
        let this = self.clone();
        tokio::spawn(async move {
            let result = this.fetch().await;
            let _ = publish.send(Some(result));
        });
        outcome
    }

    /// One real fetch; records its outcome (and ends the in-flight state) before returning it.
    async fn fetch(&self) -> Outcome {
        let started = Instant::now();
        let answer = tokio::time::timeout(FETCH_LIMIT, self.source.get_token(&self.scope)).await;
        let description = self.source.description();
        let fetched = match answer {
            Ok(Ok(access)) => Ok(access),
            Ok(Err(e)) => Err(classify(self.source.kind(), description, &self.scope, &e)),
            Err(_) => Err(ApiError::UpstreamUnavailable {
                message: format!(
                    "{description} did not return a token for {} within {} s",
                    self.scope,
                    FETCH_LIMIT.as_secs()
                ),
            }),
        };
        let mut state = self.lock();
        state.fetch = None;
        let now = Instant::now();
        let result = fetched.and_then(|access| {
            let lifetime: Duration = (access.expires_on - OffsetDateTime::now_utc()).try_into().unwrap_or(Duration::ZERO);
            let token = BearerToken { secret: Arc::from(access.token.secret()), scope: self.scope.clone() };
            if state.refused.contains(&digest(&token)) {
                return Err(ApiError::UpstreamAuthFailed {
                    message: format!(
                        "{description} returned the token for {} that the service already refused (the source caches it). {}",
                        self.scope,
                        if self.source.kind() == CredentialKind::ManagedIdentity {
                            "Check the role assignment and the app's identity; a new token is issued when this one nears expiry."
                        } else {
                            "Run `az account clear` and `az login` to get a new one."
                        }
                    ),
                    transient: true,
                });
            }
            // `expires_on` is whole seconds, rounded down: the real expiry is up to a second later.
            let expires_at = now + lifetime;
            let usable_until = expires_at - (lifetime / 40).min(Duration::from_secs(30));
            if now >= usable_until {
                return Err(ApiError::UpstreamAuthFailed {
                    message: format!(
                        "{description} returned a token that has already expired (check the machine's clock)"
                    ),
                    transient: true,
                });
            }
            Ok((token, lifetime, expires_at, usable_until))
        });
        match result {
            Ok((token, lifetime, expires_at, usable_until)) => {
                state.failures = 0;
                state.last_failure = None;
                state.next_attempt = None;
                let already_held = state.current.as_ref().is_some_and(|c| c.token.same_as(&token));
                let refresh_at = if already_held {
                    // The source answered from its own cache (the CLI's MSAL cache, the platform's
                    // identity endpoint): ask again halfway to the end of this token's use.
                    tracing::info!(credential = %description, scope = %self.scope, "the credential returned the token already held; asking again later");
                    now + usable_until.saturating_duration_since(now) / 2
                } else {
                    tracing::info!(credential = %description, scope = %self.scope, lifetime_s = lifetime.as_secs(), fetch_ms = started.elapsed().as_millis() as u64, "acquired an Entra token");
                    // Refresh with a quarter of the life left, at most five minutes early.
                    expires_at - (lifetime / 4).min(Duration::from_secs(300))
                };
                state.current = Some(Cached { token: token.clone(), refresh_at, usable_until });
                Ok(token)
            }
            Err(error) => {
                state.failures = state.failures.saturating_add(1);
                let pause = BACKOFF_FIRST.saturating_mul(1 << (state.failures - 1).min(5)).min(BACKOFF_MAX);
                state.next_attempt = Some(now + pause);
                state.last_failure = Some((now, error.clone()));
                let still_valid = state.current.as_ref().is_some_and(|c| now < c.usable_until);
                tracing::warn!(
                    credential = %description,
                    scope = %self.scope,
                    failures = state.failures,
                    next_attempt_in_ms = pause.as_millis() as u64,
                    current_token_still_valid = still_valid,
                    error = %error,
                    "token fetch failed"
                );
                Err(error)
            }
        }
    }

    /// Drops `token` after the service refused it, and remembers it so it is never handed out again.
    pub(crate) fn invalidate(&self, token: &BearerToken) {
        let mut state = self.lock();
        if state.current.as_ref().is_some_and(|c| c.token.same_as(token)) {
            state.current = None;
        }
        let digest = digest(token);
        if !state.refused.contains(&digest) {
            if state.refused.len() == REFUSED_KEPT {
                state.refused.pop_front();
            }
            state.refused.push_back(digest);
        }
    }
}

fn digest(token: &BearerToken) -> [u8; 32] {
    Sha256::digest(token.secret().as_bytes()).into()
}
