//! The one integration-test binary: every module below links Lance once.
//! Protocol tests run on each backend (local files, memory, the local S3
//! server when `SLUICE_TEST_S3` is set, as `scripts/test.sh` does).

mod common;

mod backfill;
mod bad_input;
mod cleanup;
mod deploy;
mod evolution;
mod explore;
mod fencing;
mod groups;
mod formats;
mod indices;
mod lambda;
mod loads;
mod optimize;
mod processes;
mod protocol;
mod readers;
mod recovery;
mod requests;
mod s3_sources;
