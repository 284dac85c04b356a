//! The fleet in one answer, as pure logic: what a replica's heartbeat
//! record holds (`ReplicaRecord`), which consumers a beat must carry
//! (`ConsumerCounts::worth_reporting`), how a consumer's counters are
//! summed over the live replicas (`OtherReplicas::fleet_stats`) and how
//! `/getReplicas` shows each replica (`replica_views`). Reading and writing
//! the records is `crate::replicas`' part.
//!
//! Beats are sparse, so that a gateway with 10,000 idle consumers writes a
//! small record every 2 s: a consumer running normally with nothing
//! counted is left out, and a live replica whose beat leaves a consumer out
//! counts for it as running with zero counters. Sums are exact either way.

use std::collections::HashMap;

use gateway::consumer::{ConsumerState, KeysSnapshot};
use mongodb::bson::DateTime;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One consumer's counters on one replica, as its beat carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerCounts {
    /// Since the replica started the consumer: Deliveries taken from the broker.
    pub delivered: u64,
    /// Since the replica started the consumer: Deliveries acked after a successful outcome.
    pub acked: u64,
    /// Since the replica started the consumer: Deliveries sent to a delay queue to be tried again.
    pub retried: u64,
    /// Since the replica started the consumer: Deliveries moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// Since the replica started the consumer: Deliveries acked without a
    /// call by the consumer's rules. Absent in beats of replicas older than
    /// rules.
    #[serde(default)]
    pub filtered: u64,
    /// Since the replica started the consumer: Deliveries taken and not yet settled.
    pub in_flight: u64,
    /// What the consumer is doing on this replica.
    pub state: ConsumerState,
    /// An ordered consumer's keys on this replica; absent for others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<KeysSnapshot>,
}

impl ConsumerCounts {
    /// Running with nothing counted: what a beat that leaves a consumer out
    /// says of it.
    pub const IDLE: ConsumerCounts = ConsumerCounts {
        delivered: 0,
        acked: 0,
        retried: 0,
        dead_lettered: 0,
        filtered: 0,
        in_flight: 0,
        state: ConsumerState::Running,
        keys: None,
    };

    /// Whether a beat must carry it: anything but `IDLE`.
    pub fn worth_reporting(&self) -> bool {
        *self != Self::IDLE
    }

    fn totals(&self) -> CounterTotals {
        CounterTotals {
            delivered: self.delivered,
            acked: self.acked,
            retried: self.retried,
            dead_lettered: self.dead_lettered,
            filtered: self.filtered,
            in_flight: self.in_flight,
        }
    }
}

/// A replica's heartbeat record in the `replicas` collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaRecord {
    /// The replica's instance id, unique per process.
    #[serde(rename = "_id")]
    pub instance_id: String,
    /// When the replica last beat; a record older than `LIVE_WITHIN` is not live.
    pub last_seen_at: DateTime,
    // The fields below are absent in records written by replicas older
    // than the fleet view; such a replica's counters are unknown, not zero.
    /// The replica's build version.
    #[serde(default)]
    pub version: Option<String>,
    /// When the replica started.
    #[serde(default)]
    pub started_at: Option<DateTime>,
    /// `host:port` of the broker node its connection is on.
    #[serde(default)]
    pub broker_node: Option<String>,
    /// Consumers registered on it, paused ones included.
    #[serde(default)]
    pub consumer_count: Option<u64>,
    /// By consumer id; only those `worth_reporting`.
    #[serde(default)]
    pub consumers: HashMap<String, ConsumerCounts>,
}

impl ReplicaRecord {
    fn reports_counters(&self) -> bool {
        self.consumer_count.is_some()
    }
}

/// Counters summed over something: a replica's consumers, or a consumer's
/// replicas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CounterTotals {
    /// Deliveries taken from the broker.
    pub delivered: u64,
    /// Deliveries acked after a successful outcome.
    pub acked: u64,
    /// Deliveries sent to a delay queue to be tried again.
    pub retried: u64,
    /// Deliveries moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// Deliveries acked without a call by the consumer's rules.
    pub filtered: u64,
    /// Deliveries taken and not yet settled.
    pub in_flight: u64,
}

impl CounterTotals {
    fn add(&mut self, other: CounterTotals) {
        self.delivered = self.delivered.saturating_add(other.delivered);
        self.acked = self.acked.saturating_add(other.acked);
        self.retried = self.retried.saturating_add(other.retried);
        self.dead_lettered = self.dead_lettered.saturating_add(other.dead_lettered);
        self.filtered = self.filtered.saturating_add(other.filtered);
        self.in_flight = self.in_flight.saturating_add(other.in_flight);
    }
}

/// One replica's share of a consumer, in `stats.replicas`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaConsumerStats {
    /// The replica's instance id.
    pub instance_id: String,
    /// On that replica: Deliveries taken from the broker.
    pub delivered: u64,
    /// On that replica: Deliveries acked after a successful outcome.
    pub acked: u64,
    /// On that replica: Deliveries sent to a delay queue to be tried again.
    pub retried: u64,
    /// On that replica: Deliveries moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// On that replica: Deliveries acked without a call by the consumer's rules.
    pub filtered: u64,
    /// On that replica: Deliveries taken and not yet settled.
    pub in_flight: u64,
    /// What the consumer is doing on that replica.
    pub state: ConsumerState,
}

impl ReplicaConsumerStats {
    /// The share `counts` say the replica `instance_id` has.
    pub fn new(instance_id: impl Into<String>, counts: ConsumerCounts) -> Self {
        Self {
            instance_id: instance_id.into(),
            delivered: counts.delivered,
            acked: counts.acked,
            retried: counts.retried,
            dead_lettered: counts.dead_lettered,
            filtered: counts.filtered,
            in_flight: counts.in_flight,
            state: counts.state,
        }
    }

    fn totals(&self) -> CounterTotals {
        CounterTotals {
            delivered: self.delivered,
            acked: self.acked,
            retried: self.retried,
            dead_lettered: self.dead_lettered,
            filtered: self.filtered,
            in_flight: self.in_flight,
        }
    }
}

/// A consumer's `stats` as `/getConsumers` shows them: the counters summed
/// over the live replicas, each replica's share beside them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetStats {
    /// Summed over the live replicas: Deliveries taken from the broker.
    pub delivered: u64,
    /// Summed over the live replicas: Deliveries acked after a successful outcome.
    pub acked: u64,
    /// Summed over the live replicas: Deliveries sent to a delay queue to be tried again.
    pub retried: u64,
    /// Summed over the live replicas: Deliveries moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// Summed over the live replicas: Deliveries acked without a call by
    /// the consumer's rules (refused by its `filter`, or dropped under
    /// `onRuleError: "drop"`).
    pub filtered: u64,
    /// Summed over the live replicas: Deliveries taken and not yet settled.
    pub in_flight: u64,
    /// Ordered consumers, summed over the live replicas: keys with a
    /// message at the target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys_in_flight: Option<u64>,
    /// Ordered consumers, summed over the live replicas: keys whose message
    /// waits for a retry in place.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys_held: Option<u64>,
    /// Ordered consumers, the longest over the live replicas: how long the
    /// longest-held message waiting for a retry has been held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_held_ms: Option<u64>,
    /// The answering replica's.
    pub last_error: Option<String>,
    /// When the answering replica's `last_error` happened (RFC 3339).
    pub last_error_at: Option<String>,
    /// The answering replica's.
    pub last_delivery_at: Option<String>,
    /// Ordered by instance id.
    pub replicas: Vec<ReplicaConsumerStats>,
}

/// What the answering replica knows of its own share of a consumer, live.
pub struct OwnShare {
    /// This replica's instance id.
    pub instance_id: String,
    /// The consumer's counters and state here.
    pub counts: ConsumerCounts,
    /// The reason of the last failed attempt here, if any.
    pub last_error: Option<String>,
    /// When `last_error` happened (RFC 3339).
    pub last_error_at: Option<String>,
    /// When the last delivery was taken here (RFC 3339).
    pub last_delivery_at: Option<String>,
}

/// The other live replicas' latest beats.
#[derive(Debug, Default)]
pub struct OtherReplicas {
    replicas: Vec<ReplicaRecord>,
}

impl OtherReplicas {
    /// Of the live `records`, those of the other replicas that report
    /// counters, ordered by instance id.
    pub fn new(records: Vec<ReplicaRecord>, own_instance_id: &str) -> Self {
        let mut replicas: Vec<ReplicaRecord> = records
            .into_iter()
            .filter(|r| r.instance_id != own_instance_id && r.reports_counters())
            .collect();
        replicas.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        Self { replicas }
    }

    /// The consumer's counters: this replica's live share plus each other
    /// live replica's from its latest beat (`IDLE` where it leaves the
    /// consumer out).
    pub fn fleet_stats(&self, consumer_id: &str, own: OwnShare) -> FleetStats {
        let mut keys: Option<KeysSnapshot> = own.counts.keys;
        for other in &self.replicas {
            if let Some(theirs) = other.consumers.get(consumer_id).and_then(|c| c.keys) {
                let sum = keys.get_or_insert_with(KeysSnapshot::default);
                sum.keys_in_flight = sum.keys_in_flight.saturating_add(theirs.keys_in_flight);
                sum.keys_held = sum.keys_held.saturating_add(theirs.keys_held);
                sum.oldest_held_ms = sum.oldest_held_ms.max(theirs.oldest_held_ms);
            }
        }
        let mut replicas: Vec<ReplicaConsumerStats> = self
            .replicas
            .iter()
            .map(|r| {
                let counts = r
                    .consumers
                    .get(consumer_id)
                    .copied()
                    .unwrap_or(ConsumerCounts::IDLE);
                ReplicaConsumerStats::new(r.instance_id.clone(), counts)
            })
            .collect();
        replicas.push(ReplicaConsumerStats::new(own.instance_id, own.counts));
        replicas.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        let mut sum = CounterTotals::default();
        for replica in &replicas {
            sum.add(replica.totals());
        }
        FleetStats {
            delivered: sum.delivered,
            acked: sum.acked,
            retried: sum.retried,
            dead_lettered: sum.dead_lettered,
            filtered: sum.filtered,
            in_flight: sum.in_flight,
            keys_in_flight: keys.map(|k| k.keys_in_flight),
            keys_held: keys.map(|k| k.keys_held),
            oldest_held_ms: keys.map(|k| k.oldest_held_ms),
            last_error: own.last_error,
            last_error_at: own.last_error_at,
            last_delivery_at: own.last_delivery_at,
            replicas,
        }
    }
}

/// A live replica as `/getReplicas` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaView {
    /// Its `INSTANCE_ID`.
    pub instance_id: String,
    /// The gateway version it runs; `null` for a replica older than the
    /// fleet view.
    pub version: Option<String>,
    /// RFC 3339; `null` for a replica older than the fleet view.
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    /// RFC 3339: its latest heartbeat.
    #[schema(format = DateTime)]
    pub last_seen_at: String,
    /// `host:port` of the broker node it is connected to; `null` when not
    /// known.
    pub broker_node: Option<String>,
    /// Consumers registered on it, paused ones included; `null` for a
    /// replica older than the fleet view.
    #[schema(minimum = 0)]
    pub consumers: Option<u64>,
    /// Its counters summed over its consumers, as of its latest heartbeat;
    /// `null` for a replica older than the fleet view.
    pub totals: Option<CounterTotals>,
    /// Whether it is the replica that answered.
    pub this_replica: bool,
}

/// The live `records` as `/getReplicas` lists them, ordered by instance id.
pub fn replica_views(records: Vec<ReplicaRecord>, own_instance_id: &str) -> Vec<ReplicaView> {
    let mut views: Vec<ReplicaView> = records
        .into_iter()
        .map(|record| {
            let totals = record.reports_counters().then(|| {
                let mut sum = CounterTotals::default();
                for counts in record.consumers.values() {
                    sum.add(counts.totals());
                }
                sum
            });
            ReplicaView {
                this_replica: record.instance_id == own_instance_id,
                version: record.version,
                started_at: record.started_at.map(rfc3339),
                last_seen_at: rfc3339(record.last_seen_at),
                broker_node: record.broker_node,
                consumers: record.consumer_count,
                totals,
                instance_id: record.instance_id,
            }
        })
        .collect();
    views.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    views
}

fn rfc3339(at: DateTime) -> String {
    at.try_to_rfc3339_string().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(delivered: u64, acked: u64, in_flight: u64, state: ConsumerState) -> ConsumerCounts {
        ConsumerCounts {
            delivered,
            acked,
            retried: delivered - acked - in_flight,
            dead_lettered: 0,
            filtered: 0,
            in_flight,
            state,
            keys: None,
        }
    }

    fn record(id: &str, consumers: &[(&str, ConsumerCounts)]) -> ReplicaRecord {
        ReplicaRecord {
            instance_id: id.into(),
            last_seen_at: DateTime::from_millis(1_700_000_000_000),
            version: Some("0.1.0".into()),
            started_at: Some(DateTime::from_millis(1_699_999_000_000)),
            broker_node: Some("rabbit-1:5672".into()),
            consumer_count: Some(2),
            consumers: consumers
                .iter()
                .map(|(id, c)| ((*id).to_owned(), *c))
                .collect(),
        }
    }

    fn own(counts: ConsumerCounts) -> OwnShare {
        OwnShare {
            instance_id: "b".into(),
            counts,
            last_error: Some("boom".into()),
            last_error_at: Some("2026-01-01T00:00:00+00:00".into()),
            last_delivery_at: None,
        }
    }

    #[test]
    fn a_consumer_is_summed_over_this_replica_and_the_others_beats() {
        let records = vec![
            record("c", &[("x", counts(300, 290, 4, ConsumerState::Running))]),
            // Its own stale record is ignored: the live numbers count.
            record("b", &[("x", counts(1, 1, 0, ConsumerState::Running))]),
            record("a", &[("x", counts(500, 500, 0, ConsumerState::Running))]),
        ];
        let others = OtherReplicas::new(records, "b");
        let stats = others.fleet_stats("x", own(counts(200, 180, 6, ConsumerState::CircuitOpen)));
        assert_eq!(
            (stats.delivered, stats.acked, stats.retried, stats.in_flight),
            (1_000, 970, 20, 10)
        );
        let ids: Vec<&str> = stats
            .replicas
            .iter()
            .map(|r| r.instance_id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(stats.replicas[1].state, ConsumerState::CircuitOpen);
        assert_eq!(stats.replicas[1].acked, 180);
        assert_eq!(stats.last_error.as_deref(), Some("boom"));
    }

    #[test]
    fn a_replica_whose_beat_leaves_a_consumer_out_counts_as_running_idle() {
        let others = OtherReplicas::new(
            vec![record(
                "a",
                &[("other", counts(5, 5, 0, ConsumerState::Running))],
            )],
            "b",
        );
        let stats = others.fleet_stats("x", own(counts(7, 7, 0, ConsumerState::Running)));
        assert_eq!((stats.delivered, stats.acked), (7, 7));
        assert_eq!(
            stats.replicas[0],
            ReplicaConsumerStats::new("a", ConsumerCounts::IDLE)
        );
    }

    #[test]
    fn a_replica_older_than_the_fleet_view_is_left_out_of_the_sums() {
        let mut old = record("a", &[]);
        old.consumer_count = None;
        let others = OtherReplicas::new(vec![old], "b");
        let stats = others.fleet_stats("x", own(counts(7, 7, 0, ConsumerState::Running)));
        assert_eq!(stats.replicas.len(), 1);
        assert_eq!(stats.acked, 7);
    }

    #[test]
    fn only_what_is_not_idle_is_worth_a_place_in_a_beat() {
        assert!(!ConsumerCounts::IDLE.worth_reporting());
        assert!(counts(0, 0, 0, ConsumerState::Paused).worth_reporting());
        assert!(counts(0, 0, 0, ConsumerState::Reconnecting).worth_reporting());
        assert!(counts(1, 0, 1, ConsumerState::Running).worth_reporting());
        let dead_lettered = ConsumerCounts {
            dead_lettered: 1,
            ..ConsumerCounts::IDLE
        };
        assert!(dead_lettered.worth_reporting());
    }

    #[test]
    fn replicas_are_listed_with_their_totals_and_rfc3339_times() {
        let views = replica_views(
            vec![
                record(
                    "b",
                    &[
                        ("x", counts(10, 8, 2, ConsumerState::Running)),
                        ("y", counts(5, 5, 0, ConsumerState::Running)),
                    ],
                ),
                record("a", &[]),
            ],
            "b",
        );
        assert_eq!(views.len(), 2);
        assert_eq!(views[0].instance_id, "a");
        assert!(!views[0].this_replica);
        assert_eq!(views[0].totals, Some(CounterTotals::default()));
        let b = &views[1];
        assert!(b.this_replica);
        assert_eq!(b.consumers, Some(2));
        assert_eq!(b.broker_node.as_deref(), Some("rabbit-1:5672"));
        assert_eq!(b.last_seen_at, "2023-11-14T22:13:20Z");
        assert_eq!(b.started_at.as_deref(), Some("2023-11-14T21:56:40Z"));
        let totals = b.totals.expect("totals");
        assert_eq!(
            (totals.delivered, totals.acked, totals.in_flight),
            (15, 13, 2)
        );
    }

    #[test]
    fn a_record_survives_the_round_trip_through_bson() {
        let record = record("a", &[("x", counts(10, 8, 2, ConsumerState::CircuitOpen))]);
        let stored = mongodb::bson::to_document(&record).expect("encodes");
        assert_eq!(
            stored
                .get_document("consumers")
                .and_then(|c| c.get_document("x"))
                .and_then(|x| x.get_str("state")),
            Ok("circuit_open")
        );
        let back: ReplicaRecord = mongodb::bson::from_document(stored).expect("decodes");
        assert_eq!(back, record);
        // A record of a replica older than the fleet view.
        let old: ReplicaRecord = mongodb::bson::from_document(
            mongodb::bson::doc! { "_id": "old", "lastSeenAt": DateTime::now() },
        )
        .expect("decodes");
        assert_eq!(old.consumer_count, None);
    }
}
