//! One authenticated IMAP connection and the commands the engine needs.
//!
//! async-imap does the framing and parsing; commands are sent here with our
//! own tags and every tagged status is checked, because async-imap's
//! streaming commands ignore a tagged NO/BAD and its `append` waits for a
//! synchronising literal and drops APPENDUID.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_imap::imap_proto::rfc4315::UidSetMember;
use async_imap::imap_proto::{AttributeValue, MailboxDatum, NameAttribute, Response, ResponseCode, Status};
use chrono::{DateTime, FixedOffset};
use tokio::io::AsyncWriteExt;

use super::codec;
use super::transport::{connect_tcp, start_tls, TlsOptions, Transport};
use super::uids::{FlagOperation, SearchKey, UidSet};
use crate::credential::{Credential, Token};
use crate::endpoint::{AuthMethod, ImapEndpoint, Secret, Security};
use crate::error::{Error, ErrorKind, Result, ThrottleReason};
use crate::message::{Flags, Message};
use crate::throttle::ThrottleRecorder;

/// Connection settings shared by every session of a run.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Certificate checking.
    pub tls: TlsOptions,
    /// Limit for TCP connect and TLS handshake.
    pub connect_timeout: Duration,
    /// Limit for each server response, and for each write to a server
    /// that stopped reading.
    pub io_timeout: Duration,
    /// The longest a server's suggested backoff (`Suggested Backoff Time:
    /// N milliseconds`) is honoured; a longer one waits this long.
    pub max_backoff: Duration,
    /// Where sessions report throttling (what the server said, how long
    /// they paused).
    pub throttle: Arc<ThrottleRecorder>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            tls: TlsOptions::default(),
            connect_timeout: Duration::from_secs(20),
            io_timeout: Duration::from_secs(120),
            max_backoff: Duration::from_secs(300),
            throttle: Arc::default(),
        }
    }
}

/// RFC 6154 special-use roles a folder can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SpecialUse {
    /// `\Sent`
    Sent,
    /// `\Drafts`
    Drafts,
    /// `\Trash`
    Trash,
    /// `\Junk`
    Junk,
    /// `\Archive`
    Archive,
    /// `\All` (virtual; never copied)
    All,
    /// `\Flagged` (virtual; never copied)
    Flagged,
    /// `\Important` (RFC 8457; Gmail's `[Gmail]/Important`, virtual; never copied)
    Important,
}

impl SpecialUse {
    /// Virtual folders: every message in them is also in a real folder
    /// (Gmail's All Mail, Starred and Important), so copying them would
    /// copy each message twice.
    pub fn is_virtual(self) -> bool {
        matches!(self, Self::All | Self::Flagged | Self::Important)
    }
}

/// A folder as LIST reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderInfo {
    /// The name in UTF-8, with the server's separator.
    pub name: String,
    /// The hierarchy separator, if the server has one.
    pub separator: Option<char>,
    /// The folder's special-use role, if the server declares one.
    pub special_use: Option<SpecialUse>,
    /// `\Noselect` or `\NonExistent`: a hierarchy node without messages.
    pub selectable: bool,
}

/// What SELECT/EXAMINE says about a folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SelectedFolder {
    /// UIDVALIDITY: when it changes, every UID known before is void.
    pub uid_validity: u32,
    /// The UID the next message will get.
    pub uid_next: u32,
    /// Number of messages.
    pub exists: u32,
    /// HIGHESTMODSEQ, when the server supports CONDSTORE.
    pub highest_modseq: Option<u64>,
}

impl SelectedFolder {
    pub(super) fn apply(&mut self, value: CodeValue) {
        match value {
            CodeValue::Exists(v) => self.exists = v,
            CodeValue::UidValidity(v) => self.uid_validity = v,
            CodeValue::UidNext(v) => self.uid_next = v,
            CodeValue::HighestModSeq(v) => self.highest_modseq = Some(v),
            CodeValue::Other => {}
        }
    }
}

/// What a FETCH response carried; fields not asked for are `None`.
#[derive(Debug, Clone, Default)]
pub struct FetchRecord {
    /// The message UID.
    pub uid: u32,
    /// FLAGS.
    pub flags: Option<Flags>,
    /// INTERNALDATE.
    pub internal_date: Option<DateTime<FixedOffset>>,
    /// RFC822.SIZE.
    pub size: Option<u32>,
    /// MODSEQ.
    pub modseq: Option<u64>,
    /// BODY[] (whole message).
    pub body: Option<Vec<u8>>,
    /// BODY[HEADER.FIELDS (...)].
    pub header: Option<Vec<u8>>,
}

/// Attributes a FETCH asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchItems {
    /// Whole message, flags, date, size: for copying.
    Full,
    /// The headers a fingerprint needs, flags, date and size: for dedup and verify.
    Fingerprint,
    /// Flags (and MODSEQ with CONDSTORE): for flag sync.
    Flags,
    /// Sizes only: for sizing a mailbox.
    Size,
}

/// The header fields [`crate::fingerprint`] reads.
pub const FINGERPRINT_FIELDS: &str = "MESSAGE-ID DATE FROM SUBJECT RECEIVED";

/// An authenticated IMAP session.
pub struct ImapSession {
    inner: async_imap::Session<Transport>,
    endpoint: String,
    capabilities: HashSet<String>,
    /// The SASL mechanisms (`AUTH=`) offered before login, for the preflight.
    auth_offered: Vec<String>,
    io_timeout: Duration,
    next_tag: u32,
    /// The server said BYE: nothing more can be sent on this session.
    closed: bool,
    /// `ENABLE QRESYNC` was sent (once per session, on first need).
    pub(super) qresync_enabled: bool,
    /// See [`ConnectOptions::max_backoff`].
    max_backoff: Duration,
    /// See [`ConnectOptions::throttle`].
    throttle: Arc<ThrottleRecorder>,
    /// The server said `OK [THROTTLED]`: pause before the next command.
    slow_down: bool,
    /// LOGOUT was sent: its BYE is expected, not a session ending early.
    logging_out: bool,
}

/// Most commands [`ImapSession::run_pipelined`] has in flight: a few
/// kilobytes each way, far below what either side buffers, so neither can
/// block the other.
const PIPELINE: usize = 64;

/// One answer while pipelined commands are in flight.
enum Pipelined<T> {
    Item(T),
    Done(String, Completion),
    Bye(String),
    SlowDown,
    Other,
}

/// What one server response means to the command waiting for it.
enum Event<T> {
    Item(T),
    Done(Completion),
    Ignore,
    /// An untagged `OK [THROTTLED]`.
    SlowDown,
}

/// The tagged completion of a command.
struct Completion {
    ok: bool,
    text: String,
    append_uids: Vec<u32>,
}

impl Completion {
    fn new(status: &Status, outcome: &async_imap::imap_proto::Outcome<'_>) -> Self {
        Self {
            ok: matches!(status, Status::Ok),
            text: outcome_text(outcome.code.as_ref(), outcome.information.as_deref()),
            append_uids: match &outcome.code {
                Some(ResponseCode::AppendUid(_, set)) => expand_uid_set(set.as_slice()),
                _ => Vec::new(),
            },
        }
    }
}

impl ImapSession {
    /// Connects, negotiates TLS as the endpoint asks and logs in. A
    /// password or token is never sent in cleartext unless the endpoint says
    /// `?tls=none`: `imap://` without STARTTLS on offer is an error. The
    /// credential is a password or, with `auth=xoauth2|oauthbearer`, a
    /// token source shared by the account's connections.
    pub async fn connect(
        endpoint: &ImapEndpoint,
        password: impl Into<Credential>,
        options: &ConnectOptions,
    ) -> Result<Self> {
        let result = Self::connect_and_login(endpoint, password.into(), options).await;
        // A greeting or login refused for throttling (Gmail's `[ALERT] Too
        // many simultaneous connections`) counts like a refused command.
        if let Err(Error::Imap {
            kind: ErrorKind::Throttled,
            endpoint,
            detail,
            ..
        }) = &result
        {
            let reason = codec::throttle_reason(detail).unwrap_or(ThrottleReason::Limit);
            options.throttle.event(endpoint, reason);
        }
        result
    }

    async fn connect_and_login(
        endpoint: &ImapEndpoint,
        credential: Credential,
        options: &ConnectOptions,
    ) -> Result<Self> {
        let address = endpoint.address();
        // Before connecting: a token command that fails needs no server.
        let secret = credential.current().await?;
        let tcp = connect_tcp(&endpoint.host, endpoint.port, options.connect_timeout).await?;
        let transport = match endpoint.security {
            Security::Implicit => {
                start_tls(
                    tcp,
                    &endpoint.host,
                    endpoint.port,
                    &options.tls,
                    options.connect_timeout,
                )
                .await?
            }
            Security::StartTls | Security::Plain => Transport::Plain(tcp),
        };
        let mut connection = PreLogin {
            client: async_imap::Client::new(transport),
            address: address.clone(),
            timeout: options.io_timeout,
            next_tag: 0,
        };
        let mut capabilities = match connection.greeting().await? {
            Some(announced) => announced,
            // Many servers announce nothing in the greeting: ask.
            None => connection.capabilities().await?,
        };
        if endpoint.security == Security::StartTls {
            if !capabilities.contains("STARTTLS") {
                return Err(Error::Tls {
                    endpoint: address,
                    detail: "the server does not offer STARTTLS, and the password is not sent in cleartext: \
                             use imaps://, or add ?tls=none to the URL to allow cleartext on a trusted network"
                        .into(),
                });
            }
            connection = connection.starttls(endpoint, options).await?;
            // RFC 3501 6.2.1: what the server said before TLS is void.
            capabilities = connection.capabilities().await?;
        }
        if endpoint.auth == AuthMethod::Login && capabilities.contains("LOGINDISABLED") {
            return Err(Error::Auth {
                endpoint: address,
                user: endpoint.user.clone(),
                detail: "the server disables LOGIN on this connection (LOGINDISABLED): use TLS or ?auth=plain".into(),
            });
        }
        if endpoint.auth.is_oauth() && !capabilities.contains(&format!("AUTH={}", endpoint.auth.mechanism())) {
            return Err(Error::Auth {
                endpoint: address,
                user: endpoint.user.clone(),
                detail: format!(
                    "the server does not offer AUTHENTICATE {0} (no AUTH={0} capability): use another auth= method",
                    endpoint.auth.mechanism()
                ),
            });
        }
        let auth_offered = auth_mechanisms(&capabilities);
        let login = login(connection.client, endpoint, &credential, secret);
        let (inner, announced) = match tokio::time::timeout(options.io_timeout, login).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(Error::Timeout {
                    endpoint: address,
                    seconds: options.io_timeout.as_secs(),
                    during: "login".into(),
                })
            }
        };
        let mut session = Self {
            inner,
            endpoint: address,
            capabilities: HashSet::new(),
            auth_offered,
            io_timeout: options.io_timeout,
            next_tag: 0,
            closed: false,
            qresync_enabled: false,
            max_backoff: options.max_backoff,
            throttle: options.throttle.clone(),
            slow_down: false,
            logging_out: false,
        };
        // Capabilities change with login (RFC 3501 6.2.3): the login's OK
        // usually lists them (one round trip less per account); else ask.
        session.capabilities = match announced {
            Some(capabilities) => capabilities,
            None => session.fetch_capabilities().await?,
        };
        Ok(session)
    }

    /// Whether the server ended the session (BYE): the caller must connect again.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// `host:port`, for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Whether the server announced a capability (case-insensitive).
    pub fn has_capability(&self, name: &str) -> bool {
        self.capabilities.contains(&name.to_ascii_uppercase())
    }

    /// Every capability announced after login, upper-cased.
    pub(super) fn capability_names(&self) -> impl Iterator<Item = &str> {
        self.capabilities.iter().map(String::as_str)
    }

    /// The SASL mechanisms the server offered before login (`AUTH=…`), sorted.
    pub fn auth_offered(&self) -> &[String] {
        &self.auth_offered
    }

    async fn fetch_capabilities(&mut self) -> Result<HashSet<String>> {
        let lists = self
            .run("CAPABILITY", "CAPABILITY", |response, _| capability_list(response))
            .await?;
        Ok(lists.into_iter().flatten().collect())
    }

    /// Lists every folder with its special-use role.
    pub async fn list_folders(&mut self) -> Result<Vec<FolderInfo>> {
        let command = if self.has_capability("SPECIAL-USE") {
            "LIST \"\" \"*\" RETURN (SPECIAL-USE)"
        } else {
            "LIST \"\" \"*\""
        };
        self.run(command, "LIST", |response, raw| match response {
            Response::MailboxData(MailboxDatum::List(list)) => Some(folder_info(list, raw)),
            _ => None,
        })
        .await
    }

    /// Creates a folder; an existing one is not an error.
    pub async fn create_folder(&mut self, name: &str) -> Result<()> {
        match self
            .run(&format!("CREATE {}", codec::mailbox(name)), "CREATE", |_, _| None::<()>)
            .await
        {
            Err(Error::Imap { detail, .. }) if detail.to_ascii_uppercase().contains("[ALREADYEXISTS]") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Opens a folder read-only (EXAMINE) or read-write (SELECT), with
    /// CONDSTORE when the server has it.
    pub async fn open_folder(&mut self, name: &str, read_only: bool) -> Result<SelectedFolder> {
        let verb = if read_only { "EXAMINE" } else { "SELECT" };
        let condstore = if self.has_capability("CONDSTORE") {
            " (CONDSTORE)"
        } else {
            ""
        };
        let command = format!("{verb} {}{condstore}", codec::mailbox(name));
        let values = self
            .run(&command, verb, |response, _| match response {
                Response::MailboxData(MailboxDatum::Exists(n)) => Some(CodeValue::Exists(*n)),
                Response::Data { outcome, .. } => outcome.code.as_ref().map(code_value),
                _ => None,
            })
            .await?;
        let mut folder = SelectedFolder::default();
        for value in values {
            folder.apply(value);
        }
        Ok(folder)
    }

    /// UIDs in the selected folder matching a search key, ascending.
    pub async fn uid_search(&mut self, key: &SearchKey) -> Result<Vec<u32>> {
        let mut uids = Vec::new();
        for criteria in key.render() {
            let found = self
                .run(
                    &format!("UID SEARCH {criteria}"),
                    "SEARCH",
                    |response, _| match response {
                        Response::MailboxData(MailboxDatum::Search(found)) => Some(found.clone()),
                        _ => None,
                    },
                )
                .await?;
            uids.extend(found.into_iter().flatten());
        }
        uids.sort_unstable();
        uids.dedup();
        Ok(uids)
    }

    /// Starts a `UID FETCH` of `uid_set`; read the results with
    /// [`ImapSession::fetch_next`] until it returns `None`.
    /// A long set is fetched with one command after the other.
    pub async fn fetch_start(
        &mut self,
        set: &UidSet,
        items: FetchItems,
        changed_since: Option<u64>,
    ) -> Result<FetchHandle> {
        let mut rest = set.render();
        rest.reverse();
        let mut handle = FetchHandle {
            tag: String::new(),
            items,
            changed_since,
            rest,
            finished: true,
            part: String::new(),
            delivered: 0,
            attempt: 0,
        };
        self.fetch_next_part(&mut handle).await?;
        Ok(handle)
    }

    /// Sends the FETCH of the handle's next part of the set, if any is left.
    async fn fetch_next_part(&mut self, handle: &mut FetchHandle) -> Result<()> {
        match handle.rest.pop() {
            Some(part) => {
                handle.tag = self
                    .send(&fetch_command(&part, handle.items, handle.changed_since))
                    .await?;
                handle.finished = false;
                handle.part = part;
                handle.delivered = 0;
                handle.attempt = 0;
            }
            None => handle.finished = true,
        }
        Ok(())
    }

    /// The next message of a FETCH, or `None` once the server said OK.
    /// Untagged FETCHes the server sends on its own (flag changes by other
    /// clients) are skipped.
    pub async fn fetch_next(&mut self, handle: &mut FetchHandle) -> Result<Option<FetchRecord>> {
        if handle.finished {
            return Ok(None);
        }
        let wanted = handle.items;
        loop {
            // Read here rather than through `read`: the body is moved out
            // of the response's buffer below, which needs the response whole.
            let data = match tokio::time::timeout(self.io_timeout, self.inner.read_response()).await {
                Ok(Ok(Some(data))) => data,
                failed => return Err(self.read_error(failed.map(|read| read.map(|_| ())))),
            };
            let step = match data.parsed() {
                Response::Done { tag, status, outcome } if tag.0 == handle.tag => {
                    FetchStep::Done(Completion::new(status, outcome))
                }
                Response::Data {
                    status: Status::Bye,
                    outcome,
                } => FetchStep::Bye(outcome_text(outcome.code.as_ref(), outcome.information.as_deref())),
                response if throttled_ok(response) => FetchStep::SlowDown,
                Response::Fetch(_, attributes) => {
                    let (record, body) = fetch_record_parts(attributes);
                    FetchStep::Record(record, body.and_then(|body| within(data.borrow_owner(), body)))
                }
                _ => FetchStep::Other,
            };
            match step {
                FetchStep::Record(mut record, body) => {
                    if let Some(range) = body {
                        // The body moves out of the read buffer in place: a
                        // 25 MB message is never held twice.
                        let mut raw = data.into_owner();
                        raw.truncate(range.end);
                        bytes::Buf::advance(&mut raw, range.start);
                        record.body = Some(Vec::from(raw));
                    }
                    if record.uid != 0 && is_complete(&record, wanted) {
                        handle.delivered += 1;
                        return Ok(Some(record));
                    }
                }
                FetchStep::Done(done) => {
                    handle.finished = true;
                    self.note_throttled_ok(&done);
                    // A part refused as throttled before it delivered
                    // anything goes again after the pause; once records
                    // came, sending it again would hand them out twice.
                    let throttled = !done.ok && codec::classify_refusal(&done.text, "FETCH") == ErrorKind::Throttled;
                    if throttled && handle.delivered == 0 && handle.attempt < THROTTLE_RETRIES {
                        let _counted = self.refusal(&done.text, "FETCH");
                        self.back_off(&done.text, handle.attempt).await;
                        handle.attempt += 1;
                        handle.tag = self
                            .send(&fetch_command(&handle.part, handle.items, handle.changed_since))
                            .await?;
                        handle.finished = false;
                        continue;
                    }
                    self.check(done, "FETCH")?;
                    self.fetch_next_part(handle).await?;
                    if handle.finished {
                        return Ok(None);
                    }
                }
                FetchStep::Bye(text) => return Err(self.bye(&text)),
                FetchStep::SlowDown => self.slow_down(),
                FetchStep::Other => {}
            }
        }
    }

    /// Fetches all records of a UID set at once (for bounded data:
    /// headers, flags and sizes, never the bodies of a whole folder).
    pub async fn fetch_all(
        &mut self,
        set: &UidSet,
        items: FetchItems,
        changed_since: Option<u64>,
    ) -> Result<Vec<FetchRecord>> {
        let mut records = Vec::new();
        for part in set.render() {
            let command = fetch_command(&part, items, changed_since);
            records.extend(
                self.run(&command, "FETCH", |response, _| match response {
                    Response::Fetch(_, attributes) => Some(fetch_record(attributes)),
                    _ => None,
                })
                .await?,
            );
        }
        Ok(records
            .into_iter()
            .filter(|r| r.uid != 0 && is_complete(r, items))
            .collect())
    }

    /// Appends messages to a folder in one round trip where the server
    /// allows (MULTIAPPEND with LITERAL+), and returns the UIDs the server
    /// gave them (empty without UIDPLUS). MULTIAPPEND is all-or-nothing, so
    /// a refusal means none of the batch was stored.
    pub async fn append(&mut self, folder: &str, messages: &[&Message]) -> Result<Vec<u32>> {
        let mut attempt = 0;
        loop {
            match self.append_once(folder, messages).await {
                // A size refusal in throttling's clothes (`NO [LIMIT]` about
                // the size) is not sent again: it can never fit.
                Err(e)
                    if e.kind() == ErrorKind::Throttled
                        && attempt < THROTTLE_RETRIES
                        && !self.closed
                        && !self.refused_for_size(&e, messages) =>
                {
                    let Error::Imap { detail, .. } = &e else {
                        return Err(e);
                    };
                    // Nothing of a refused APPEND was stored: send it again.
                    self.back_off(detail, attempt).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn append_once(&mut self, folder: &str, messages: &[&Message]) -> Result<Vec<u32>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let literal_plus = self.has_capability("LITERAL+");
        if messages.len() > 1 && !self.has_capability("MULTIAPPEND") {
            let mut uids = Vec::with_capacity(messages.len());
            for message in messages {
                uids.extend(Box::pin(self.append_once(folder, &[message])).await?);
            }
            return Ok(uids);
        }
        self.pause_if_asked().await;
        let tag = self.tag();
        let mailbox = codec::mailbox(folder);
        let mut line = format!("{tag} APPEND {mailbox}").into_bytes();
        for message in messages {
            let plus = if literal_plus { "+" } else { "" };
            line.extend_from_slice(
                format!(
                    " {} {} {{{}{plus}}}\r\n",
                    codec::flag_list(&message.flags),
                    codec::internal_date(&message.internal_date),
                    message.raw.len()
                )
                .as_bytes(),
            );
            self.write(&line).await?;
            line.clear();
            if !literal_plus {
                self.await_continuation(&tag).await?;
            }
            self.write(&message.raw).await?;
        }
        self.write(b"\r\n").await?;
        self.flush().await?;
        let done = self.until_done(&tag).await?;
        if !done.ok {
            return Err(self.refusal(&done.text, "APPEND"));
        }
        Ok(done.append_uids)
    }

    /// Adds, removes or replaces flags of messages in the selected folder.
    pub async fn uid_store(&mut self, set: &UidSet, operation: FlagOperation, flags: &Flags) -> Result<()> {
        self.uid_store_all(&[(set.clone(), operation, flags.clone())]).await
    }

    /// Several flag changes in the selected folder, all sent before the
    /// first answer is read: one round trip for a folder's flag sync. A
    /// change the server refuses as throttled is sent again on its own,
    /// after a pause; any other refusal is the error.
    pub async fn uid_store_all(&mut self, stores: &[(UidSet, FlagOperation, Flags)]) -> Result<()> {
        let commands: Vec<String> = stores
            .iter()
            .flat_map(|(set, operation, flags)| {
                set.render()
                    .into_iter()
                    .map(move |part| format!("UID STORE {part} {} {}", operation.verb(), codec::flag_list(flags)))
            })
            .collect();
        let (_, refused) = self.run_pipelined(&commands, |_, _| None::<()>).await?;
        for (command, text) in commands.iter().zip(refused) {
            let Some(text) = text else { continue };
            let error = self.refusal(&text, "STORE");
            if error.kind() != ErrorKind::Throttled {
                return Err(error);
            }
            self.back_off(&text, 0).await;
            self.run(command, "STORE", |_, _| None::<()>).await?;
        }
        Ok(())
    }

    /// Marks messages `\Deleted` and expunges exactly those (UIDPLUS), so
    /// messages someone else flagged for deletion are left alone.
    pub async fn delete_messages(&mut self, uids: &[u32]) -> Result<()> {
        if uids.is_empty() {
            return Ok(());
        }
        let set = UidSet::Uids(uids.to_vec());
        self.uid_store(&set, FlagOperation::Add, &Flags::new(["\\Deleted"]))
            .await?;
        for part in set.render() {
            let command = if self.has_capability("UIDPLUS") {
                format!("UID EXPUNGE {part}")
            } else {
                "EXPUNGE".to_string()
            };
            self.run(&command, "EXPUNGE", |_, _| None::<()>).await?;
        }
        Ok(())
    }

    /// Closes the connection politely. Errors are irrelevant at that point.
    pub async fn logout(mut self) {
        self.logging_out = true;
        if let Ok(tag) = self.send("LOGOUT").await {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.until_done(&tag)).await;
        }
    }

    /// Sends a command and collects what `item` picks out of its untagged
    /// responses. A throttling refusal (`NO [LIMIT]` and the like) leaves
    /// the session usable, so the command is sent again after a growing
    /// pause, a few times, before the error is returned.
    pub(super) async fn run<T>(
        &mut self,
        command: &str,
        name: &str,
        mut item: impl FnMut(&Response<'_>, &[u8]) -> Option<T>,
    ) -> Result<Vec<T>> {
        let mut attempt = 0;
        loop {
            let tag = self.send(command).await?;
            let mut items = Vec::new();
            let done = loop {
                match self.event(&tag, &mut item).await? {
                    Event::Item(found) => items.push(found),
                    Event::Done(done) => break done,
                    Event::Ignore | Event::SlowDown => {}
                }
            };
            if done.ok {
                return Ok(items);
            }
            let error = self.refusal(&done.text, name);
            if error.kind() != ErrorKind::Throttled || attempt >= THROTTLE_RETRIES {
                return Err(error);
            }
            tracing::debug!(endpoint = %self.endpoint, command = name, attempt, "throttled, sending again");
            self.back_off(&done.text, attempt).await;
            attempt += 1;
        }
    }

    /// Sends commands without waiting for each answer (at most
    /// [`PIPELINE`] in flight), and collects what `item` picks out of the
    /// untagged answers of all of them. Returns those and, per command, the
    /// refusal text of the ones the server refused.
    pub(super) async fn run_pipelined<T>(
        &mut self,
        commands: &[String],
        mut item: impl FnMut(&Response<'_>, &[u8]) -> Option<T>,
    ) -> Result<(Vec<T>, Vec<Option<String>>)> {
        let mut items = Vec::new();
        let mut refused = vec![None; commands.len()];
        for (chunk_index, chunk) in commands.chunks(PIPELINE).enumerate() {
            self.pause_if_asked().await;
            let mut pending: HashMap<String, usize> = HashMap::new();
            for (offset, command) in chunk.iter().enumerate() {
                let tag = self.tag();
                self.write(format!("{tag} {command}\r\n").as_bytes()).await?;
                pending.insert(tag, chunk_index * PIPELINE + offset);
            }
            self.flush().await?;
            while !pending.is_empty() {
                let step = self
                    .read(|response, raw| match response {
                        Response::Done { tag, status, outcome } => {
                            Pipelined::Done(tag.0.to_string(), Completion::new(status, outcome))
                        }
                        Response::Data {
                            status: Status::Bye,
                            outcome,
                        } => Pipelined::Bye(outcome_text(outcome.code.as_ref(), outcome.information.as_deref())),
                        response if throttled_ok(response) => Pipelined::SlowDown,
                        other => item(other, raw).map_or(Pipelined::Other, Pipelined::Item),
                    })
                    .await?;
                match step {
                    Pipelined::Item(found) => items.push(found),
                    Pipelined::Done(tag, done) => {
                        self.note_throttled_ok(&done);
                        if let Some(index) = pending.remove(&tag) {
                            if let Some(slot) = refused.get_mut(index).filter(|_| !done.ok) {
                                *slot = Some(done.text);
                            }
                        }
                    }
                    Pipelined::Bye(text) => return Err(self.bye(&text)),
                    Pipelined::SlowDown => self.slow_down(),
                    Pipelined::Other => {}
                }
            }
        }
        Ok((items, refused))
    }

    pub(super) fn tag(&mut self) -> String {
        self.next_tag += 1;
        format!("c{}", self.next_tag)
    }

    async fn send(&mut self, command: &str) -> Result<String> {
        self.pause_if_asked().await;
        let tag = self.tag();
        self.write(format!("{tag} {command}\r\n").as_bytes()).await?;
        self.flush().await?;
        Ok(tag)
    }

    /// Writes with a deadline: a peer that stops reading (its receive
    /// window full) would otherwise hang the run forever.
    pub(super) async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let written = tokio::time::timeout(self.io_timeout, self.inner.get_mut().write_all(bytes)).await;
        self.sent(written, "sending a command")
    }

    pub(super) async fn flush(&mut self) -> Result<()> {
        let flushed = tokio::time::timeout(self.io_timeout, self.inner.get_mut().flush()).await;
        self.sent(flushed, "sending a command")
    }

    fn sent(
        &self,
        outcome: std::result::Result<std::io::Result<()>, tokio::time::error::Elapsed>,
        during: &str,
    ) -> Result<()> {
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::ConnectionLost {
                endpoint: self.endpoint.clone(),
                detail: format!("write failed: {e}"),
            }),
            Err(_) => Err(Error::Timeout {
                endpoint: self.endpoint.clone(),
                seconds: self.io_timeout.as_secs(),
                during: format!("{during} (the server stopped reading)"),
            }),
        }
    }

    async fn await_continuation(&mut self, tag: &str) -> Result<()> {
        loop {
            let continued = self
                .read(|response, _| matches!(response, Response::Continue(_)))
                .await?;
            if continued {
                return Ok(());
            }
            // A tagged answer instead of "+" means the server refused the literal.
            let done = self.event(tag, |_, _| None::<()>).await?;
            if let Event::Done(done) = done {
                return Err(self.refusal(&done.text, "APPEND"));
            }
        }
    }

    async fn until_done(&mut self, tag: &str) -> Result<Completion> {
        loop {
            if let Event::Done(done) = self.event(tag, |_, _| None::<()>).await? {
                return Ok(done);
            }
        }
    }

    fn check(&self, done: Completion, command: &str) -> Result<()> {
        if done.ok {
            Ok(())
        } else {
            Err(self.refusal(&done.text, command))
        }
    }

    /// A refused command as an error; a throttling refusal is counted.
    fn refusal(&self, text: &str, command: &str) -> Error {
        let kind = codec::classify_refusal(text, command);
        if kind == ErrorKind::Throttled {
            let reason = codec::throttle_reason(text).unwrap_or(ThrottleReason::Limit);
            self.throttle.event(&self.endpoint, reason);
        }
        Error::Imap {
            kind,
            endpoint: self.endpoint.clone(),
            command: command.to_string(),
            detail: text.to_string(),
        }
    }

    /// Reads one response and sorts it into an item, the completion of
    /// `tag`, or noise. A BYE ends the session with an error.
    async fn event<T>(&mut self, tag: &str, item: impl FnOnce(&Response<'_>, &[u8]) -> Option<T>) -> Result<Event<T>> {
        let event = self
            .read(|response, raw| match response {
                Response::Done {
                    tag: done_tag,
                    status,
                    outcome,
                } if done_tag.0 == tag => Ok(Event::Done(Completion::new(status, outcome))),
                Response::Data {
                    status: Status::Bye,
                    outcome,
                } => Err(outcome_text(outcome.code.as_ref(), outcome.information.as_deref())),
                response if throttled_ok(response) => Ok(Event::SlowDown),
                other => Ok(item(other, raw).map_or(Event::Ignore, Event::Item)),
            })
            .await?;
        match event.map_err(|text| self.bye(&text))? {
            Event::SlowDown => {
                self.slow_down();
                Ok(Event::Ignore)
            }
            Event::Done(done) => {
                self.note_throttled_ok(&done);
                Ok(Event::Done(done))
            }
            other => Ok(other),
        }
    }

    /// Pauses after a throttling refusal before the command goes again:
    /// exactly the server's suggested backoff (up to
    /// [`ConnectOptions::max_backoff`]), else a growing pause. Every
    /// mailbox on this host pauses with it.
    async fn back_off(&mut self, text: &str, attempt: u32) {
        let reason = codec::throttle_reason(text).unwrap_or(ThrottleReason::Limit);
        let pause = codec::suggested_backoff(text).map_or_else(|| throttle_pause(attempt), |s| s.min(self.max_backoff));
        self.throttle.pause(&self.endpoint, reason, pause);
        tokio::time::sleep(pause).await;
    }

    /// The server said `OK [THROTTLED]`: the command went through, but the
    /// next one waits.
    fn slow_down(&mut self) {
        self.throttle.event(&self.endpoint, ThrottleReason::Throttled);
        self.slow_down = true;
    }

    fn note_throttled_ok(&mut self, done: &Completion) {
        if done.ok && done.text.to_ascii_uppercase().contains("[THROTTLED]") {
            self.slow_down();
        }
    }

    /// The pause an earlier `OK [THROTTLED]` asked for, once.
    async fn pause_if_asked(&mut self) {
        if std::mem::take(&mut self.slow_down) {
            let pause = throttle_pause(0);
            self.throttle.pause(&self.endpoint, ThrottleReason::Throttled, pause);
            tokio::time::sleep(pause).await;
        }
    }

    /// The session ended with BYE: marks it closed and says why. A
    /// throttling BYE and one for a folder deleted under us keep their
    /// kind; any other BYE is a lost connection.
    pub(super) fn bye(&mut self, text: &str) -> Error {
        self.closed = true;
        let kind = codec::classify_refusal(text, "BYE");
        if kind != ErrorKind::Folder && !self.logging_out {
            // `* BYE Session expired`, or Microsoft 365 ending the session
            // after repeated errors: the mailbox reconnects and resumes.
            self.throttle.event(&self.endpoint, ThrottleReason::SessionEnded);
        }
        if matches!(kind, ErrorKind::Throttled | ErrorKind::Folder) {
            self.refusal(text, "BYE")
        } else {
            Error::ConnectionLost {
                endpoint: self.endpoint.clone(),
                detail: format!("{BYE_DETAIL}: {text}"),
            }
        }
    }

    /// Reads one response; `f` sees it parsed and as the bytes it came in.
    pub(super) async fn read<T>(&mut self, f: impl FnOnce(&Response<'_>, &[u8]) -> T) -> Result<T> {
        match tokio::time::timeout(self.io_timeout, self.inner.read_response()).await {
            Ok(Ok(Some(data))) => Ok(f(data.parsed(), data.borrow_owner())),
            failed => Err(self.read_error(failed.map(|read| read.map(|_| ())))),
        }
    }

    /// What a read that returned no response means.
    fn read_error(&self, failed: std::result::Result<std::io::Result<()>, tokio::time::error::Elapsed>) -> Error {
        match failed {
            Err(_) => Error::Timeout {
                endpoint: self.endpoint.clone(),
                seconds: self.io_timeout.as_secs(),
                during: "waiting for a response".into(),
            },
            Ok(Err(e)) => read_failure(&self.endpoint, &e, "reading a response"),
            Ok(Ok(())) => Error::ConnectionLost {
                endpoint: self.endpoint.clone(),
                detail: "closed by the server".into(),
            },
        }
    }
}

/// A FETCH in progress.
#[derive(Debug)]
pub struct FetchHandle {
    tag: String,
    items: FetchItems,
    changed_since: Option<u64>,
    /// Parts of the set still to fetch, the next one last.
    rest: Vec<String>,
    finished: bool,
    /// The part in flight, sent again when throttled before any record.
    part: String,
    /// Records of `part` handed out so far.
    delivered: u32,
    /// Times `part` was refused as throttled.
    attempt: u32,
}

/// One response before login, sorted.
enum PreLoginStep {
    Capabilities(Vec<String>),
    Done(Completion),
    Bye(String),
    Other,
}

/// The connection before login: greeting, CAPABILITY, STARTTLS. Commands
/// are written straight to the transport with tags of our own, as in the
/// session, and async-imap only frames and parses the answers.
struct PreLogin {
    client: async_imap::Client<Transport>,
    address: String,
    timeout: Duration,
    next_tag: u32,
}

impl PreLogin {
    async fn read<T>(&mut self, during: &str, f: impl FnOnce(&Response<'_>) -> T) -> Result<T> {
        match tokio::time::timeout(self.timeout, self.client.read_response()).await {
            Err(_) => Err(Error::Timeout {
                endpoint: self.address.clone(),
                seconds: self.timeout.as_secs(),
                during: during.into(),
            }),
            Ok(Err(e)) => Err(read_failure(&self.address, &e, during)),
            Ok(Ok(None)) => Err(Error::ConnectionLost {
                endpoint: self.address.clone(),
                detail: format!("closed by the server ({during})"),
            }),
            Ok(Ok(Some(data))) => Ok(f(data.parsed())),
        }
    }

    /// The capabilities the greeting announces, if it does.
    async fn greeting(&mut self) -> Result<Option<HashSet<String>>> {
        let greeting = self
            .read("greeting", |response| match response {
                Response::Data {
                    status: Status::Ok | Status::PreAuth,
                    outcome,
                } => Ok(match &outcome.code {
                    Some(ResponseCode::Capabilities(caps)) => Some(caps.iter().map(capability_name).collect()),
                    _ => None,
                }),
                Response::Data { outcome, .. } => {
                    Err(outcome_text(outcome.code.as_ref(), outcome.information.as_deref()))
                }
                _ => Err("not an IMAP greeting".to_string()),
            })
            .await?;
        greeting.map_err(|refusal| {
            if codec::classify_refusal(&refusal, "BYE") == ErrorKind::Throttled {
                Error::Imap {
                    kind: ErrorKind::Throttled,
                    endpoint: self.address.clone(),
                    command: "greeting".into(),
                    detail: refusal,
                }
            } else {
                Error::ConnectionLost {
                    endpoint: self.address.clone(),
                    detail: format!("server refused the session: {refusal}"),
                }
            }
        })
    }

    /// Sends a command; returns the capabilities its untagged responses
    /// listed and the tagged completion.
    async fn command(&mut self, command: &str) -> Result<(HashSet<String>, Completion)> {
        self.next_tag += 1;
        let tag = format!("p{}", self.next_tag);
        let line = format!("{tag} {command}\r\n");
        let stream = self.client.get_mut();
        let sent = tokio::time::timeout(self.timeout, async {
            stream.write_all(line.as_bytes()).await?;
            stream.flush().await
        })
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(Error::ConnectionLost {
                    endpoint: self.address.clone(),
                    detail: format!("write failed: {e}"),
                })
            }
            Err(_) => {
                return Err(Error::Timeout {
                    endpoint: self.address.clone(),
                    seconds: self.timeout.as_secs(),
                    during: format!("sending {command} (the server stopped reading)"),
                })
            }
        }
        let mut capabilities = HashSet::new();
        loop {
            let step = self
                .read(command, |response| match response {
                    Response::Capabilities(caps) => {
                        PreLoginStep::Capabilities(caps.iter().map(capability_name).collect())
                    }
                    Response::Done {
                        tag: done,
                        status,
                        outcome,
                    } if done.0 == tag => PreLoginStep::Done(Completion::new(status, outcome)),
                    Response::Data {
                        status: Status::Bye,
                        outcome,
                    } => PreLoginStep::Bye(outcome_text(outcome.code.as_ref(), outcome.information.as_deref())),
                    _ => PreLoginStep::Other,
                })
                .await?;
            match step {
                PreLoginStep::Capabilities(caps) => capabilities.extend(caps),
                PreLoginStep::Done(done) => return Ok((capabilities, done)),
                PreLoginStep::Bye(text) => {
                    return Err(Error::ConnectionLost {
                        endpoint: self.address.clone(),
                        detail: format!("server said BYE: {text}"),
                    })
                }
                PreLoginStep::Other => {}
            }
        }
    }

    async fn capabilities(&mut self) -> Result<HashSet<String>> {
        let (capabilities, done) = self.command("CAPABILITY").await?;
        if !done.ok {
            return Err(Error::Imap {
                kind: ErrorKind::Protocol,
                endpoint: self.address.clone(),
                command: "CAPABILITY".into(),
                detail: done.text,
            });
        }
        Ok(capabilities)
    }

    /// Upgrades the connection to TLS.
    async fn starttls(mut self, endpoint: &ImapEndpoint, options: &ConnectOptions) -> Result<Self> {
        let (_, done) = self.command("STARTTLS").await?;
        if !done.ok {
            return Err(Error::Tls {
                endpoint: self.address.clone(),
                detail: format!("STARTTLS refused: {}", done.text),
            });
        }
        let Transport::Plain(tcp) = self.client.into_inner() else {
            return Err(Error::Tls {
                endpoint: self.address.clone(),
                detail: "STARTTLS on a connection that is already TLS".into(),
            });
        };
        let tls = start_tls(
            tcp,
            &endpoint.host,
            endpoint.port,
            &options.tls,
            options.connect_timeout,
        )
        .await?;
        self.client = async_imap::Client::new(tls);
        Ok(self)
    }
}

/// A SASL exchange with one initial response. What follows it answers a
/// server's challenge after a refused OAuth2 token (a JSON error): RFC 7628
/// wants `^A` to end the exchange, XOAUTH2 an empty line; either way the
/// server then sends the tagged NO.
struct SaslAuth {
    response: Vec<u8>,
    sent: bool,
    after_error: &'static [u8],
}

impl async_imap::Authenticator for &mut SaslAuth {
    type Response = Vec<u8>;

    fn process(&mut self, _challenge: &[u8]) -> Vec<u8> {
        if self.sent {
            self.after_error.to_vec()
        } else {
            self.sent = true;
            std::mem::take(&mut self.response)
        }
    }
}

/// The XOAUTH2 initial response (before base64): `user=U^Aauth=Bearer T^A^A`.
pub(crate) fn xoauth2_response(user: &str, token: &str) -> Vec<u8> {
    format!("user={user}\x01auth=Bearer {token}\x01\x01").into_bytes()
}

/// The OAUTHBEARER initial response (RFC 7628 3.1): a GS2 header naming the
/// user (`,` and `=` escaped as `=2C` and `=3D`), then host, port and token.
pub(crate) fn oauthbearer_response(user: &str, host: &str, port: u16, token: &str) -> Vec<u8> {
    let user = user.replace('=', "=3D").replace(',', "=2C");
    format!("n,a={user},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01").into_bytes()
}

type LoginResult = std::result::Result<
    (async_imap::Session<Transport>, Option<HashSet<String>>),
    (async_imap::error::Error, async_imap::Client<Transport>),
>;

/// One login attempt; a refusal hands the connection back for another try.
async fn login_once(client: async_imap::Client<Transport>, endpoint: &ImapEndpoint, secret: &Secret) -> LoginResult {
    let sasl = |response: Vec<u8>, after_error: &'static [u8]| SaslAuth {
        response,
        sent: false,
        after_error,
    };
    let mut auth = match endpoint.auth {
        AuthMethod::Login => {
            let login = match &endpoint.master_user {
                Some(admin) => format!("{}{}{admin}", endpoint.user, endpoint.master_separator),
                None => endpoint.user.clone(),
            };
            return client
                .login_with_capabilities(login, secret.expose())
                .await
                .map(|(session, capabilities)| {
                    let names = capabilities.map(|caps| {
                        caps.iter()
                            .map(|capability| match capability {
                                async_imap::types::Capability::Imap4rev1 => "IMAP4REV1".to_string(),
                                async_imap::types::Capability::Auth(mechanism) => {
                                    format!("AUTH={}", mechanism.to_ascii_uppercase())
                                }
                                async_imap::types::Capability::Atom(atom) => atom.to_ascii_uppercase(),
                            })
                            .collect()
                    });
                    (session, names)
                });
        }
        AuthMethod::Plain => {
            let (authzid, authcid) = match &endpoint.master_user {
                Some(admin) => (endpoint.user.as_str(), admin.as_str()),
                None => ("", endpoint.user.as_str()),
            };
            sasl(format!("{authzid}\0{authcid}\0{}", secret.expose()).into_bytes(), b"")
        }
        AuthMethod::XOAuth2 => sasl(xoauth2_response(&endpoint.user, secret.expose()), b""),
        AuthMethod::OAuthBearer => sasl(
            oauthbearer_response(&endpoint.user, &endpoint.host, endpoint.port, secret.expose()),
            b"\x01",
        ),
    };
    client
        .authenticate(endpoint.auth.mechanism(), &mut auth)
        .await
        .map(|session| (session, None))
}

async fn login(
    client: async_imap::Client<Transport>,
    endpoint: &ImapEndpoint,
    credential: &Credential,
    mut secret: Token,
) -> Result<(async_imap::Session<Transport>, Option<HashSet<String>>)> {
    let address = endpoint.address();
    let shown_user = match &endpoint.master_user {
        Some(admin) => format!("{} (as {admin})", endpoint.user),
        None => endpoint.user.clone(),
    };
    let mut client = client;
    // A refused token may have expired early or been revoked: one fresh
    // token and one more try; a second refusal is final (no retry loop).
    let (mut refreshed, mut retried) = (false, false);
    let result = loop {
        match login_once(client, endpoint, &secret.secret).await {
            Ok(done) => break Ok(done),
            Err((async_imap::error::Error::No(text), back)) if endpoint.auth.is_oauth() && !refreshed => {
                refreshed = true;
                match credential.refresh(&secret).await? {
                    Some(fresh) => {
                        tracing::info!(
                            endpoint = %address,
                            user = %endpoint.user,
                            "token refused; trying once more with a fresh one"
                        );
                        secret = fresh;
                        client = back;
                        retried = true;
                    }
                    None => break Err(async_imap::error::Error::No(text)),
                }
            }
            Err((e, _)) => break Err(e),
        }
    };
    result.map_err(|e| match e {
        async_imap::error::Error::No(text) | async_imap::error::Error::Bad(text) => {
            match login_refusal(endpoint, address, shown_user, &text) {
                // What to check differs from a password's.
                Error::Auth {
                    endpoint: at,
                    user,
                    detail,
                } if endpoint.auth.is_oauth() => Error::Auth {
                    endpoint: at,
                    user,
                    detail: format!(
                        "{detail} (OAuth2 {}: the token was refused{}; check that it is for this user and \
                         has the IMAP scope: Microsoft 365 IMAP.AccessAsUser.All or IMAP.AccessAsApp, \
                         Gmail https://mail.google.com/)",
                        endpoint.auth.mechanism(),
                        if retried { ", and a fresh one too" } else { "" }
                    ),
                },
                other => other,
            }
        }
        async_imap::error::Error::Io(e) => read_failure(&address, &e, "login"),
        async_imap::error::Error::ConnectionLost => Error::ConnectionLost {
            endpoint: address,
            detail: "closed during login".into(),
        },
        // The other variants' texts may quote what the server sent.
        _ => Error::Imap {
            kind: ErrorKind::Protocol,
            endpoint: address,
            command: "LOGIN".into(),
            detail: "unexpected answer to the login".into(),
        },
    })
}

/// A failed read, as an error that never repeats what was read. async-imap
/// reports a response it cannot parse as an `Other` I/O error whose text is
/// the whole unread buffer — message bodies included — so only the kind is
/// kept; an operating-system error (reset, refused) is shown as it is.
fn read_failure(endpoint: &str, error: &std::io::Error, during: &str) -> Error {
    if error.kind() == std::io::ErrorKind::Other {
        return Error::Imap {
            kind: ErrorKind::Protocol,
            endpoint: endpoint.to_string(),
            command: during.to_string(),
            detail: "the server sent something that is not valid IMAP (not repeated here: it may be mail content)"
                .into(),
        };
    }
    let detail = match error.raw_os_error() {
        Some(_) => error.to_string(),
        None => error.kind().to_string(),
    };
    Error::ConnectionLost {
        endpoint: endpoint.to_string(),
        detail: format!("{during}: {detail}"),
    }
}

/// A refused login. With an admin (master) credential that works for the
/// other mailboxes, a refusal means this user does not exist (not
/// provisioned). async-imap reports the refusal as `code: …, info:
/// Some("…")`; only the server's words are kept.
fn login_refusal(endpoint: &ImapEndpoint, address: String, user: String, text: &str) -> Error {
    let detail = text
        .split_once("info: Some(\"")
        .map_or(text, |(_, rest)| rest.trim_end_matches("\")").trim_end_matches('"'))
        .to_string();
    // Gmail refuses a login over its connection limit with `NO [ALERT] Too
    // many simultaneous connections`: throttling, not a wrong password.
    if codec::classify_refusal(&detail, "LOGIN") == ErrorKind::Throttled {
        return Error::Imap {
            kind: ErrorKind::Throttled,
            endpoint: address,
            command: "LOGIN".into(),
            detail,
        };
    }
    if endpoint.master_user.is_some() {
        Error::AccountMissing {
            endpoint: address,
            user,
            detail,
        }
    } else {
        Error::Auth {
            endpoint: address,
            user,
            detail,
        }
    }
}

/// The `AUTH=` mechanisms of a capability list, sorted.
fn auth_mechanisms(capabilities: &HashSet<String>) -> Vec<String> {
    let mut mechanisms: Vec<String> = capabilities
        .iter()
        .filter_map(|c| c.strip_prefix("AUTH="))
        .map(str::to_string)
        .collect();
    mechanisms.sort_unstable();
    mechanisms
}

fn capability_name(capability: &async_imap::imap_proto::Capability<'_>) -> String {
    use async_imap::imap_proto::Capability;
    match capability {
        Capability::Imap4rev1 => "IMAP4REV1".to_string(),
        Capability::Auth(mechanism) => format!("AUTH={}", mechanism.to_ascii_uppercase()),
        Capability::Atom(atom) => atom.to_ascii_uppercase(),
    }
}

fn capability_list(response: &Response<'_>) -> Option<Vec<String>> {
    match response {
        Response::Capabilities(caps) => Some(caps.iter().map(capability_name).collect()),
        _ => None,
    }
}

/// How a lost connection's detail starts when the server ended the session
/// with BYE (the batch retries it as a session ended by the server).
pub const BYE_DETAIL: &str = "server said BYE";

/// How often one command is sent again after a throttling refusal.
const THROTTLE_RETRIES: u32 = 6;

/// 250 ms, doubling: about 16 s in all before giving up.
fn throttle_pause(attempt: u32) -> Duration {
    Duration::from_millis(250 << attempt.min(6))
}

/// An untagged `OK [THROTTLED]` (Gmail): the session should slow down.
fn throttled_ok(response: &Response<'_>) -> bool {
    match response {
        Response::Data {
            status: Status::Ok,
            outcome,
        } => outcome
            .information
            .as_deref()
            .is_some_and(|text| text.to_ascii_uppercase().contains("[THROTTLED]")),
        _ => false,
    }
}

fn fetch_command(uid_set: &str, items: FetchItems, changed_since: Option<u64>) -> String {
    let attributes = match items {
        FetchItems::Full => "UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[]".to_string(),
        FetchItems::Fingerprint => {
            format!("UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS ({FINGERPRINT_FIELDS})]")
        }
        FetchItems::Flags => "UID FLAGS".to_string(),
        FetchItems::Size => "UID RFC822.SIZE".to_string(),
    };
    let modifier = match changed_since {
        Some(modseq) => format!(" (CHANGEDSINCE {modseq})"),
        None => String::new(),
    };
    format!("UID FETCH {uid_set} ({attributes}){modifier}")
}

/// Whether a FETCH response carries what was asked (servers also send
/// unsolicited FETCHes with flags only).
fn is_complete(record: &FetchRecord, items: FetchItems) -> bool {
    match items {
        FetchItems::Full => record.body.is_some(),
        FetchItems::Fingerprint => record.header.is_some(),
        FetchItems::Flags => record.flags.is_some(),
        FetchItems::Size => record.size.is_some(),
    }
}

pub(super) enum CodeValue {
    Exists(u32),
    UidValidity(u32),
    UidNext(u32),
    HighestModSeq(u64),
    Other,
}

pub(super) fn code_value(code: &ResponseCode<'_>) -> CodeValue {
    match code {
        ResponseCode::UidValidity(v) => CodeValue::UidValidity(*v),
        ResponseCode::UidNext(v) => CodeValue::UidNext(*v),
        ResponseCode::HighestModSeq(v) => CodeValue::HighestModSeq(*v),
        _ => CodeValue::Other,
    }
}

pub(super) fn outcome_text(code: Option<&ResponseCode<'_>>, information: Option<&str>) -> String {
    let text = information.unwrap_or("").trim();
    match code {
        Some(code) => format!("[{}] {text}", code_name(code)),
        None => text.to_string(),
    }
}

fn code_name(code: &ResponseCode<'_>) -> &'static str {
    match code {
        ResponseCode::Alert => "ALERT",
        ResponseCode::TryCreate => "TRYCREATE",
        ResponseCode::ReadOnly => "READ-ONLY",
        ResponseCode::Parse => "PARSE",
        _ => "CODE",
    }
}

fn expand_uid_set(set: &[UidSetMember]) -> Vec<u32> {
    set.iter()
        .flat_map(|member| match member {
            UidSetMember::Uid(uid) => *uid..=*uid,
            UidSetMember::UidRange(range) => range.clone(),
        })
        .collect()
}

pub(super) fn folder_info(list: &async_imap::imap_proto::MailboxListData<'_>, raw: &[u8]) -> FolderInfo {
    let mut special_use = None;
    let mut selectable = true;
    for attribute in &list.name_attributes {
        match attribute {
            NameAttribute::NoSelect => selectable = false,
            NameAttribute::Sent => special_use = Some(SpecialUse::Sent),
            NameAttribute::Drafts => special_use = Some(SpecialUse::Drafts),
            NameAttribute::Trash => special_use = Some(SpecialUse::Trash),
            NameAttribute::Junk => special_use = Some(SpecialUse::Junk),
            NameAttribute::Archive => special_use = Some(SpecialUse::Archive),
            NameAttribute::All => special_use = Some(SpecialUse::All),
            NameAttribute::Flagged => special_use = Some(SpecialUse::Flagged),
            NameAttribute::Extension(name) if name.eq_ignore_ascii_case("\\NonExistent") => selectable = false,
            NameAttribute::Extension(name) if name.eq_ignore_ascii_case("\\Important") => {
                special_use = Some(SpecialUse::Important)
            }
            _ => {}
        }
    }
    FolderInfo {
        name: codec::decode_mailbox(&list.name, came_quoted(&list.name, raw)),
        separator: list.delimiter.as_ref().and_then(|d| d.chars().next()),
        special_use,
        selectable,
    }
}

/// Whether a string imap-proto parsed out of `raw` was a quoted string:
/// its parser hands over quoted strings still escaped (`Projekt \"X\"`)
/// and literals as they are, and only the byte before the text tells which.
pub(super) fn came_quoted(parsed: &str, raw: &[u8]) -> bool {
    let start = (parsed.as_ptr() as usize).wrapping_sub(raw.as_ptr() as usize);
    start
        .checked_sub(1)
        .filter(|_| start <= raw.len())
        .and_then(|before| raw.get(before))
        == Some(&b'"')
}

/// One response while a FETCH streams.
enum FetchStep {
    /// A record, and where its body lies in the response's bytes.
    Record(FetchRecord, Option<std::ops::Range<usize>>),
    Done(Completion),
    Bye(String),
    SlowDown,
    Other,
}

/// Where `part` (a slice imap-proto parsed out of `whole`) lies in `whole`.
fn within(whole: &[u8], part: &[u8]) -> Option<std::ops::Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= whole.len()).then_some(start..end)
}

/// A FETCH record without its whole-message body, and that body as parsed.
fn fetch_record_parts<'a>(attributes: &'a [AttributeValue<'_>]) -> (FetchRecord, Option<&'a [u8]>) {
    let mut body = None;
    let mut record = FetchRecord::default();
    for attribute in attributes {
        match attribute {
            AttributeValue::BodySection {
                section: None, data, ..
            }
            | AttributeValue::Rfc822(data) => body = Some(data.as_deref().unwrap_or_default()),
            other => record.absorb(other),
        }
    }
    (record, body)
}

pub(super) fn fetch_record(attributes: &[AttributeValue<'_>]) -> FetchRecord {
    let mut record = FetchRecord::default();
    for attribute in attributes {
        record.absorb(attribute);
    }
    record
}

impl FetchRecord {
    fn absorb(&mut self, attribute: &AttributeValue<'_>) {
        let record = self;
        match attribute {
            AttributeValue::Uid(uid) => record.uid = *uid,
            AttributeValue::Flags(flags) => record.flags = Some(Flags::new(flags.iter())),
            AttributeValue::InternalDate(date) => record.internal_date = codec::parse_internal_date(date),
            AttributeValue::Rfc822Size(size) => record.size = Some(*size),
            AttributeValue::ModSeq(modseq) => record.modseq = Some(*modseq),
            AttributeValue::BodySection {
                section: None, data, ..
            }
            | AttributeValue::Rfc822(data) => record.body = Some(data.as_deref().unwrap_or_default().to_vec()),
            AttributeValue::BodySection {
                section: Some(_), data, ..
            } => record.header = Some(data.as_deref().unwrap_or_default().to_vec()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod sasl_tests {
    use super::*;

    #[test]
    fn xoauth2_initial_response() {
        assert_eq!(
            xoauth2_response("alice@example.org", "ya29.t"),
            b"user=alice@example.org\x01auth=Bearer ya29.t\x01\x01".to_vec()
        );
    }

    #[test]
    fn oauthbearer_initial_response_escapes_the_user() {
        assert_eq!(
            oauthbearer_response("a,b=c@x.org", "imap.x.org", 993, "tok"),
            b"n,a=a=2Cb=3Dc@x.org,\x01host=imap.x.org\x01port=993\x01auth=Bearer tok\x01\x01".to_vec()
        );
    }

    #[test]
    fn after_a_refused_token_the_exchange_is_ended() {
        let mut auth = SaslAuth {
            response: b"first".to_vec(),
            sent: false,
            after_error: b"\x01",
        };
        let mut auth = &mut auth;
        assert_eq!(async_imap::Authenticator::process(&mut auth, b""), b"first".to_vec());
        assert_eq!(
            async_imap::Authenticator::process(&mut auth, br#"{"status":"invalid_token"}"#),
            b"\x01".to_vec()
        );
    }
}
