//! What every handler can reach: the broker handles, the store, the
//! management client and the settings.

use std::sync::Arc;
use std::time::Duration;

use gateway::{Broker, DeadLetters, Publisher, Topology};
use services::attempts::AttemptHistory;
use services::{ConsumerRegistry, ManagementClient, Store};

use crate::configuration::Settings;

pub struct AppState {
    pub settings: Settings,
    pub broker: Broker,
    pub topology: Topology,
    pub publisher: Arc<Publisher>,
    pub store: Store,
    pub management: ManagementClient,
    pub metrics: Arc<crate::metrics::AppMetrics>,
    pub registry: Arc<ConsumerRegistry>,
    pub dead_letters: DeadLetters,
    /// Delivery history, read by `/getAttempts` and `/getMessageHistory`.
    pub attempts: AttemptHistory,
}

/// A store that does not answer a ping within this is reported down.
const STORE_PING_TIMEOUT: Duration = Duration::from_secs(2);

impl AppState {
    pub async fn store_up(&self) -> bool {
        matches!(
            tokio::time::timeout(STORE_PING_TIMEOUT, self.store.ping()).await,
            Ok(Ok(()))
        )
    }
}
