//! Handles to dynamically registered workers.
//!
//! A [`WorkerHandle`] names one registration by (registration slot,
//! generation). The postmaster bumps the generation when the registration
//! ends and after every segment reset, so a handle outliving its worker
//! reads [`HandleStatus::Stopped`] and its [`terminate`](WorkerHandle::terminate)
//! does nothing.
//!
//! Waiting uses the registrant's own latch: a registrant with a proc slot
//! registers with notification on, and the postmaster sets its latch when
//! the worker starts or stops. The waits follow the latch pattern (reset,
//! check the status, sleep) so a notification is never missed; they reset
//! the caller's latch, so a caller that also waits for other things checks
//! those again afterwards.

use std::time::Instant;

use latch::{Latch, Wake};
use thiserror::Error;

use crate::registry::{self, HandleStatus, Registrant, RegistryError};
use crate::shared::Shared;
use crate::spec::WorkerSpec;

/// Why a dynamic registration could not be made.
#[derive(Debug, Error)]
pub enum RegisterDynamicError {
    /// The caller has no shared-memory access.
    #[error(
        "dynamic registration needs shared-memory access; give the registering worker .shmem(true)"
    )]
    NoSharedMemory,
    /// The registration slots refused it.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Why a wait on a handle ended without what it waited for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum WaitError {
    /// The deadline passed.
    #[error("the deadline passed first")]
    Timeout,
    /// The postmaster is gone; nothing will start or stop any more.
    #[error("the postmaster died")]
    PostmasterDied,
    /// The worker stopped (or its registration ended) before it started.
    #[error("the worker stopped before it started")]
    Stopped,
    /// The postmaster refused the registration.
    #[error("the postmaster rejected the registration: {0}")]
    Rejected(registry::RejectReason),
    /// The caller has no latch the postmaster would set.
    #[error("the caller has no proc slot, so nobody would wake it; poll status() instead")]
    NoLatch,
}

/// A dynamic registration; see the module docs.
#[derive(Clone, Copy, Debug)]
pub struct WorkerHandle<'a> {
    shared: Shared<'a>,
    handle: registry::RegHandle,
    latch: Option<&'a Latch>,
}

impl<'a> WorkerHandle<'a> {
    /// Submits `spec` from the process in proc slot `proc_index` (if it has
    /// one, notifications are turned on so that it can wait).
    pub(crate) fn submit(
        shared: Shared<'a>,
        spec: &WorkerSpec,
        proc_index: Option<u32>,
    ) -> Result<Self, RegisterDynamicError> {
        let latch = proc_index
            .and_then(|i| shared.procs.get(i))
            .map(|slot| slot.latch());
        let spec = if latch.is_some() {
            spec.clone().notify(true)
        } else {
            spec.clone()
        };
        let registrant = Registrant {
            proc_index,
            pid: latch::pid::current(),
        };
        let handle = shared.registry.submit(&spec, registrant)?;
        Ok(WorkerHandle {
            shared,
            handle,
            latch,
        })
    }

    /// The (slot, generation) pair this handle names.
    pub fn id(&self) -> registry::RegHandle {
        self.handle
    }

    /// Where the registration stands now.
    pub fn status(&self) -> HandleStatus {
        self.shared.registry.status(self.handle)
    }

    /// Asks the postmaster to stop the worker for good. Returns `false`, and
    /// changes nothing, if the handle is stale.
    pub fn terminate(&self) -> bool {
        let done = self.shared.registry.terminate(self.handle);
        if done {
            crate::child::signal_postmaster(self.shared.control.postmaster_pid());
        }
        done
    }

    /// Waits until the worker runs; returns its pid.
    pub fn wait_started(&self, deadline: Option<Instant>) -> Result<u32, WaitError> {
        self.wait_for(deadline, |status| match status {
            HandleStatus::Started { pid } => Some(Ok(pid)),
            HandleStatus::Stopped => Some(Err(WaitError::Stopped)),
            HandleStatus::Rejected(reason) => Some(Err(WaitError::Rejected(reason))),
            HandleStatus::Submitted | HandleStatus::NotYetStarted => None,
        })
    }

    /// Waits until the worker has stopped and its registration ended.
    pub fn wait_stopped(&self, deadline: Option<Instant>) -> Result<(), WaitError> {
        self.wait_for(deadline, |status| match status {
            HandleStatus::Stopped => Some(Ok(())),
            HandleStatus::Rejected(reason) => Some(Err(WaitError::Rejected(reason))),
            _ => None,
        })
    }

    fn wait_for<T>(
        &self,
        deadline: Option<Instant>,
        done: impl Fn(HandleStatus) -> Option<Result<T, WaitError>>,
    ) -> Result<T, WaitError> {
        let latch = self.latch.ok_or(WaitError::NoLatch)?;
        loop {
            latch.reset();
            if let Some(result) = done(self.status()) {
                return result;
            }
            match latch.wait(deadline) {
                Ok(Wake::Set) => {}
                Ok(Wake::Timeout) => return Err(WaitError::Timeout),
                Ok(Wake::PostmasterDied) => return Err(WaitError::PostmasterDied),
                // Not our latch to wait on: nothing would wake us.
                Err(_) => return Err(WaitError::NoLatch),
            }
        }
    }
}
