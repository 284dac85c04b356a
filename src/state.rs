//! What every handler can reach: the broker handles, the store, the
//! management client and the settings.

use std::sync::Arc;

use gateway::{Broker, DeadLetters, Publisher, Topology};
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
}
