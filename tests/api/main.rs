//! The integration tests: one binary, so the crate links once. Every module starts the
//! real server against a real PostgreSQL and Redis (see `common`).

mod common;

mod audit_sealing;
mod auth;
mod billing;
mod billing_invoices;
mod billing_payments;
mod billing_properties;
mod billing_stripe;
mod break_glass;
mod clinical;
mod documents;
mod faults;
mod fhir;
mod foundation;
mod mfa;
mod migrations;
mod openapi;
mod password_reset;
mod patients;
mod pool;
mod properties;
mod scaleout;
mod scheduling;
mod sessions;
mod smtp_sink;
mod stripe_fake;
mod tenancy;
mod tenant_matrix;
mod treatment;
mod treatment_plans;
mod treatment_procedures;
mod treatment_recalls;
mod treatment_roles;
mod verify_email;
mod webhooks;
