//! The consumer registry: definitions live in MongoDB (`consumers`), the
//! running tasks in the gateway's `ConsumerSupervisor`.
//!
//! Every replica reconciles the two every `RECONCILE_EVERY`: it starts the
//! stored consumers it does not run, stops the ones no longer stored, and
//! pauses or resumes each as its stored `paused` flag says, and applies a
//! definition whose `revision` is newer than the one it runs. That alone
//! gives restart recovery (the first pass runs at start-up; a paused
//! consumer is registered paused and never consumes) and convergence
//! across replicas within seconds, with no extra broadcast to keep
//! consistent. A local create, delete, pause, resume or update takes
//! effect at once. A pass reads every definition only when the change
//! mark (`changes`) says the store moved since the last full read, or
//! every `changes::FULL_READ_EVERY`.
//!
//! The views it answers with carry each consumer's counters summed over
//! the live replicas (`crate::fleet`): this replica's live numbers plus
//! the others' from their latest heartbeats.

mod cap;
mod changes;
pub mod sealed;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use gateway::consumer::{ConsumerState, ConsumerStats};
use gateway::{
    BatchPolicy, BatchPolicyError, CircuitBreakerPolicy, CircuitBreakerPolicyError,
    CircuitSnapshot, Concurrency, ConsumerId, ConsumerSpec, ConsumerSupervisor, DeliveryTarget,
    Flow, KeySource, MissingKey, OrderingError, OrderingPolicy, QueueName, RatePerSec, RetryPolicy,
    RetryPolicyError,
};
use mongodb::bson::{doc, DateTime};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::fleet::{ConsumerCounts, FleetStats, OtherReplicas, OwnShare, ReplicaView};
use crate::forwarder::{AttemptDetail, HttpForwarder};
use crate::replicas::{ConsumerCounters, ReplicaRecords};
use crate::ruled::{OnRuleError, RuledTarget};
use crate::signing::SigningView;
use crate::targets::{BuiltinHandler, TargetSpec};
use crate::{FieldError, Store, StoreContext, StoreError};
use rules::ConsumerRules;

/// How often each replica compares the stored consumers with the ones it runs, and starts or stops
/// the difference.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(2);
/// `ORDERED_MAX_HOLD_MS`' default: 15 minutes, half RabbitMQ's default
/// consumer timeout, so a held delivery is never taken back by the broker.
pub const DEFAULT_ORDERED_MAX_HOLD: Duration = Duration::from_secs(15 * 60);
/// A consumer deleted here is not restarted by a reconcile pass that read
/// the store just before the delete.
const TOMBSTONE_TTL: Duration = Duration::from_secs(30);

/// A consumer as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerDefinition {
    /// A UUID the gateway minted; the same on every replica.
    #[serde(rename = "_id")]
    pub consumer_id: String,
    /// The operator's label for it; not unique.
    pub consumer_name: String,
    /// The main queue it consumes.
    pub queue_name: String,
    /// Where it hands its deliveries.
    pub target: TargetSpec,
    /// How many unacked deliveries the broker may send ahead of the acks, per replica.
    pub prefetch: u16,
    /// How failures are retried, and when they are dead-lettered instead.
    pub retry: RetryPolicy,
    /// Needed in clear to sign; stored sealed under `SECRETS_KEY`
    /// (`sealed`), never returned by the API, never logged, never in `Debug`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "credentials::secret_serde::expose_option"
    )]
    pub signing_secret: Option<SecretString>,
    /// The secret the last `/rotateSigningSecret` replaced, which requests
    /// are also signed with until `previous_signing_expires_at`; kept as
    /// `signing_secret` is.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "credentials::secret_serde::expose_option"
    )]
    pub previous_signing_secret: Option<SecretString>,
    /// When `previous_signing_secret` stops being valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_signing_expires_at: Option<DateTime>,
    /// When it was created; listings are in this order.
    pub created_at: DateTime,
    /// Paused through `/pauseConsumer`: no replica takes its deliveries.
    /// Absent in definitions stored before pausing existed.
    #[serde(default)]
    pub paused: bool,
    /// Target calls at once per replica; absent: the prefetch. Absent in
    /// definitions stored before limits existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u16>,
    /// Deliveries started per second by all replicas together; absent: no
    /// limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_sec: Option<f64>,
    /// `None` (stored `null`, or absent in definitions stored before the
    /// breaker existed): no breaker.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreakerPolicy>,
    /// Bumped by every `/updateConsumer`; a replica running an older one
    /// applies the stored definition. Absent (0) in definitions stored
    /// before updates existed.
    #[serde(default)]
    pub revision: u64,
    /// Batch delivery; absent: one request per delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSettings>,
    /// Whether its attempts are recorded, and with the answer's body;
    /// absent: both on (as far as `ATTEMPT_LOG` allows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_log: Option<AttemptLogSettings>,
    /// Ordered delivery per key; absent: deliveries go as they come.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<OrderingSettings>,
    /// A CEL expression over the message that says whether it goes to the
    /// target; absent: every message does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// A CEL expression yielding `{body?, headers?}`: what is sent in place
    /// of the message as it came; absent: the message as it came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<String>,
    /// What becomes of a message a rule fails on; absent: dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_rule_error: Option<OnRuleError>,
}

/// An ordered consumer's settings as stored and shown; the engine runs the
/// checked `OrderingPolicy` made of them (`ConsumerDefinition::ordering`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderingSettings {
    /// Where each message's key is read: exactly one of the two.
    pub key: OrderingKeySettings,
    /// What becomes of a message without a key.
    pub missing_key: MissingKeyName,
}

/// Where an ordered consumer reads each message's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderingKeySettings {
    /// A message header, by its exact name (a string or a whole number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A JSON pointer into the payload (RFC 6901, starting with `/`): a
    /// string, number or boolean there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_pointer: Option<String>,
}

/// What becomes of an ordered consumer's message without a key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MissingKeyName {
    /// Delivered at once, waiting for no other message.
    #[default]
    Unordered,
    /// Dead-lettered with the reason (`ordering_key`).
    DeadLetter,
}

impl OrderingSettings {
    /// The policy the engine runs, its key source checked; `max_hold` is
    /// `ORDERED_MAX_HOLD_MS`.
    pub fn policy(&self, max_hold: Duration) -> Result<OrderingPolicy, FieldError> {
        let key = match (&self.key.header, &self.key.json_pointer) {
            (Some(header), None) => KeySource::header(header).map_err(|e| (e, "header")),
            (None, Some(pointer)) => {
                KeySource::json_pointer(pointer).map_err(|e| (e, "jsonPointer"))
            }
            _ => Err((OrderingError::KeySource, "")),
        }
        .map_err(|(err, field)| {
            FieldError::new(field, err.to_string())
                .within("key")
                .within("ordering")
        })?;
        Ok(OrderingPolicy {
            key,
            missing_key: match self.missing_key {
                MissingKeyName::Unordered => MissingKey::Unordered,
                MissingKeyName::DeadLetter => MissingKey::DeadLetter,
            },
            max_hold,
        })
    }
}

/// A consumer's part in delivery history: whether each attempt leaves a
/// record, and whether the record keeps the start of the answer's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptLogSettings {
    /// Record each attempt. Default true.
    pub enabled: bool,
    /// Keep the first `ATTEMPT_BODY_BYTES` of each answer. Default true.
    pub response_body: bool,
}

impl Default for AttemptLogSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            response_body: true,
        }
    }
}

/// A batch consumer's settings as stored and shown; the engine runs the
/// checked `BatchPolicy` made of them (`ConsumerDefinition::batch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchSettings {
    /// Most messages in one request.
    pub max_messages: u64,
    /// Longest the oldest message of a batch waits for the batch to fill.
    pub max_wait_ms: u64,
}

impl ConsumerDefinition {
    /// The concurrency and rate limit as the engine runs them, checked:
    /// the store is outside this process.
    pub fn limits(&self) -> Result<(Concurrency, Option<RatePerSec>), FieldError> {
        let prefetch = self.prefetch.max(1);
        let concurrency = match self.concurrency {
            Some(value) => Concurrency::within(value, prefetch)
                .map_err(|e| FieldError::new("concurrency", e.to_string()))?,
            None => Concurrency::of_prefetch(prefetch),
        };
        let rate = self
            .rate_limit_per_sec
            .map(RatePerSec::new)
            .transpose()
            .map_err(|e| FieldError::new("rateLimitPerSec", e.to_string()))?;
        Ok((concurrency, rate))
    }

    /// The batch policy as the engine runs it, checked against the
    /// prefetch: the store is outside this process.
    pub fn batch(&self) -> Result<Option<BatchPolicy>, FieldError> {
        let Some(settings) = self.batch else {
            return Ok(None);
        };
        if !matches!(self.target, TargetSpec::Http(_)) {
            return Err(FieldError::new(
                "batch",
                "batch delivery is for HTTP targets; a built-in handler takes one message at a time",
            ));
        }
        BatchPolicy::new(
            settings.max_messages,
            settings.max_wait_ms,
            self.prefetch.max(1),
        )
        .map(Some)
        .map_err(batch_field_error)
    }

    /// The ordering as the engine runs it, checked, with the hold limit
    /// `max_hold`: the store is outside this process.
    pub fn ordering(&self, max_hold: Duration) -> Result<Option<OrderingPolicy>, FieldError> {
        let Some(settings) = &self.ordering else {
            return Ok(None);
        };
        if self.batch.is_some() {
            return Err(FieldError::new(
                "ordering",
                "ordered delivery cannot be combined with batch delivery (`batch`); turn one off",
            ));
        }
        settings.policy(max_hold).map(Some)
    }

    /// The filter and transform compiled, checked against the target and
    /// the batch setting; `None` when it has neither.
    pub fn rules(&self) -> Result<Option<ConsumerRules>, FieldError> {
        if self.filter.is_none() && self.transform.is_none() {
            return Ok(None);
        }
        if self.batch.is_some() {
            let field = if self.filter.is_some() {
                "filter"
            } else {
                "transform"
            };
            return Err(FieldError::new(
                field,
                "rules cannot be combined with batch delivery (`batch`) yet; turn one off",
            ));
        }
        ConsumerRules::compile(
            self.filter.as_deref(),
            self.transform.as_deref(),
            self.target_has_auth(),
        )
        .map(Some)
        .map_err(|err| FieldError::new(err.field.as_str(), err.describe()))
    }

    /// Whether the target authenticates on its own (`target.auth`): then a
    /// transform may not set `authorization` either.
    pub fn target_has_auth(&self) -> bool {
        matches!(&self.target, TargetSpec::Http(http) if http.auth.is_some())
    }

    fn flow(&self) -> Flow {
        if self.paused {
            Flow::Paused
        } else {
            Flow::Consuming
        }
    }
}

/// A consumer as `/getConsumers` shows it: no secret, header values hidden.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerView {
    /// A UUID the gateway minted; the same on every replica.
    pub consumer_id: String,
    /// The operator's label for it; not unique.
    pub consumer_name: String,
    /// The main queue it consumes.
    pub queue_name: String,
    /// Where it hands its deliveries, header values hidden.
    pub target: TargetSpec,
    /// How many unacked deliveries the broker may send ahead of the acks, per replica.
    pub prefetch: u16,
    /// How failures are retried, and when they are dead-lettered instead.
    pub retry: RetryPolicy,
    /// Target calls at once per replica (the prefetch unless set lower).
    pub concurrency: u16,
    /// Deliveries started per second by all replicas together; `null`: no
    /// limit.
    pub rate_limit_per_sec: Option<f64>,
    /// `null` when the consumer has no circuit breaker.
    pub circuit_breaker: Option<CircuitBreakerPolicy>,
    /// `null`: one request per delivery.
    pub batch: Option<BatchSettings>,
    /// Whether its attempts are recorded (`ATTEMPT_LOG` may still turn
    /// recording off for all).
    pub attempt_log: AttemptLogSettings,
    /// `null`: deliveries go as they come; else one key at a time, in order.
    pub ordering: Option<OrderingSettings>,
    /// The CEL filter; `null`: every message goes to the target.
    pub filter: Option<String>,
    /// The CEL transform; `null`: messages go as they came.
    pub transform: Option<String>,
    /// What becomes of a message a rule fails on.
    pub on_rule_error: OnRuleError,
    /// Whether requests to the target carry a signature; the secret itself is never shown.
    pub signed: bool,
    /// `null` when unsigned; else the fingerprints of the secrets requests
    /// are signed with.
    pub signing: Option<SigningView>,
    /// What it is doing on the answering replica.
    pub state: ConsumerState,
    /// This replica's circuit; `null` without a breaker.
    pub circuit: Option<CircuitSnapshot>,
    /// Summed over the live replicas, each one's share in `replicas`.
    pub stats: FleetStats,
    /// When it was created (RFC 3339).
    pub created_at: String,
}

/// Why the registry could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The store failed; the request may be retried.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The definition asked for is invalid (400), naming the field.
    #[error(transparent)]
    Invalid(#[from] FieldError),
}

/// Why `create_within` did not create the consumer.
#[derive(Debug, thiserror::Error)]
pub enum CappedCreateError {
    /// This gateway already runs (or has registered) `limit` consumers.
    #[error("this gateway already runs {registered} consumers; its limit is {limit}")]
    AtCapacity {
        /// The most consumers this gateway runs.
        limit: usize,
        /// How many it has now.
        registered: usize,
    },
    /// Creating failed for a reason other than the cap.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// What `ConsumerRegistry::update` did.
#[derive(Debug)]
pub enum UpdateOutcome {
    /// Stored and applied here; the new definition as `/getConsumer` shows it.
    Updated(Box<ConsumerView>),
    /// No such consumer is stored (any more).
    NotFound,
    /// Another update was stored since the base was read; nothing changed.
    Conflict,
}

/// Builds the targets of built-in handlers; supplied by the binary.
pub trait BuiltinTargets: Send + Sync {
    /// The target for `handler`; `None` when this binary does not run that handler.
    fn target(&self, handler: BuiltinHandler) -> Option<Arc<dyn DeliveryTarget>>;
}

/// The consumers as stored, and the running of them on this replica: writes go to the store first,
/// then to the supervisor, and a reconcile pass brings every replica in line with the store.
pub struct ConsumerRegistry {
    /// Seals the definitions' secrets on the way in, opens them on the way out.
    collection: sealed::SealedConsumers,
    supervisor: Arc<ConsumerSupervisor>,
    http: crate::forwarder::ForwardClient,
    allowed_hosts: Option<Vec<String>>,
    builtins: Arc<dyn BuiltinTargets>,
    /// `ATTEMPT_BODY_BYTES` when attempts are recorded at all
    /// (`ATTEMPT_LOG`); `None`: no consumer records them.
    attempt_body_bytes: Option<usize>,
    /// `ORDERED_MAX_HOLD_MS`: how long an ordered consumer may hold a
    /// delivery for retries in place.
    ordered_max_hold: Duration,
    tombstones: DashMap<String, Instant>,
    /// Definitions that could not be started, so each is reported once.
    unstartable: DashMap<String, String>,
    /// Whether `create_within` has room, without counting the store each
    /// time.
    cap: cap::CreateCap,
    /// The other replicas' heartbeats, for fleet-wide counters.
    replicas: ReplicaRecords,
    /// Moved after every write here, so reconcile passes (every
    /// replica's) can skip reading an unchanged store.
    changes: Arc<changes::ChangeMark>,
    last_full_read: changes::LastFullRead,
}

impl ConsumerRegistry {
    /// A registry over `store`'s `consumers` collection, starting workers on `supervisor`. HTTP
    /// targets forward through `http`, to `allowed_hosts` only when set.
    pub fn new(
        store: &Store,
        supervisor: Arc<ConsumerSupervisor>,
        http: crate::forwarder::ForwardClient,
        allowed_hosts: Option<Vec<String>>,
        builtins: Arc<dyn BuiltinTargets>,
    ) -> Self {
        Self {
            collection: sealed::SealedConsumers::new(
                store.database().collection("consumers"),
                store.secrets().clone(),
            ),
            supervisor,
            http,
            allowed_hosts,
            builtins,
            attempt_body_bytes: None,
            ordered_max_hold: DEFAULT_ORDERED_MAX_HOLD,
            tombstones: DashMap::new(),
            unstartable: DashMap::new(),
            cap: cap::CreateCap::default(),
            replicas: ReplicaRecords::new(store),
            changes: Arc::new(changes::ChangeMark::new(store)),
            last_full_read: changes::LastFullRead::default(),
        }
    }

    /// Consumers record their attempts (unless their `attemptLog` says
    /// not), keeping up to `body_bytes` of each answer's body. The records go
    /// to the supervisor's attempt log.
    pub fn record_attempts(mut self, body_bytes: usize) -> Self {
        self.attempt_body_bytes = Some(body_bytes);
        self
    }

    /// Ordered consumers hold a delivery for retries in place for at most
    /// `max_hold` (`ORDERED_MAX_HOLD_MS`).
    pub fn ordered_max_hold(mut self, max_hold: Duration) -> Self {
        self.ordered_max_hold = max_hold;
        self
    }

    /// The longest an ordered consumer holds a delivery for retries.
    pub fn max_hold(&self) -> Duration {
        self.ordered_max_hold
    }

    /// The supervisor running this replica's consumers.
    pub fn supervisor(&self) -> &Arc<ConsumerSupervisor> {
        &self.supervisor
    }

    /// Stores the definition, then starts it here. The target is built
    /// first, so a definition that cannot run is never stored.
    pub async fn create(
        &self,
        definition: ConsumerDefinition,
    ) -> Result<ConsumerView, RegistryError> {
        let runnable = self.store_new(&definition).await?;
        Ok(self.start_stored(definition, runnable).await)
    }

    /// `create`, unless `limit` consumers are already registered or
    /// running here (each replica runs every registered consumer, so the
    /// registered ones are what this gateway runs). The gateway's own
    /// built-in consumers count, but are created with `create`, so a low
    /// cap never keeps them from starting.
    pub async fn create_within(
        &self,
        definition: ConsumerDefinition,
        limit: usize,
    ) -> Result<ConsumerView, CappedCreateError> {
        let place = self
            .cap
            .reserve(limit, self.supervisor.ids().len(), || async {
                let stored = self.collection.estimated_document_count().await?;
                Ok::<_, mongodb::error::Error>(usize::try_from(stored).unwrap_or(usize::MAX))
            })
            .await
            .map_err(|refused| match refused {
                cap::CapError::AtCapacity { registered } => {
                    CappedCreateError::AtCapacity { limit, registered }
                }
                cap::CapError::Count(err) => {
                    CappedCreateError::Registry(StoreError::mongo("counting consumers", err).into())
                }
            })?;
        let runnable = self.store_new(&definition).await?;
        place.stored();
        Ok(self.start_stored(definition, runnable).await)
    }

    /// Checks that `definition` can run here and stores it.
    async fn store_new(
        &self,
        definition: &ConsumerDefinition,
    ) -> Result<(ConsumerSpec, Arc<dyn DeliveryTarget>), RegistryError> {
        let runnable = self.runnable(definition).map_err(RegistryError::Invalid)?;
        if let Err(err) = self
            .collection
            .insert_one(definition)
            .await
            .doing(|| format!("storing consumer `{}`", definition.consumer_id))
        {
            if !(matches!(err, StoreError::Duplicate { .. })
                && self.already_stored(definition).await)
            {
                return Err(err.into());
            }
            // The driver retries a write after a transient error, and
            // the first attempt may have landed: the id is ours (a fresh
            // UUID), so the record with it is this very definition.
            tracing::info!(consumer_id = %definition.consumer_id, "consumer definition stored by an earlier attempt of the same insert");
        }
        self.changes.changed();
        Ok(runnable)
    }

    /// Whether the store holds `definition` itself: its id, queue and
    /// creation time.
    async fn already_stored(&self, definition: &ConsumerDefinition) -> bool {
        match self
            .collection
            .find_one(doc! { "_id": &definition.consumer_id })
            .await
        {
            Ok(Some(stored)) => {
                stored.queue_name == definition.queue_name
                    && stored.created_at == definition.created_at
            }
            _ => false,
        }
    }

    /// Starts a stored definition here and answers with its view.
    async fn start_stored(
        &self,
        definition: ConsumerDefinition,
        (spec, target): (ConsumerSpec, Arc<dyn DeliveryTarget>),
    ) -> ConsumerView {
        self.supervisor
            .start(spec, target, definition.flow(), definition.revision);
        tracing::info!(consumer_id = %definition.consumer_id, queue = %definition.queue_name, "consumer created");
        // Stored and started: a failed read of the heartbeats must not
        // make it look as if it were not.
        let others = self.other_replicas().await.unwrap_or_else(|err| {
            tracing::debug!(error = %gateway::Chain(&err), "replica heartbeats unreadable; answering with this replica's share");
            OtherReplicas::default()
        });
        self.view(definition, &others)
    }

    /// Deletes the consumer from the store and stops it here; other replicas stop it at their next
    /// reconcile pass. `false` when there was no such consumer.
    pub async fn delete(&self, id: &ConsumerId) -> Result<bool, RegistryError> {
        // Tombstone first: a reconcile pass running now must not restart it.
        self.tombstones.insert(id.to_string(), Instant::now());
        let deleted = self
            .collection
            .delete_one(doc! { "_id": id.as_str() })
            .await
            .doing(|| format!("deleting consumer `{id}`"))?
            .deleted_count;
        if deleted > 0 {
            self.changes.changed();
        }
        let was_running = self.supervisor.stop(id).await;
        Ok(deleted > 0 || was_running)
    }

    /// The id of an ordered consumer stored on `queue` other than `except`,
    /// if there is one: a queue takes one.
    pub async fn other_ordered_on(
        &self,
        queue: &str,
        except: &str,
    ) -> Result<Option<String>, RegistryError> {
        Ok(self
            .collection
            .find_one(doc! {
                "queueName": queue,
                "ordering": { "$exists": true },
                "_id": { "$ne": except },
            })
            .await
            .doing(|| format!("looking for an ordered consumer on queue `{queue}`"))?
            .map(|d| d.consumer_id))
    }

    /// Deletes every consumer on `queue`; returns how many.
    pub async fn delete_on_queue(&self, queue: &QueueName) -> Result<u64, RegistryError> {
        let ids: Vec<String> = self
            .collection
            .ids(doc! { "queueName": queue.as_str() })
            .await
            .doing(|| format!("reading the consumers of queue `{queue}`"))?;
        let mut deleted = 0;
        for raw in ids {
            if let Some(id) = ConsumerId::parse(&raw) {
                if self.delete(&id).await? {
                    deleted += 1;
                }
            }
        }
        Ok(deleted)
    }

    /// Pauses the consumer everywhere: stores the flag, then pauses it
    /// here, returning once its in-flight deliveries here are settled.
    /// The other replicas follow on their next reconcile pass. `false`
    /// when no such consumer is stored.
    pub async fn pause(&self, id: &ConsumerId) -> Result<bool, RegistryError> {
        self.set_flow(id, Flow::Paused).await
    }

    /// Resumes the consumer everywhere, as `pause` pauses it.
    pub async fn resume(&self, id: &ConsumerId) -> Result<bool, RegistryError> {
        self.set_flow(id, Flow::Consuming).await
    }

    async fn set_flow(&self, id: &ConsumerId, flow: Flow) -> Result<bool, RegistryError> {
        let paused = flow == Flow::Paused;
        let matched = self
            .collection
            .update_one(
                doc! { "_id": id.as_str() },
                doc! { "$set": { "paused": paused } },
            )
            .await
            .doing(|| format!("setting the flow of consumer `{id}`"))?
            .matched_count;
        if matched == 0 {
            return Ok(false);
        }
        self.changes.changed();
        // Not registered here (yet): the next reconcile pass registers it
        // as stored.
        self.supervisor.set_flow(id, flow).await;
        tracing::info!(consumer_id = %id, paused, "consumer flow changed");
        Ok(true)
    }

    /// Every stored definition this replica can read, and the ids of those
    /// it cannot (their secrets sealed under a key it lacks: a replica
    /// started with another `SECRETS_KEY`), each reported once.
    async fn all_definitions(&self) -> Result<(Vec<ConsumerDefinition>, Vec<String>), StoreError> {
        let (readable, unreadable) = self
            .collection
            .find_readable(doc! {})
            .await
            .doing(|| "reading every consumer")?;
        let unreadable = unreadable
            .into_iter()
            .map(|(id, err)| {
                let problem = gateway::Chain(&err).to_string();
                if self.unstartable.insert(id.clone(), problem).is_none() {
                    tracing::warn!(consumer_id = %id, error = %gateway::Chain(&err), "stored consumer cannot be read here; is SECRETS_KEY the same on every replica?");
                }
                id
            })
            .collect();
        Ok((readable, unreadable))
    }

    /// Every stored consumer, oldest first, with the counters of every live replica.
    pub async fn list(&self) -> Result<Vec<ConsumerView>, RegistryError> {
        let (mut definitions, _) = self.all_definitions().await?;
        definitions.sort_by_key(|d| d.created_at);
        let others = self.other_replicas().await?;
        Ok(definitions
            .into_iter()
            .map(|d| self.view(d, &others))
            .collect())
    }

    /// The consumer `id`, if stored, with the counters of every live replica.
    pub async fn get(&self, id: &ConsumerId) -> Result<Option<ConsumerView>, RegistryError> {
        let Some(definition) = self
            .collection
            .find_one(doc! { "_id": id.as_str() })
            .await
            .doing(|| format!("reading consumer `{id}`"))?
        else {
            return Ok(None);
        };
        let others = self.other_replicas().await?;
        Ok(Some(self.view(definition, &others)))
    }

    /// The live replicas, from their heartbeats, as `/getReplicas` lists
    /// them.
    pub async fn replicas(&self) -> Result<Vec<ReplicaView>, RegistryError> {
        let records = self.replicas.live().await?;
        Ok(crate::fleet::replica_views(
            records,
            self.supervisor.instance_id(),
        ))
    }

    async fn other_replicas(&self) -> Result<OtherReplicas, StoreError> {
        let records = self.replicas.live().await?;
        Ok(OtherReplicas::new(records, self.supervisor.instance_id()))
    }

    /// One pass: start what is stored and not registered, pause or resume
    /// what is registered as its stored flag says, stop what is registered
    /// and no longer stored.
    pub async fn reconcile(&self) -> Result<(), RegistryError> {
        // Before the definitions: a write the read below misses moves the
        // version past this one.
        let version = self.changes.version().await?;
        if !self
            .last_full_read
            .due(version, Instant::now(), !self.unstartable.is_empty())
        {
            return Ok(());
        }
        // Only consumers already registered before the store was read may
        // be stopped: one created meanwhile is missing from the read, not
        // gone.
        let running_before = self.supervisor.ids();
        let read_at = Instant::now();
        let (definitions, unreadable) = self.all_definitions().await?;
        self.tombstones.retain(|_, at| at.elapsed() < TOMBSTONE_TTL);
        // Still stored, only not readable here: what runs keeps running.
        let mut wanted: HashSet<ConsumerId> = unreadable
            .iter()
            .filter_map(|id| ConsumerId::parse(id))
            .collect();
        let mut follow = Vec::new();
        for definition in &definitions {
            if self.tombstones.contains_key(&definition.consumer_id) {
                continue;
            }
            let Some(id) = ConsumerId::parse(&definition.consumer_id) else {
                continue;
            };
            wanted.insert(id.clone());
            if let Some(running) = self.supervisor.revision(&id) {
                let changed = if definition.revision > running {
                    self.runnable_or_report(&id, definition)
                } else {
                    None
                };
                follow.push((id, definition.flow(), changed, definition.revision));
                continue;
            }
            match self.runnable(definition) {
                Ok((spec, target)) => {
                    if self
                        .supervisor
                        .start(spec, target, definition.flow(), definition.revision)
                    {
                        tracing::info!(consumer_id = %id, queue = %definition.queue_name, paused = definition.paused, "consumer registered from the store");
                    }
                    self.unstartable.remove(id.as_str());
                }
                Err(problem) => {
                    if self
                        .unstartable
                        .insert(id.to_string(), problem.to_string())
                        .is_none()
                    {
                        tracing::warn!(consumer_id = %id, %problem, "stored consumer cannot run here");
                    }
                }
            }
        }
        // At once: a pause or an update waits for its consumer's drain.
        futures_util::future::join_all(follow.into_iter().map(
            |(id, flow, changed, revision)| async move {
                if let Some((spec, target)) = changed {
                    self.supervisor.replace(spec, target, revision).await;
                }
                self.supervisor.follow(&id, flow, read_at).await;
            },
        ))
        .await;
        for id in running_before {
            if !wanted.contains(&id) {
                tracing::info!(consumer_id = %id, "consumer no longer stored; stopping");
                self.supervisor.stop(&id).await;
            }
        }
        self.last_full_read.record(version, read_at);
        Ok(())
    }

    /// The engine's parts for `definition`, or `None` after reporting (once)
    /// why it cannot run here.
    fn runnable_or_report(
        &self,
        id: &ConsumerId,
        definition: &ConsumerDefinition,
    ) -> Option<(ConsumerSpec, Arc<dyn DeliveryTarget>)> {
        match self.runnable(definition) {
            Ok(parts) => {
                self.unstartable.remove(id.as_str());
                Some(parts)
            }
            Err(problem) => {
                if self
                    .unstartable
                    .insert(id.to_string(), problem.to_string())
                    .is_none()
                {
                    tracing::warn!(consumer_id = %id, %problem, "stored consumer cannot run here");
                }
                None
            }
        }
    }

    /// The stored definition, secret included: the base an update changes.
    pub async fn definition(
        &self,
        id: &ConsumerId,
    ) -> Result<Option<ConsumerDefinition>, RegistryError> {
        Ok(self
            .collection
            .find_one(doc! { "_id": id.as_str() })
            .await
            .doing(|| format!("reading consumer `{id}`"))?)
    }

    /// Stores `next` in place of the definition at `next.revision - 1`,
    /// then applies it here, returning once the old worker's in-flight
    /// deliveries are settled and the new one started. The other replicas
    /// follow on their next reconcile pass. The stored paused flag is kept
    /// as it is now, whatever `next` says.
    pub async fn update(&self, next: ConsumerDefinition) -> Result<UpdateOutcome, RegistryError> {
        let (spec, target) = self.runnable(&next)?;
        let id = spec.id.clone();
        let mut stored = mongodb::bson::to_document(&next)
            .map_err(|e| StoreError::encode(format!("storing consumer `{id}`"), e))?;
        stored.remove("_id");
        stored.remove("paused");
        stored.remove("createdAt");
        // Optional fields left out of `stored` when `None` must go from the
        // store too, or the old value would stay.
        let mut unset = mongodb::bson::Document::new();
        for optional in [
            "signingSecret",
            "previousSigningSecret",
            "previousSigningExpiresAt",
            "concurrency",
            "rateLimitPerSec",
            "batch",
            "attemptLog",
            "ordering",
            "filter",
            "transform",
            "onRuleError",
        ] {
            if !stored.contains_key(optional) {
                unset.insert(optional, "");
            }
        }
        let mut change = doc! { "$set": stored };
        if !unset.is_empty() {
            change.insert("$unset", unset);
        }
        let previous = i64::try_from(next.revision.saturating_sub(1)).unwrap_or(i64::MAX);
        let base_filter = if previous == 0 {
            // Stored before revisions existed: absent, or 0.
            doc! { "_id": id.as_str(), "$or": [ { "revision": { "$exists": false } }, { "revision": 0_i64 } ] }
        } else {
            doc! { "_id": id.as_str(), "revision": previous }
        };
        let matched = self
            .collection
            .update_one(base_filter, change)
            .await
            .doing(|| format!("updating consumer `{id}`"))?
            .matched_count;
        if matched == 0 {
            return Ok(match self.definition(&id).await? {
                Some(_) => UpdateOutcome::Conflict,
                None => UpdateOutcome::NotFound,
            });
        }
        self.changes.changed();
        self.supervisor.replace(spec, target, next.revision).await;
        tracing::info!(consumer_id = %id, revision = next.revision, "consumer updated");
        Ok(match self.get(&id).await? {
            Some(view) => UpdateOutcome::Updated(Box::new(view)),
            None => UpdateOutcome::NotFound,
        })
    }

    /// Reconciles now and then every `RECONCILE_EVERY` until shutdown,
    /// and writes this replica's change marks.
    pub fn spawn_reconciler(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        self.changes.spawn(shutdown.clone());
        let registry = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(err) = registry.reconcile().await {
                    tracing::debug!(error = %gateway::Chain(&err), "reconcile pass failed; will try again");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(RECONCILE_EVERY) => {}
                }
            }
        })
    }

    fn runnable(
        &self,
        definition: &ConsumerDefinition,
    ) -> Result<(ConsumerSpec, Arc<dyn DeliveryTarget>), FieldError> {
        let id = ConsumerId::parse(&definition.consumer_id).ok_or_else(|| {
            FieldError::new(
                "consumerId",
                format!("`{}` is not a UUID", definition.consumer_id),
            )
        })?;
        let queue = QueueName::parse(definition.queue_name.clone())
            .map_err(|e| FieldError::new("queueName", e.to_string()))?;
        // Stored definitions were validated when written, but the store is
        // outside this process: a bad policy (a zero delay) must not run.
        definition.retry.validate().map_err(retry_field_error)?;
        if let Some(policy) = &definition.circuit_breaker {
            policy.validate().map_err(circuit_breaker_field_error)?;
        }
        let log = definition.attempt_log.unwrap_or_default();
        let kept_body = self.attempt_body_bytes.filter(|_| log.enabled);
        let detail = match kept_body {
            None => AttemptDetail::Off,
            Some(bytes) => AttemptDetail::Keep {
                body_bytes: if log.response_body { bytes } else { 0 },
            },
        };
        let target: Arc<dyn DeliveryTarget> = match &definition.target {
            TargetSpec::Http(http) => {
                // Re-checked here too: the allow-list may have changed since.
                crate::targets::TargetUrl::parse(&http.url, self.allowed_hosts.as_deref())?;
                if let Some(crate::targets::TargetAuth::Oauth2(auth)) = http.auth.as_deref() {
                    crate::targets::TokenUrl::parse(
                        &auth.token_url,
                        self.allowed_hosts.as_deref(),
                    )?;
                }
                let keys = crate::signing::keys_of(definition)?;
                Arc::new(HttpForwarder::new(self.http.clone(), http, keys, detail)?)
            }
            TargetSpec::Builtin { handler } => self.builtins.target(*handler).ok_or_else(|| {
                FieldError::new(
                    "target.handler",
                    format!("the built-in handler `{handler:?}` is not available"),
                )
            })?,
        };
        let (concurrency, rate_limit) = definition.limits()?;
        let batch = definition.batch()?;
        let ordering = definition.ordering(self.ordered_max_hold)?;
        let rules = definition.rules()?;
        let envelope = rules.is_some();
        let target: Arc<dyn DeliveryTarget> = match rules {
            Some(rules) => Arc::new(RuledTarget::new(
                rules,
                definition.on_rule_error.unwrap_or_default(),
                target,
            )),
            None => target,
        };
        Ok((
            ConsumerSpec {
                id,
                queue,
                prefetch: definition.prefetch.max(1),
                retry: definition.retry,
                concurrency,
                rate_limit,
                circuit_breaker: definition.circuit_breaker,
                batch,
                record_attempts: kept_body.is_some(),
                ordering,
                envelope,
            },
            target,
        ))
    }

    fn view(&self, definition: ConsumerDefinition, others: &OtherReplicas) -> ConsumerView {
        let id = ConsumerId::parse(&definition.consumer_id);
        let stats = id.as_ref().and_then(|id| self.supervisor.stats(id));
        let circuit = match (&id, definition.circuit_breaker) {
            (Some(id), Some(_)) => self.supervisor.circuit(id).or(Some(CLOSED)),
            _ => None,
        };
        let (state, snapshot) = match stats {
            Some(stats) => (stats.state(), stats.snapshot()),
            // Not registered here (it cannot run here, or this replica has
            // not read it yet): paused is still what it is everywhere.
            None => (
                if definition.paused {
                    ConsumerState::Paused
                } else {
                    ConsumerState::Stopped
                },
                ConsumerStats::default().snapshot(),
            ),
        };
        let own = OwnShare {
            instance_id: self.supervisor.instance_id().to_owned(),
            counts: ConsumerCounts {
                delivered: snapshot.delivered,
                acked: snapshot.acked,
                retried: snapshot.retried,
                dead_lettered: snapshot.dead_lettered,
                filtered: snapshot.filtered,
                in_flight: snapshot.in_flight,
                state,
                keys: definition.ordering.as_ref().and(snapshot.keys),
            },
            last_error: snapshot.last_error,
            last_error_at: snapshot.last_error_at,
            last_delivery_at: snapshot.last_delivery_at,
        };
        let stats = others.fleet_stats(&definition.consumer_id, own);
        let signing = SigningView::of(&definition, chrono::Utc::now());
        let target = match definition.target {
            TargetSpec::Http(http) => TargetSpec::Http(http.masked()),
            other => other,
        };
        ConsumerView {
            consumer_id: definition.consumer_id,
            consumer_name: definition.consumer_name,
            queue_name: definition.queue_name,
            target,
            prefetch: definition.prefetch,
            retry: definition.retry,
            concurrency: definition
                .concurrency
                .unwrap_or(definition.prefetch)
                .min(definition.prefetch),
            rate_limit_per_sec: definition.rate_limit_per_sec,
            circuit_breaker: definition.circuit_breaker,
            batch: definition.batch,
            attempt_log: definition.attempt_log.unwrap_or_default(),
            ordering: definition.ordering,
            filter: definition.filter,
            transform: definition.transform,
            on_rule_error: definition.on_rule_error.unwrap_or_default(),
            signed: definition.signing_secret.is_some(),
            signing,
            state,
            circuit,
            stats,
            created_at: definition
                .created_at
                .try_to_rfc3339_string()
                .unwrap_or_default(),
        }
    }
}

impl ConsumerCounters for ConsumerRegistry {
    fn registered(&self) -> usize {
        self.supervisor.registered()
    }

    /// The registered consumers that are not `IDLE`, and the stored ones
    /// that cannot run here, as stopped (left out, they would read as
    /// running).
    fn worth_reporting(&self) -> HashMap<String, ConsumerCounts> {
        let mut reported: HashMap<String, ConsumerCounts> = self
            .supervisor
            .all()
            .into_iter()
            .filter_map(|(spec, stats)| {
                let counts = counts_of(&stats);
                counts
                    .worth_reporting()
                    .then(|| (spec.id.to_string(), counts))
            })
            .collect();
        for entry in self.unstartable.iter() {
            let not_here = ConsumerId::parse(entry.key())
                .is_some_and(|id| !self.supervisor.is_registered(&id));
            if not_here {
                reported.insert(
                    entry.key().clone(),
                    ConsumerCounts {
                        state: ConsumerState::Stopped,
                        ..ConsumerCounts::IDLE
                    },
                );
            }
        }
        reported
    }
}

fn counts_of(stats: &ConsumerStats) -> ConsumerCounts {
    let snapshot = stats.snapshot();
    ConsumerCounts {
        delivered: snapshot.delivered,
        acked: snapshot.acked,
        retried: snapshot.retried,
        dead_lettered: snapshot.dead_lettered,
        filtered: snapshot.filtered,
        in_flight: snapshot.in_flight,
        state: stats.state(),
        keys: snapshot.keys,
    }
}

/// The circuit of a consumer not registered here.
const CLOSED: CircuitSnapshot = CircuitSnapshot {
    state: gateway::CircuitState::Closed,
    consecutive_failures: 0,
    opened_at: None,
    next_probe_at: None,
};

/// The API's name for the broken bound: `circuitBreaker.failureThreshold`, …
/// A retry policy's error, named by the API's field (`retry.maxAttempts`):
/// the gateway knows no HTTP field names.
pub fn retry_field_error(err: RetryPolicyError) -> FieldError {
    let field = match err {
        RetryPolicyError::MaxAttempts { .. } => "maxAttempts",
        RetryPolicyError::InitialDelay { .. } => "initialDelayMs",
        RetryPolicyError::Multiplier { .. } => "multiplier",
        RetryPolicyError::MaxDelay { .. } => "maxDelayMs",
    };
    FieldError::new(field, err.to_string()).within("retry")
}

/// The `FieldError` for a broken circuit-breaker bound, naming the field inside `circuitBreaker`.
pub fn circuit_breaker_field_error(err: CircuitBreakerPolicyError) -> FieldError {
    let field = match err {
        CircuitBreakerPolicyError::FailureThreshold { .. } => "failureThreshold",
        CircuitBreakerPolicyError::OpenMs { .. } => "openMs",
        CircuitBreakerPolicyError::MaxOpenMs { .. } => "maxOpenMs",
    };
    FieldError::new(field, err.to_string()).within("circuitBreaker")
}

/// A batch policy's error, named by the API's field (`batch.maxMessages`).
pub fn batch_field_error(err: BatchPolicyError) -> FieldError {
    let field = match err {
        BatchPolicyError::MaxMessages { .. } | BatchPolicyError::AbovePrefetch { .. } => {
            "maxMessages"
        }
        BatchPolicyError::MaxWaitMs { .. } => "maxWaitMs",
    };
    FieldError::new(field, err.to_string()).within("batch")
}

/// For a gateway run without the built-in handlers.
pub struct NoBuiltinTargets;

impl BuiltinTargets for NoBuiltinTargets {
    fn target(&self, _: BuiltinHandler) -> Option<Arc<dyn DeliveryTarget>> {
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::BTreeMap;

    use crate::targets::HttpTarget;

    #[test]
    fn a_definition_stores_its_secrets_but_debug_shows_none() {
        let signing = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let mut definition = definition();
        definition.signing_secret = Some(SecretString::from(signing));
        let shown = format!("{definition:?}");
        for secret in ["MfKQ9r8", "urlSecret", "headerSecret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        // The document is in clear (the store boundary, `sealed`, seals it):
        // the forwarder signs with it after a restart.
        let stored = mongodb::bson::to_document(&definition).expect("encodes");
        assert_eq!(stored.get_str("signingSecret"), Ok(signing));
        let back: ConsumerDefinition = mongodb::bson::from_document(stored).expect("decodes");
        assert_eq!(
            back.signing_secret.as_ref().map(|s| s.expose_secret()),
            Some(signing)
        );
    }

    /// An unsigned HTTP consumer whose URL and header carry credentials.
    pub(crate) fn definition() -> ConsumerDefinition {
        ConsumerDefinition {
            consumer_id: "c1".into(),
            consumer_name: "orders-consumer".into(),
            queue_name: "orders".into(),
            target: TargetSpec::Http(HttpTarget {
                url: "https://api.example.com/hook?token=urlSecret".into(),
                method: "POST".into(),
                headers: BTreeMap::from([("x-api-key".into(), "headerSecret".into())]),
                timeout_ms: 1_000,
                http2: crate::targets::Http2Mode::Auto,
                auth: None,
                tls: None,
            }),
            prefetch: 10,
            retry: gateway::RetryPolicy::default(),
            signing_secret: None,
            previous_signing_secret: None,
            previous_signing_expires_at: None,
            created_at: DateTime::now(),
            paused: false,
            concurrency: None,
            rate_limit_per_sec: None,
            circuit_breaker: None,
            revision: 0,
            batch: None,
            attempt_log: None,
            ordering: None,
            filter: None,
            transform: None,
            on_rule_error: None,
        }
    }
}
