//! Roles as handler arguments: a handler takes `Admin`, `Publisher` or
//! `Viewer` first, which reads the verdict the `authenticate` middleware
//! left on the request, synchronously, before the body is read.

use std::future::{ready, Ready};
use std::marker::PhantomData;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use credentials::Role;

use super::{AuthError, Principal, Verdict};

/// A role a handler argument demands, as a type, so the demand is checked when the request is
/// extracted.
pub trait RequiredRole {
    /// The least role that passes.
    const ROLE: Role;
}

/// Demands `Role::Admin`.
pub struct AdminRole;
/// Demands `Role::Publisher`.
pub struct PublisherRole;
/// Demands `Role::Viewer`.
pub struct ViewerRole;

impl RequiredRole for AdminRole {
    const ROLE: Role = Role::Admin;
}
impl RequiredRole for PublisherRole {
    const ROLE: Role = Role::Publisher;
}
impl RequiredRole for ViewerRole {
    const ROLE: Role = Role::Viewer;
}

/// An authenticated caller with at least the role `R`.
pub struct Authorized<R: RequiredRole> {
    /// Who the caller is.
    pub principal: Principal,
    _role: PhantomData<R>,
}

/// A caller allowed to change the gateway.
pub type Admin = Authorized<AdminRole>;
/// Any authenticated caller.
pub type Viewer = Authorized<ViewerRole>;
/// A caller allowed to publish.
pub type PublisherCaller = Authorized<PublisherRole>;

impl<R: RequiredRole + 'static> FromRequest for Authorized<R> {
    type Error = AuthError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let verdict = req
            .extensions()
            .get::<Verdict>()
            .map(|v| v.0.clone())
            .unwrap_or(Err(AuthError::Missing));
        ready(verdict.and_then(|principal| {
            if principal.role.allows(R::ROLE) {
                Ok(Authorized {
                    principal,
                    _role: PhantomData,
                })
            } else {
                Err(AuthError::Forbidden {
                    required: R::ROLE,
                    actual: principal.role,
                })
            }
        }))
    }
}
