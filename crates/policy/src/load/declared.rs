//! What the policy files declare by name (rate-limit and CORS policies), read before
//! any route so a route may use a policy another file defines.

use super::cors::CorsChoice;
use super::limits::Defined;

/// The named policies routes refer to.
pub(crate) struct Declared {
    pub limits: Defined,
    pub cors: CorsChoice,
}
