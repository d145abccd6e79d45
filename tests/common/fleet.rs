//! Many mailboxes at once: a source Dovecot with one user per row and a
//! target reached through its admin (master) user, filled with generated
//! mail, and `cutover verify` over all of them.

use std::process::Command;

use super::corpus::generated;
use super::json;
use cutover_harness::dovecot::{Dovecot, DovecotConfig};

/// The servers of a batch test.
pub struct Fleet {
    pub source: Dovecot,
    pub target: Dovecot,
    address: fn(usize) -> String,
    source_password: &'static str,
    admin_password: &'static str,
}

impl Fleet {
    /// `count` mailboxes `address(1..=count)` with `messages_each` messages
    /// (from `seed + i`) on the source; the target lacks the accounts in
    /// `missing_on_target` (not provisioned yet).
    pub fn start(
        address: fn(usize) -> String,
        count: usize,
        missing_on_target: &[usize],
        messages_each: usize,
        seed: u64,
        (source_password, admin_password): (&'static str, &'static str),
    ) -> Self {
        let source = Dovecot::start(DovecotConfig {
            users: (1..=count).map(|i| (address(i), source_password.to_string())).collect(),
            ..DovecotConfig::default()
        })
        .expect("source dovecot");
        let target = Dovecot::start(DovecotConfig {
            special_use: true,
            users: (1..=count)
                .filter(|i| !missing_on_target.contains(i))
                .map(|i| (address(i), format!("user-pw-{i}")))
                .collect(),
            master_user: Some(("admin".into(), admin_password.into())),
            ..DovecotConfig::default()
        })
        .expect("target dovecot");
        for i in 1..=count {
            cutover_harness::fill::fill_maildir(
                &source.maildir(&address(i)),
                generated(seed + i as u64, messages_each),
            )
            .expect("fill");
        }
        Self {
            source,
            target,
            address,
            source_password,
            admin_password,
        }
    }

    /// Missing and duplicated messages over the first `count` mailboxes, by
    /// `cutover verify` straight to the servers.
    pub fn verify_all(&self, count: usize) -> (u64, u64) {
        let (mut missing, mut extra) = (0, 0);
        for i in 1..=count {
            let user = (self.address)(i).replace('@', "%40");
            let output = Command::new(env!("CARGO_BIN_EXE_cutover"))
                .args([
                    "verify",
                    "--from",
                    &format!("imap://{user}@127.0.0.1:{}?tls=none", self.source.imap_port()),
                    "--to",
                    &format!(
                        "imap://{user}@127.0.0.1:{}?tls=none&master=admin",
                        self.target.imap_port()
                    ),
                    "--json",
                ])
                .env("CUTOVER_FROM_PASSWORD", self.source_password)
                .env("CUTOVER_TO_PASSWORD", self.admin_password)
                .output()
                .expect("verify");
            let report = json(&output);
            for folder in report["folders"].as_array().expect("folders") {
                missing += folder["missing"].as_array().map_or(0, Vec::len) as u64;
                extra += folder["extra"].as_array().map_or(0, Vec::len) as u64;
            }
        }
        (missing, extra)
    }
}
