//! The host driver: the sandbox *is* the host's namespace.
//!
//! Nothing is created: no interface, no address, no rule. A server started in a host-network
//! sandbox is reached on the host's own addresses. The controller gives such a sandbox the host's
//! `resolv.conf` and `hosts`.

use async_trait::async_trait;

use super::{Driver, DriverError, DriverKind, EndpointInfo, Joined, NetworkInfo, SandboxContext};

/// The host driver.
#[derive(Debug, Clone, Default)]
pub struct HostDriver;

#[async_trait]
impl Driver for HostDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Host
    }

    fn validate(&self, _net: &NetworkInfo) -> Result<(), DriverError> {
        Ok(())
    }

    async fn create_network(&self, _net: &NetworkInfo) -> Result<(), DriverError> {
        Ok(())
    }

    async fn delete_network(&self, _net: &NetworkInfo) -> Result<(), DriverError> {
        Ok(())
    }

    async fn join(
        &self,
        net: &NetworkInfo,
        _ep: &EndpointInfo,
        sandbox: &SandboxContext,
    ) -> Result<Joined, DriverError> {
        if !sandbox.is_host {
            return Err(DriverError::Unsupported {
                network: net.name.clone(),
                driver: DriverKind::Host,
                reason: format!(
                    "sandbox {:?} has a namespace of its own; only a sandbox created on the \
                     host's namespace can use host networking",
                    sandbox.name
                ),
            });
        }
        Ok(Joined::default())
    }

    async fn leave(&self, _net: &NetworkInfo, _ep: &EndpointInfo) -> Result<(), DriverError> {
        Ok(())
    }
}
