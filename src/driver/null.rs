//! The null driver (Docker's `none` network): the sandbox keeps only its loopback.

use async_trait::async_trait;

use super::{Driver, DriverError, DriverKind, EndpointInfo, Joined, NetworkInfo, SandboxContext};

/// The null driver.
#[derive(Debug, Clone, Default)]
pub struct NullDriver;

#[async_trait]
impl Driver for NullDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Null
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
        if sandbox.is_host {
            return Err(DriverError::Unsupported {
                network: net.name.clone(),
                driver: DriverKind::Null,
                reason: "a host-network sandbox cannot join the none network".into(),
            });
        }
        Ok(Joined::default())
    }

    async fn leave(&self, _net: &NetworkInfo, _ep: &EndpointInfo) -> Result<(), DriverError> {
        Ok(())
    }

    /// Joining makes nothing: there is nothing to find missing.
    async fn endpoint_present(
        &self,
        _net: &NetworkInfo,
        _ep: &EndpointInfo,
        _sandbox: &SandboxContext,
    ) -> Result<bool, DriverError> {
        Ok(true)
    }
}
