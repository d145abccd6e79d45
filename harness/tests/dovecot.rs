//! The launcher, TLS PKI and Maildir fill against a real Dovecot, spoken to
//! in raw IMAP so nothing but the harness is under test.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, FixedOffset};
use cutover_harness::dovecot::Quota;
use cutover_harness::{fill_maildir, CorpusSpec, Dovecot, DovecotConfig, Error, GeneratedMessage, TestPki, TlsFiles};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A minimal IMAP client: one command at a time, literals inlined.
struct Imap<S> {
    stream: BufReader<S>,
    tag: u32,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Imap<S> {
    /// Wraps a fresh connection and returns the greeting.
    async fn connect(stream: S) -> (Self, String) {
        let mut imap = Imap {
            stream: BufReader::new(stream),
            tag: 0,
        };
        let greeting = imap.read_response().await;
        (imap, String::from_utf8_lossy(&greeting).into_owned())
    }

    /// One response line, with any literals and their continuation lines.
    async fn read_response(&mut self) -> Vec<u8> {
        let mut response = Vec::new();
        loop {
            let start = response.len();
            let n = tokio::time::timeout(IO_TIMEOUT, self.stream.read_until(b'\n', &mut response))
                .await
                .expect("server answered in time")
                .expect("read from server");
            assert!(n > 0, "server closed the connection");
            let line = &response[start..];
            let literal = line
                .strip_suffix(b"}\r\n")
                .and_then(|l| l.iter().rposition(|&b| b == b'{').map(|i| &l[i + 1..]))
                .and_then(|digits| std::str::from_utf8(digits).ok()?.parse::<usize>().ok());
            let Some(len) = literal else {
                return response;
            };
            let at = response.len();
            response.resize(at + len, 0);
            self.stream.read_exact(&mut response[at..]).await.expect("read literal");
        }
    }

    /// Sends a command; returns the untagged responses and the tagged status line.
    async fn command(&mut self, command: &str) -> (Vec<Vec<u8>>, String) {
        self.tag += 1;
        let tag = format!("t{}", self.tag);
        self.stream
            .get_mut()
            .write_all(format!("{tag} {command}\r\n").as_bytes())
            .await
            .expect("send command");
        let mut untagged = Vec::new();
        loop {
            let response = self.read_response().await;
            if response.starts_with(format!("{tag} ").as_bytes()) {
                let status = String::from_utf8_lossy(&response[tag.len() + 1..]);
                return (untagged, status.trim_end().to_owned());
            }
            untagged.push(response);
        }
    }

    /// Sends a command that must succeed; returns its untagged responses.
    async fn ok(&mut self, command: &str) -> Vec<String> {
        let (untagged, status) = self.command(command).await;
        assert!(status.starts_with("OK"), "{command}: {status}");
        untagged
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect()
    }

    fn into_inner(self) -> S {
        self.stream.into_inner()
    }
}

async fn connect(dovecot: &Dovecot) -> Imap<TcpStream> {
    let stream = TcpStream::connect((dovecot.host(), dovecot.imap_port()))
        .await
        .expect("connect");
    let (imap, greeting) = Imap::connect(stream).await;
    assert!(greeting.starts_with("* OK"), "greeting: {greeting}");
    imap
}

fn users(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(l, p)| (l.to_string(), p.to_string())).collect()
}

fn config_with_master() -> DovecotConfig {
    DovecotConfig {
        users: users(&[("alice", "alice-pw"), ("bob", "bob-pw")]),
        master_user: Some(("admin".into(), "admin-pw".into())),
        ..DovecotConfig::default()
    }
}

#[tokio::test]
async fn users_and_master_user_can_log_in() {
    let dovecot = Dovecot::start(config_with_master()).expect("start dovecot");

    let mut imap = connect(&dovecot).await;
    let caps = imap.ok("LOGIN alice alice-pw").await;
    let caps = imap.ok("CAPABILITY").await.into_iter().chain(caps).collect::<String>();
    assert!(caps.contains("CONDSTORE") && caps.contains("QRESYNC"), "{caps}");

    let mut imap = connect(&dovecot).await;
    imap.ok("LOGIN bob*admin admin-pw").await;

    // SASL PLAIN with authorization identity: authzid \0 authcid \0 password.
    let sasl = base64::engine::general_purpose::STANDARD.encode("alice\0admin\0admin-pw");
    let mut imap = connect(&dovecot).await;
    imap.ok(&format!("AUTHENTICATE PLAIN {sasl}")).await;

    for bad in [
        "LOGIN alice wrong",
        "LOGIN alice*admin alice-pw",
        "LOGIN nobody*admin admin-pw",
    ] {
        let mut imap = connect(&dovecot).await;
        let (_, status) = imap.command(bad).await;
        assert!(status.starts_with("NO"), "{bad}: {status}");
    }
}

#[tokio::test]
async fn users_added_at_runtime_can_log_in() {
    let mut dovecot = Dovecot::start(DovecotConfig::default()).expect("start dovecot");
    dovecot.add_user("carol", "carol-pw").expect("add user");
    connect(&dovecot).await.ok("LOGIN carol carol-pw").await;
    assert!(matches!(dovecot.add_user("carol", "again"), Err(Error::Invalid { .. })));
}

#[tokio::test]
async fn filled_folders_are_listed_with_their_counts() {
    let dovecot = Dovecot::start(config_with_master()).expect("start dovecot");
    let spec = CorpusSpec {
        large_fraction: 0.0,
        ..CorpusSpec::new(11, 300)
    };
    let summary = fill_maildir(&dovecot.maildir("alice"), spec.generate()).expect("fill");
    assert_eq!(summary.total(), 300);

    let mut imap = connect(&dovecot).await;
    imap.ok("LOGIN alice*admin admin-pw").await;
    let listed: BTreeSet<String> = imap
        .ok("LIST \"\" \"*\"")
        .await
        .iter()
        .filter_map(|l| l.rsplit(' ').next().map(|n| n.trim().to_owned()))
        .collect();
    for folder in &spec.folders {
        let name = if folder.is_empty() {
            "INBOX".to_owned()
        } else {
            folder.join("/")
        };
        assert!(listed.contains(&name), "{name} not in {listed:?}");
        let status = imap.ok(&format!("STATUS \"{name}\" (MESSAGES)")).await.concat();
        let expected = summary.per_folder.get(folder).copied().unwrap_or(0);
        assert!(
            status.contains(&format!("(MESSAGES {expected})")),
            "{name}: {status}, expected {expected}"
        );
    }
}

fn message(folder: &[&str], flags: &[&str], date: &str, body: &str) -> GeneratedMessage {
    GeneratedMessage {
        folder: folder.iter().map(|s| s.to_string()).collect(),
        raw: format!("From: a@example.com\r\nTo: b@example.com\r\nSubject: test\r\n\r\n{body}\r\n").into_bytes(),
        flags: flags.iter().map(|s| s.to_string()).collect(),
        internal_date: DateTime::parse_from_rfc3339(date).expect("date"),
    }
}

/// (INTERNALDATE, flags without \Recent, BODY[]) of every message in the mailbox.
async fn fetch_all<S: AsyncRead + AsyncWrite + Unpin>(
    imap: &mut Imap<S>,
    mailbox: &str,
) -> Vec<(DateTime<FixedOffset>, BTreeSet<String>, Vec<u8>)> {
    imap.ok(&format!("SELECT \"{mailbox}\"")).await;
    let (untagged, status) = imap.command("FETCH 1:* (INTERNALDATE FLAGS BODY.PEEK[])").await;
    assert!(status.starts_with("OK"), "{status}");
    untagged
        .iter()
        .filter(|r| r.windows(6).any(|w| w == b"FETCH "))
        .map(|r| {
            let text = String::from_utf8_lossy(r);
            let date = text.split("INTERNALDATE \"").nth(1).expect("INTERNALDATE");
            let date = DateTime::parse_from_str(&date[..26], "%d-%b-%Y %H:%M:%S %z").expect("parse INTERNALDATE");
            let flags = text.split("FLAGS (").nth(1).expect("FLAGS");
            let flags = flags[..flags.find(')').expect("flags end")]
                .split_whitespace()
                .filter(|f| *f != "\\Recent")
                .map(str::to_owned)
                .collect();
            let marker = b"BODY[] {";
            let at = r.windows(marker.len()).position(|w| w == marker).expect("BODY[]");
            let open = at + marker.len();
            let close = open + r[open..].iter().position(|&b| b == b'}').expect("}");
            let len: usize = std::str::from_utf8(&r[open..close]).expect("len").parse().expect("len");
            let body = r[close + 3..close + 3 + len].to_vec();
            (date, flags, body)
        })
        .collect()
}

fn flag_set(flags: &[&str]) -> BTreeSet<String> {
    flags.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn filled_messages_keep_internaldate_flags_and_bytes() {
    let dovecot = Dovecot::start(config_with_master()).expect("start dovecot");
    let maildir = dovecot.maildir("alice");
    let first = vec![
        message(
            &[],
            &["\\Seen", "\\Flagged", "$Forwarded"],
            "2019-03-04T05:06:07+05:30",
            "one",
        ),
        message(
            &[],
            &["\\Answered", "\\Draft", "Custom"],
            "2012-12-31T23:59:59-08:00",
            "two",
        ),
        message(&["Archive", "Ünïcode"], &["\\Deleted"], "2020-02-29T12:00:00Z", "three"),
    ];
    fill_maildir(&maildir, &first).expect("fill");

    let mut imap = connect(&dovecot).await;
    imap.ok("LOGIN alice alice-pw").await;
    let inbox = fetch_all(&mut imap, "INBOX").await;
    assert_eq!(inbox.len(), 2);
    for ((date, flags, body), expected) in inbox.iter().zip(&first) {
        assert_eq!(date, &expected.internal_date, "same instant");
        assert_eq!(flags, &expected.flags.iter().cloned().collect());
        assert_eq!(body, &expected.raw);
    }
    // Modified UTF-7 on disk and on the wire.
    let archived = fetch_all(&mut imap, "Archive/&ANw-n&AO8-code").await;
    assert_eq!(archived[0].1, flag_set(&["\\Deleted"]));

    // A second fill into a mailbox Dovecot has indexed, with a new keyword.
    let second = [message(
        &[],
        &["$Label1", "$Forwarded"],
        "2021-06-01T08:00:00+02:00",
        "four",
    )];
    fill_maildir(&maildir, &second).expect("second fill");
    let inbox = fetch_all(&mut imap, "INBOX").await;
    assert_eq!(inbox.len(), 3);
    assert_eq!(inbox[0].1, flag_set(&["\\Seen", "\\Flagged", "$Forwarded"]));
    assert_eq!(inbox[2].0, second[0].internal_date);
    assert_eq!(inbox[2].1, flag_set(&["$Label1", "$Forwarded"]));
}

#[tokio::test]
async fn courier_style_namespace_with_special_use() {
    let dovecot = Dovecot::start(DovecotConfig {
        separator: '.',
        inbox_prefix: "INBOX.".into(),
        special_use: true,
        ..config_with_master()
    })
    .expect("start dovecot");
    let msgs = [message(&["Archive", "2019"], &[], "2019-05-05T10:00:00Z", "old")];
    fill_maildir(&dovecot.maildir("bob"), &msgs).expect("fill");

    let mut imap = connect(&dovecot).await;
    imap.ok("LOGIN bob bob-pw").await;
    let list = imap.ok("LIST \"\" \"*\"").await.concat();
    for expected in [
        "\\Sent) \".\" INBOX.Sent",
        "\\Drafts) \".\" INBOX.Drafts",
        "\\Trash) \".\" INBOX.Trash",
        "\\Junk) \".\" INBOX.Junk",
        "\\Archive) \".\" INBOX.Archive",
        "\".\" INBOX.Archive.2019",
    ] {
        assert!(list.contains(expected), "{expected} not in {list}");
    }
    let status = imap.ok("STATUS INBOX.Archive.2019 (MESSAGES)").await.concat();
    assert!(status.contains("(MESSAGES 1)"), "{status}");
}

fn tls_connector(ca: &std::path::Path) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).expect("read CA"))
        .expect("add CA");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn tls_implicit_and_starttls() {
    let pki_dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::generate(pki_dir.path()).expect("generate PKI");
    let dovecot = Dovecot::start(DovecotConfig {
        tls: Some(pki.tls_files()),
        ..config_with_master()
    })
    .expect("start dovecot");
    let imaps = dovecot.imaps_port().expect("imaps port");
    let trusted = tls_connector(pki.ca_pem());

    for name in ["localhost", "127.0.0.1"] {
        let tcp = TcpStream::connect((dovecot.host(), imaps)).await.expect("connect");
        let server = ServerName::try_from(name).expect("server name");
        let tls = trusted.connect(server, tcp).await.expect("TLS handshake");
        let (mut imap, greeting) = Imap::connect(tls).await;
        assert!(greeting.starts_with("* OK"), "{greeting}");
        imap.ok("LOGIN alice alice-pw").await;
    }

    let tcp = TcpStream::connect((dovecot.host(), imaps)).await.expect("connect");
    let server = ServerName::try_from("localhost").expect("server name");
    let wrong = tls_connector(pki.wrong_ca_pem()).connect(server.clone(), tcp).await;
    assert!(wrong.is_err(), "a server signed by another CA must be rejected");

    let mut imap = connect(&dovecot).await;
    let caps = imap.ok("CAPABILITY").await.concat();
    assert!(caps.contains("STARTTLS"), "{caps}");
    imap.ok("STARTTLS").await;
    let tls = trusted
        .connect(server, imap.into_inner())
        .await
        .expect("STARTTLS handshake");
    let mut imap = Imap {
        stream: BufReader::new(tls),
        tag: 10,
    };
    imap.ok("LOGIN bob bob-pw").await;
}

#[test]
fn start_failure_reports_the_dovecot_log() {
    let missing = std::path::PathBuf::from("/nonexistent/cutover-cert.pem");
    let err = Dovecot::start(DovecotConfig {
        tls: Some(TlsFiles {
            cert: missing.clone(),
            key: missing,
        }),
        ..DovecotConfig::default()
    })
    .expect_err("dovecot cannot start without its certificate");
    let text = err.to_string();
    assert!(matches!(err, Error::DovecotExited { .. }), "{text}");
    assert!(text.contains("cutover-cert.pem"), "{text}");
}

/// Processes whose command line mentions `needle` (titles of Dovecot's
/// children carry the instance name, the master's the config path).
fn processes_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            entry.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(needle).then_some(cmdline)
        })
        .collect()
}

#[tokio::test]
async fn drop_stops_every_process_and_removes_the_directory() {
    let dovecot = Dovecot::start(config_with_master()).expect("start dovecot");
    let mut imap = connect(&dovecot).await;
    imap.ok("LOGIN alice alice-pw").await;
    imap.ok("SELECT INBOX").await;
    let instance = dovecot.instance_name().to_owned();
    let dir = dovecot.temp_dir().to_path_buf();
    assert!(processes_mentioning(&instance).len() > 1);

    drop(dovecot);
    assert_eq!(processes_mentioning(&instance), Vec::<String>::new());
    assert_eq!(processes_mentioning(&dir.display().to_string()), Vec::<String>::new());
    assert!(!dir.exists());
    drop(imap);
}

/// APPENDs `body` with LITERAL+ and returns the tagged status.
async fn append<S: AsyncRead + AsyncWrite + Unpin>(imap: &mut Imap<S>, mailbox: &str, body: &[u8]) -> String {
    let body = String::from_utf8(body.to_vec()).expect("ASCII test message");
    imap.command(&format!("APPEND \"{mailbox}\" {{{}+}}\r\n{body}", body.len()))
        .await
        .1
}

/// Whether the server closed this connection: a NOOP gets no answer.
async fn is_closed<S: AsyncRead + AsyncWrite + Unpin>(imap: &mut Imap<S>) -> bool {
    let _ = imap.stream.get_mut().write_all(b"x NOOP\r\n").await;
    let mut line = Vec::new();
    matches!(
        tokio::time::timeout(IO_TIMEOUT, imap.stream.read_until(b'\n', &mut line)).await,
        Ok(Ok(0) | Err(_))
    )
}

fn filler(kib: usize) -> Vec<u8> {
    let mut raw = b"From: a@example.com\r\nSubject: filler\r\n\r\n".to_vec();
    while raw.len() < kib * 1024 {
        raw.extend_from_slice(b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n");
    }
    raw
}

#[tokio::test]
async fn killed_and_restarted_keeps_ports_mail_and_users() {
    let mut dovecot = Dovecot::start(config_with_master()).expect("start dovecot");
    fill_maildir(
        &dovecot.maildir("alice"),
        &[message(&[], &["\\Seen"], "2020-01-01T00:00:00Z", "kept")],
    )
    .expect("fill");
    let (port, instance) = (dovecot.imap_port(), dovecot.instance_name().to_owned());
    let mut open = connect(&dovecot).await;
    open.ok("LOGIN alice alice-pw").await;
    open.ok("SELECT INBOX").await;

    dovecot.kill().expect("kill");
    assert!(!dovecot.is_running().expect("status"));
    assert_eq!(
        processes_mentioning(&instance),
        Vec::<String>::new(),
        "nothing survives a kill"
    );
    assert!(
        TcpStream::connect((dovecot.host(), port)).await.is_err(),
        "nobody listens while it is down"
    );
    assert!(is_closed(&mut open).await, "the open connection died with the server");

    // What a process killed while it held the folder's lock leaves behind;
    // Dovecot would wait for it to go stale (two minutes) on every SELECT.
    let lock = dovecot.maildir("alice").join("dovecot-uidlist.lock");
    std::fs::write(&lock, b"").expect("stale lock");
    dovecot.restart().expect("restart");
    assert!(!lock.exists(), "restart removes dotlocks of the dead server");
    assert!(dovecot.is_running().expect("status"));
    assert_eq!(dovecot.imap_port(), port, "same port");
    let mut imap = connect(&dovecot).await;
    imap.ok("LOGIN bob*admin admin-pw").await;
    let mut imap = connect(&dovecot).await;
    imap.ok("LOGIN alice alice-pw").await;
    let inbox = fetch_all(&mut imap, "INBOX").await;
    assert_eq!(inbox.len(), 1, "the mail survived");
    assert_eq!(inbox[0].1, flag_set(&["\\Seen"]));

    // A graceful restart of a running server works the same way.
    dovecot.restart().expect("restart a running server");
    connect(&dovecot).await.ok("LOGIN alice alice-pw").await;
}

#[tokio::test]
async fn quota_refuses_appends_until_it_is_raised() {
    let mut dovecot = Dovecot::start(DovecotConfig {
        quota: Some(Quota {
            storage_bytes: 100 * 1024,
            max_mail_size: Some(60 * 1024),
        }),
        ..config_with_master()
    })
    .expect("start dovecot");
    let mut imap = connect(&dovecot).await;
    let caps = imap.ok("LOGIN alice alice-pw").await.concat() + &imap.ok("CAPABILITY").await.concat();
    assert!(caps.contains("QUOTA"), "{caps}");
    let quota = imap.ok("GETQUOTAROOT INBOX").await.concat();
    assert!(quota.contains("STORAGE 0 100"), "{quota}");

    let fits = filler(40);
    assert!(append(&mut imap, "INBOX", &fits).await.starts_with("OK"));
    assert!(append(&mut imap, "INBOX", &fits).await.starts_with("OK"));
    let refused = append(&mut imap, "INBOX", &fits).await;
    assert!(refused.starts_with("NO [OVERQUOTA]"), "{refused}");
    let too_big = append(&mut imap, "INBOX", &filler(70)).await;
    assert!(too_big.starts_with("NO"), "{too_big}");
    eprintln!("over quota: {refused}\nover the size limit: {too_big}");

    dovecot
        .set_quota(Some(Quota {
            storage_bytes: 1024 * 1024,
            max_mail_size: None,
        }))
        .expect("raise quota");
    let mut imap = connect(&dovecot).await;
    imap.ok("LOGIN alice alice-pw").await;
    let quota = imap.ok("GETQUOTAROOT INBOX").await.concat();
    assert!(quota.contains(" 1024)"), "the new limit holds: {quota}");
    assert!(append(&mut imap, "INBOX", &fits).await.starts_with("OK"));
    assert!(append(&mut imap, "INBOX", &filler(70)).await.starts_with("OK"));
    assert_eq!(fetch_all(&mut imap, "INBOX").await.len(), 4);

    dovecot.set_quota(None).expect("remove quota");
    let mut imap = connect(&dovecot).await;
    imap.ok("LOGIN alice alice-pw").await;
    assert!(!imap.ok("CAPABILITY").await.concat().contains("QUOTA"));
}

#[tokio::test]
async fn doveadm_works_on_the_servers_mail() {
    let dovecot = Dovecot::start(config_with_master()).expect("start dovecot");
    let msgs = [message(&["Archive"], &[], "2019-05-05T10:00:00Z", "old")];
    fill_maildir(&dovecot.maildir("alice"), &msgs).expect("fill");
    let listed = dovecot.doveadm(&["mailbox", "list", "-u", "alice"]).expect("list");
    assert!(listed.lines().any(|l| l == "Archive"), "{listed}");
    dovecot
        .doveadm(&["mailbox", "delete", "-u", "alice", "Archive"])
        .expect("delete");
    let listed = dovecot.doveadm(&["mailbox", "list", "-u", "alice"]).expect("list");
    assert!(!listed.lines().any(|l| l == "Archive"), "{listed}");
    let err = dovecot
        .doveadm(&["mailbox", "delete", "-u", "alice", "Nonexistent"])
        .expect_err("no such folder");
    assert!(err.to_string().contains("doveadm mailbox delete"), "{err}");
}
