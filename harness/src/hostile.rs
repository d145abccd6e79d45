//! A small scripted IMAP server on loopback that misbehaves on purpose.
//!
//! It speaks just enough IMAP4rev1 for `cutover sync` to reach each fault,
//! as a source or as a target: greeting, CAPABILITY, LOGIN, LIST, CREATE,
//! EXAMINE/SELECT (UIDVALIDITY, UIDNEXT, EXISTS), UID SEARCH (`UID set`,
//! `ALL`), UID FETCH (UID FLAGS INTERNALDATE RFC822.SIZE, `BODY[]` and
//! `BODY[HEADER.FIELDS (…)]`, with or without `.PEEK`), UID STORE, APPEND
//! (synchronising literals, LITERAL+, MULTIAPPEND, APPENDUID with UIDPLUS),
//! NOOP and LOGOUT. Anything else is answered `BAD`. STARTTLS is answered
//! OK when offered, but the server cannot do TLS and hangs up, so a client
//! that tries it fails its handshake.
//!
//! A [`Script`] says what the server offers and which [`Fault`] it plays.
//! Every command line it receives is recorded (literals shown as `{n}`), so
//! a test can assert what the client did, e.g. that it asked CAPABILITY
//! before LOGIN or never sent LOGIN in clear text. The [`Mailbox`] lives in
//! memory and is shared by all connections; a test can change it between
//! runs (new messages, a UIDVALIDITY reset). Folder names are ASCII.
//!
//! One tokio task per connection; dropping the [`HostileServer`] stops the
//! listener and every connection.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, FixedOffset, Utc};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// Longest command line (without literals) the server reads.
const MAX_LINE: u64 = 64 * 1024;
/// Largest literal the server accepts.
const MAX_LITERAL: usize = 64 << 20;
/// INTERNALDATE as IMAP writes it.
const DATE_TIME: &str = "%d-%b-%Y %H:%M:%S %z";
/// What [`FetchFault::Garbage`] sends instead of a FETCH response.
const GARBAGE: &[u8] = b"\x16\x03\x01 )(*&^%$ this is not an IMAP response {{{\r\n";

/// What the server offers and how it misbehaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// The one login accepted.
    pub user: String,
    /// Its password.
    pub password: String,
    /// Capabilities besides `IMAP4rev1`, as CAPABILITY lists them.
    pub capabilities: Vec<String>,
    /// Whether the greeting carries `[CAPABILITY …]`; false sends a bare
    /// `* OK ready`, so a client learns them only by asking.
    pub greeting_capabilities: bool,
    /// The hierarchy separator LIST reports (`/` or `.`).
    pub separator: char,
    /// The misbehaviour.
    pub fault: Fault,
}

impl Script {
    /// A well-behaved server for one account: LITERAL+, MULTIAPPEND and
    /// UIDPLUS, capabilities in the greeting, `/` as separator.
    pub fn new(user: &str, password: &str) -> Self {
        Self {
            user: user.to_string(),
            password: password.to_string(),
            capabilities: ["LITERAL+", "MULTIAPPEND", "UIDPLUS"].map(String::from).to_vec(),
            greeting_capabilities: true,
            separator: '/',
            fault: Fault::None,
        }
    }

    /// The same script playing `fault`.
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    fn has_capability(&self, name: &str) -> bool {
        self.capabilities.iter().any(|c| c.eq_ignore_ascii_case(name))
    }

    fn capability_text(&self) -> String {
        std::iter::once("IMAP4rev1")
            .chain(self.capabilities.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// How the server misbehaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// It does not.
    None,
    /// Accepts connections and never sends a byte.
    Silent,
    /// Breaks the response for one message of a FETCH of whole bodies
    /// (`BODY[]`): message `uid` in `folder`.
    InBodyFetch {
        /// The folder, as LIST names it.
        folder: String,
        /// The message's UID.
        uid: u32,
        /// What goes wrong.
        fault: FetchFault,
    },
    /// Every UID SEARCH lists each UID twice (`* SEARCH 1 1 2 2 3 3`).
    DuplicateSearch,
    /// Every FETCH response is sent twice.
    DuplicateFetch,
    /// Stops reading from the connection as soon as an APPEND command line
    /// arrives (its literal is never taken in), and keeps the connection
    /// open: a peer whose receive window fills up, so the client's writes
    /// block.
    StopsReadingAtAppend,
    /// An APPEND that would store more than `limit` messages in the whole
    /// mailbox is refused with `NO [OVERQUOTA] Quota exceeded`; nothing of
    /// it is stored.
    OverQuota {
        /// Messages the mailbox holds at most.
        limit: usize,
    },
    /// An APPEND holding a message larger than `max_bytes` is refused with
    /// `NO {refusal}` (e.g. `[LIMIT] Message size exceeds …`: a size limit
    /// in throttling's clothes); nothing of it is stored.
    SizeLimit {
        /// The largest message stored.
        max_bytes: usize,
        /// The tagged NO's text, response code included.
        refusal: String,
    },
}

/// What goes wrong with one message's FETCH response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchFault {
    /// A line of binary garbage instead of the response; the rest of the
    /// FETCH follows as if nothing happened.
    Garbage,
    /// The first half of the response, then the connection is closed.
    Truncated,
    /// The body literal announces its size but `extra` more bytes follow.
    LiteralTooLong {
        /// Bytes beyond the announced size.
        extra: usize,
    },
    /// The body literal announces its size but `missing` bytes fewer
    /// follow; the FETCH then completes as if nothing happened and the
    /// server waits for the next command.
    LiteralTooShort {
        /// Bytes short of the announced size.
        missing: usize,
    },
    /// `* BYE` instead of the response, then the connection is closed.
    Bye,
}

/// One message in the server's store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its UID.
    pub uid: u32,
    /// Flags and keywords, e.g. `\Seen`.
    pub flags: Vec<String>,
    /// INTERNALDATE.
    pub internal_date: DateTime<FixedOffset>,
    /// The message as stored.
    pub raw: Vec<u8>,
}

/// One folder in the server's store; messages in UID order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folder {
    /// The name, with the script's separator.
    pub name: String,
    /// UIDVALIDITY.
    pub uid_validity: u32,
    /// The UID the next message gets.
    pub uid_next: u32,
    /// The messages, ascending by UID.
    pub messages: Vec<StoredMessage>,
}

/// The server's store: folders in LIST order, INBOX first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    folders: Vec<Folder>,
    next_uid_validity: u32,
}

impl Default for Mailbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Mailbox {
    /// An empty INBOX and nothing else.
    pub fn new() -> Self {
        let mut mailbox = Self {
            folders: Vec::new(),
            next_uid_validity: 1000,
        };
        mailbox.create("INBOX");
        mailbox
    }

    /// Creates a folder; false if it exists.
    pub fn create(&mut self, name: &str) -> bool {
        if self.folder(name).is_some() {
            return false;
        }
        self.next_uid_validity += 1;
        self.folders.push(Folder {
            name: name.to_string(),
            uid_validity: self.next_uid_validity,
            uid_next: 1,
            messages: Vec::new(),
        });
        true
    }

    /// Stores a message (creating the folder if needed) and returns its UID.
    pub fn add(&mut self, folder: &str, raw: Vec<u8>, flags: &[&str], internal_date: DateTime<FixedOffset>) -> u32 {
        self.create(folder);
        let folder = self.folder_mut(folder).expect("just created");
        let uid = folder.uid_next;
        folder.uid_next += 1;
        folder.messages.push(StoredMessage {
            uid,
            flags: flags.iter().map(|f| f.to_string()).collect(),
            internal_date,
            raw,
        });
        uid
    }

    /// A folder by name (`INBOX` in any case).
    pub fn folder(&self, name: &str) -> Option<&Folder> {
        self.folders.iter().find(|f| same_name(&f.name, name))
    }

    fn folder_mut(&mut self, name: &str) -> Option<&mut Folder> {
        self.folders.iter_mut().find(|f| same_name(&f.name, name))
    }

    /// Every folder, in LIST order.
    pub fn folders(&self) -> &[Folder] {
        &self.folders
    }

    /// Messages in all folders.
    pub fn message_count(&self) -> usize {
        self.folders.iter().map(|f| f.messages.len()).sum()
    }

    /// As if the folder had been deleted and recreated with the same
    /// messages: a new UIDVALIDITY and new UIDs from `uid_next` on. False if
    /// there is no such folder.
    pub fn reset_uid_validity(&mut self, name: &str, uid_validity: u32) -> bool {
        let Some(folder) = self.folder_mut(name) else {
            return false;
        };
        folder.uid_validity = uid_validity;
        for message in &mut folder.messages {
            message.uid = folder.uid_next;
            folder.uid_next += 1;
        }
        true
    }
}

fn same_name(a: &str, b: &str) -> bool {
    a == b || (a.eq_ignore_ascii_case("INBOX") && b.eq_ignore_ascii_case("INBOX"))
}

/// One command line the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Which connection, counted from 1 in accept order.
    pub connection: usize,
    /// The command without its tag; literals shown as `{n}`.
    pub line: String,
}

impl Received {
    /// The command's name, upper case, `UID` joined with its subcommand
    /// (`LOGIN`, `UID FETCH`).
    pub fn verb(&self) -> String {
        let mut words = self.line.split_whitespace().map(str::to_ascii_uppercase);
        match words.next() {
            Some(first) if first == "UID" => format!("UID {}", words.next().unwrap_or_default()),
            Some(first) => first,
            None => String::new(),
        }
    }
}

struct Shared {
    script: Mutex<Script>,
    mailbox: Mutex<Mailbox>,
    received: Mutex<Vec<Received>>,
    connections: AtomicUsize,
    faults: AtomicUsize,
}

impl Shared {
    fn script(&self) -> Script {
        lock(&self.script).clone()
    }

    fn played(&self) {
        self.faults.fetch_add(1, Ordering::SeqCst);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running hostile server on `127.0.0.1`; stops when dropped.
pub struct HostileServer {
    port: u16,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
}

impl fmt::Debug for HostileServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostileServer")
            .field("port", &self.port)
            .field("fault", &lock(&self.shared.script).fault)
            .finish()
    }
}

impl HostileServer {
    /// Listens on a free loopback port and serves `mailbox` as `script` says.
    pub async fn start(script: Script, mailbox: Mailbox) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            script: Mutex::new(script),
            mailbox: Mutex::new(mailbox),
            received: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            faults: AtomicUsize::new(0),
        });
        let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accept = tokio::spawn({
            let shared = shared.clone();
            let connections = connections.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let id = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
                    let task = tokio::spawn(serve(stream, shared.clone(), id));
                    let mut handles = lock(&connections);
                    handles.retain(|h| !h.is_finished());
                    handles.push(task.abort_handle());
                }
            }
        });
        Ok(Self {
            port,
            shared,
            accept,
            connections,
        })
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `imap://user@127.0.0.1:port`; add `?tls=none` for a plain session.
    pub fn url(&self) -> String {
        format!("imap://{}@127.0.0.1:{}", lock(&self.shared.script).user, self.port)
    }

    /// Every command line received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared.received).clone()
    }

    /// The verbs of every command received so far (see [`Received::verb`]).
    pub fn verbs(&self) -> Vec<String> {
        lock(&self.shared.received).iter().map(Received::verb).collect()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// How often the fault was played (a test that never reached it proves
    /// nothing).
    pub fn faults_played(&self) -> usize {
        self.shared.faults.load(Ordering::SeqCst)
    }

    /// Plays another fault from the next command on.
    pub fn set_fault(&self, fault: Fault) {
        lock(&self.shared.script).fault = fault;
    }

    /// A copy of the store as it is now.
    pub fn mailbox(&self) -> Mailbox {
        lock(&self.shared.mailbox).clone()
    }

    /// Changes the store (between runs).
    pub fn with_mailbox<R>(&self, change: impl FnOnce(&mut Mailbox) -> R) -> R {
        change(&mut lock(&self.shared.mailbox))
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.accept.abort();
        for handle in lock(&self.connections).drain(..) {
            handle.abort();
        }
    }
}

async fn serve(stream: TcpStream, shared: Arc<Shared>, id: usize) {
    let (read, write) = stream.into_split();
    let mut connection = Connection {
        reader: BufReader::new(read),
        writer: write,
        shared,
        id,
        authenticated: false,
        selected: None,
    };
    // An I/O error only ends this connection.
    let _ = connection.run().await;
}

/// A byte of a command line or a whole literal.
#[derive(Debug, Clone)]
enum Item {
    Byte(u8),
    Literal(Vec<u8>),
}

/// A parsed command argument.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// An atom; a `[…]` section with spaces and parentheses stays inside it.
    Atom(String),
    /// A quoted string.
    Quoted(String),
    /// A literal.
    Literal(Vec<u8>),
    /// A parenthesised list.
    List(Vec<Token>),
}

impl Token {
    /// An atom, quoted string or literal as text.
    fn text(&self) -> Option<String> {
        match self {
            Token::Atom(s) | Token::Quoted(s) => Some(s.clone()),
            Token::Literal(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
            Token::List(_) => None,
        }
    }
}

/// Splits a command into tokens.
struct Parser {
    items: Vec<Item>,
    at: usize,
}

impl Parser {
    fn parse(items: Vec<Item>) -> Result<Vec<Token>, String> {
        let mut parser = Parser { items, at: 0 };
        parser.sequence(false)
    }

    fn byte(&self) -> Option<u8> {
        match self.items.get(self.at) {
            Some(Item::Byte(b)) => Some(*b),
            _ => None,
        }
    }

    fn sequence(&mut self, in_list: bool) -> Result<Vec<Token>, String> {
        let mut tokens = Vec::new();
        loop {
            match self.items.get(self.at) {
                None if in_list => return Err("unclosed list".into()),
                None => return Ok(tokens),
                Some(Item::Literal(data)) => {
                    tokens.push(Token::Literal(data.clone()));
                    self.at += 1;
                }
                Some(Item::Byte(b' ')) => self.at += 1,
                Some(Item::Byte(b')')) if in_list => {
                    self.at += 1;
                    return Ok(tokens);
                }
                Some(Item::Byte(b')')) => return Err("unexpected )".into()),
                Some(Item::Byte(b'(')) => {
                    self.at += 1;
                    tokens.push(Token::List(self.sequence(true)?));
                }
                Some(Item::Byte(b'"')) => {
                    self.at += 1;
                    tokens.push(Token::Quoted(self.quoted()?));
                }
                Some(Item::Byte(_)) => tokens.push(Token::Atom(self.atom())),
            }
        }
    }

    fn quoted(&mut self) -> Result<String, String> {
        let mut text = Vec::new();
        loop {
            let byte = self.byte().ok_or("unterminated quoted string")?;
            self.at += 1;
            match byte {
                b'"' => return Ok(String::from_utf8_lossy(&text).into_owned()),
                b'\\' => {
                    text.push(self.byte().ok_or("unterminated quoted string")?);
                    self.at += 1;
                }
                other => text.push(other),
            }
        }
    }

    fn atom(&mut self) -> String {
        let mut text = Vec::new();
        let mut depth = 0u32;
        while let Some(byte) = self.byte() {
            match byte {
                b' ' | b'(' | b')' if depth == 0 => break,
                b'[' => depth += 1,
                b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
            text.push(byte);
            self.at += 1;
        }
        String::from_utf8_lossy(&text).into_owned()
    }
}

/// `{n}` or `{n+}` at the end of a line: where it starts, n, and the `+`.
fn literal_suffix(line: &[u8]) -> Option<(usize, usize, bool)> {
    let inner = line.strip_suffix(b"}")?;
    let start = inner.iter().rposition(|b| *b == b'{')?;
    let spec = &inner[start + 1..];
    let (digits, plus) = match spec.strip_suffix(b"+") {
        Some(digits) => (digits, true),
        None => (spec, false),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let size = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((start, size, plus))
}

/// A set like `1:3,5,9:*`; `*` is the highest UID in use. Ranges may run
/// either way (`5:2`), as in IMAP.
fn parse_set(text: &str, highest: u32) -> Option<Vec<(u32, u32)>> {
    let number = |part: &str| -> Option<u32> {
        if part == "*" {
            Some(highest)
        } else {
            part.parse().ok()
        }
    };
    text.split(',')
        .map(|range| {
            let (a, b) = match range.split_once(':') {
                Some((a, b)) => (number(a)?, number(b)?),
                None => (number(range)?, number(range)?),
            };
            Some((a.min(b), a.max(b)))
        })
        .collect()
}

fn in_set(set: &[(u32, u32)], uid: u32) -> bool {
    set.iter().any(|(low, high)| (*low..=*high).contains(&uid))
}

/// What a FETCH asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FetchItem {
    Uid,
    Flags,
    InternalDate,
    Size,
    ModSeq,
    /// `BODY[<section>]`: the whole message when `fields` is `None`,
    /// else those header fields.
    Body {
        section: String,
        fields: Option<Vec<String>>,
    },
}

fn fetch_items(token: &Token) -> Result<Vec<FetchItem>, String> {
    let names: Vec<String> = match token {
        Token::List(list) => list.iter().filter_map(Token::text).collect(),
        other => other.text().into_iter().collect(),
    };
    names
        .iter()
        .map(|name| {
            let upper = name.to_ascii_uppercase();
            Ok(match upper.as_str() {
                "UID" => FetchItem::Uid,
                "FLAGS" => FetchItem::Flags,
                "INTERNALDATE" => FetchItem::InternalDate,
                "RFC822.SIZE" => FetchItem::Size,
                "MODSEQ" => FetchItem::ModSeq,
                "RFC822" => FetchItem::Body {
                    section: String::new(),
                    fields: None,
                },
                _ => {
                    let section = upper
                        .strip_prefix("BODY.PEEK[")
                        .or_else(|| upper.strip_prefix("BODY["))
                        .and_then(|rest| rest.strip_suffix(']'))
                        .ok_or_else(|| format!("unsupported FETCH item {name}"))?;
                    let fields = if section.is_empty() {
                        None
                    } else {
                        let list = section
                            .strip_prefix("HEADER.FIELDS (")
                            .and_then(|rest| rest.strip_suffix(')'))
                            .ok_or_else(|| format!("unsupported section {section}"))?;
                        Some(list.split_whitespace().map(str::to_string).collect())
                    };
                    FetchItem::Body {
                        section: section.to_string(),
                        fields,
                    }
                }
            })
        })
        .collect()
}

/// The named header fields of a message, with their continuation lines,
/// and the blank line that ends a header.
fn header_fields(raw: &[u8], fields: &[String]) -> Vec<u8> {
    let header_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |p| p + 2);
    let mut out = Vec::new();
    let mut keep = false;
    for line in raw[..header_end].split_inclusive(|b| *b == b'\n') {
        if !line.starts_with(b" ") && !line.starts_with(b"\t") {
            let name = line.split(|b| *b == b':').next().unwrap_or_default();
            let name = String::from_utf8_lossy(name);
            keep = fields.iter().any(|f| f.eq_ignore_ascii_case(name.trim()));
        }
        if keep {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// One message's FETCH response; a `literal` fault bends its body literal.
fn fetch_response(seq: usize, message: &StoredMessage, items: &[FetchItem], literal: Option<FetchFault>) -> Vec<u8> {
    let mut out = format!("* {seq} FETCH (UID {}", message.uid).into_bytes();
    for item in items {
        match item {
            FetchItem::Uid | FetchItem::ModSeq => {}
            FetchItem::Flags => out.extend(format!(" FLAGS ({})", message.flags.join(" ")).bytes()),
            FetchItem::InternalDate => {
                out.extend(format!(" INTERNALDATE \"{}\"", message.internal_date.format(DATE_TIME)).bytes())
            }
            FetchItem::Size => out.extend(format!(" RFC822.SIZE {}", message.raw.len()).bytes()),
            FetchItem::Body { section, fields } => {
                let data = match fields {
                    Some(fields) => header_fields(&message.raw, fields),
                    None => message.raw.clone(),
                };
                out.extend(format!(" BODY[{section}] {{{}}}\r\n", data.len()).bytes());
                match (fields, literal) {
                    (None, Some(FetchFault::LiteralTooLong { extra })) => {
                        out.extend_from_slice(&data);
                        out.extend(std::iter::repeat_n(b'X', extra));
                    }
                    (None, Some(FetchFault::LiteralTooShort { missing })) => {
                        out.extend_from_slice(&data[..data.len().saturating_sub(missing)]);
                    }
                    _ => out.extend_from_slice(&data),
                }
            }
        }
    }
    out.extend_from_slice(b")\r\n");
    out
}

/// Applies a UID STORE to the selected folder; returns the untagged FETCH
/// responses (none with `.SILENT`) or the tagged refusal.
fn store_flags(
    mailbox: &mut Mailbox,
    selected: &str,
    set: &str,
    operation: &str,
    flags: &[String],
) -> Result<String, &'static str> {
    let folder = mailbox.folder_mut(selected).ok_or("NO Mailbox is gone")?;
    let highest = folder.messages.last().map_or(0, |m| m.uid);
    let set = parse_set(set, highest).ok_or("BAD Invalid UID set")?;
    let mut out = String::new();
    for (i, message) in folder.messages.iter_mut().enumerate() {
        if !in_set(&set, message.uid) {
            continue;
        }
        if operation.starts_with("+FLAGS") {
            for flag in flags {
                if !message.flags.contains(flag) {
                    message.flags.push(flag.clone());
                }
            }
        } else if operation.starts_with("-FLAGS") {
            message.flags.retain(|f| !flags.contains(f));
        } else {
            message.flags = flags.to_vec();
        }
        if !operation.ends_with(".SILENT") {
            out.push_str(&format!(
                "* {} FETCH (UID {} FLAGS ({}))\r\n",
                i + 1,
                message.uid,
                message.flags.join(" ")
            ));
        }
    }
    Ok(out)
}

/// Whether to go on reading commands.
enum Flow {
    Continue,
    Close,
}

/// A command as read: its bytes and literals, and how it is recorded.
struct Request {
    items: Vec<Item>,
    shown: String,
}

struct Connection {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    shared: Arc<Shared>,
    id: usize,
    authenticated: bool,
    selected: Option<String>,
}

impl Connection {
    async fn run(&mut self) -> io::Result<()> {
        let script = self.shared.script();
        if script.fault == Fault::Silent {
            self.shared.played();
            let mut sink = [0u8; 4096];
            while self.reader.read(&mut sink).await? > 0 {}
            return Ok(());
        }
        let greeting = if script.greeting_capabilities {
            format!("* OK [CAPABILITY {}] hostile IMAP ready\r\n", script.capability_text())
        } else {
            "* OK ready\r\n".to_string()
        };
        self.send(greeting.as_bytes()).await?;
        while let Some(request) = self.read_command().await? {
            let line = request
                .shown
                .split_once(' ')
                .map_or(String::new(), |(_, rest)| rest.to_string());
            lock(&self.shared.received).push(Received {
                connection: self.id,
                line,
            });
            if let Flow::Close = self.handle(request.items).await? {
                break;
            }
        }
        self.writer.shutdown().await
    }

    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes).await?;
        self.writer.flush().await
    }

    async fn tagged(&mut self, tag: &str, status: &str) -> io::Result<Flow> {
        self.send(format!("{tag} {status}\r\n").as_bytes()).await?;
        Ok(Flow::Continue)
    }

    /// Reads one command with its literals; `None` at the end of the stream.
    async fn read_command(&mut self) -> io::Result<Option<Request>> {
        let mut items = Vec::new();
        let mut shown = String::new();
        loop {
            let mut line = Vec::new();
            let read = (&mut self.reader).take(MAX_LINE).read_until(b'\n', &mut line).await?;
            if read == 0 {
                return Ok(None);
            }
            if !line.ends_with(b"\n") {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "command line cut off or too long",
                ));
            }
            line.pop();
            if line.ends_with(b"\r") {
                line.pop();
            }
            if self.shared.script().fault == Fault::StopsReadingAtAppend
                && String::from_utf8_lossy(&line).to_ascii_uppercase().contains(" APPEND ")
            {
                self.shared.played();
                lock(&self.shared.received).push(Received {
                    connection: self.id,
                    line: "APPEND (not read)".into(),
                });
                std::future::pending::<()>().await;
            }
            let Some((start, size, plus)) = literal_suffix(&line) else {
                shown.push_str(&String::from_utf8_lossy(&line));
                items.extend(line.iter().map(|b| Item::Byte(*b)));
                return Ok(Some(Request { items, shown }));
            };
            if size > MAX_LITERAL {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "literal too large"));
            }
            shown.push_str(&String::from_utf8_lossy(&line[..start]));
            shown.push_str(&format!("{{{size}}}"));
            items.extend(line[..start].iter().map(|b| Item::Byte(*b)));
            if !plus {
                self.send(b"+ Ready for literal data\r\n").await?;
            }
            let mut data = vec![0; size];
            self.reader.read_exact(&mut data).await?;
            items.push(Item::Literal(data));
        }
    }

    async fn handle(&mut self, items: Vec<Item>) -> io::Result<Flow> {
        let tokens = match Parser::parse(items) {
            Ok(tokens) => tokens,
            Err(problem) => {
                self.send(format!("* BAD {problem}\r\n").as_bytes()).await?;
                return Ok(Flow::Continue);
            }
        };
        let mut tokens = tokens.into_iter();
        let (Some(Token::Atom(tag)), Some(Token::Atom(name))) = (tokens.next(), tokens.next()) else {
            self.send(b"* BAD tag and command expected\r\n").await?;
            return Ok(Flow::Continue);
        };
        let mut name = name.to_ascii_uppercase();
        if name == "UID" {
            let sub = tokens.next().and_then(|t| t.text()).unwrap_or_default();
            name = format!("UID {}", sub.to_ascii_uppercase());
        }
        let args: Vec<Token> = tokens.collect();
        let script = self.shared.script();
        match name.as_str() {
            "CAPABILITY" => {
                self.send(format!("* CAPABILITY {}\r\n", script.capability_text()).as_bytes())
                    .await?;
                self.tagged(&tag, "OK CAPABILITY completed").await
            }
            "NOOP" => self.tagged(&tag, "OK NOOP completed").await,
            "LOGOUT" => {
                self.send(b"* BYE Logging out\r\n").await?;
                self.tagged(&tag, "OK LOGOUT completed").await?;
                Ok(Flow::Close)
            }
            "STARTTLS" if script.has_capability("STARTTLS") && !self.authenticated => {
                // Nothing here speaks TLS: the client's handshake fails.
                self.tagged(&tag, "OK Begin TLS negotiation now").await?;
                Ok(Flow::Close)
            }
            "LOGIN" => {
                let user = args.first().and_then(Token::text);
                let password = args.get(1).and_then(Token::text);
                if self.authenticated {
                    self.tagged(&tag, "BAD Already logged in").await
                } else if user.as_deref() == Some(script.user.as_str())
                    && password.as_deref() == Some(script.password.as_str())
                {
                    self.authenticated = true;
                    self.tagged(&tag, "OK Logged in").await
                } else {
                    self.tagged(&tag, "NO [AUTHENTICATIONFAILED] Authentication failed.")
                        .await
                }
            }
            _ if !self.authenticated => self.tagged(&tag, "BAD Log in first").await,
            "LIST" => self.list(&tag, &script).await,
            "CREATE" => {
                let Some(folder) = args.first().and_then(Token::text) else {
                    return self.tagged(&tag, "BAD CREATE needs a name").await;
                };
                if lock(&self.shared.mailbox).create(&folder) {
                    self.tagged(&tag, "OK CREATE completed").await
                } else {
                    self.tagged(&tag, "NO [ALREADYEXISTS] Mailbox already exists").await
                }
            }
            "SELECT" | "EXAMINE" => self.select(&tag, &name, &args).await,
            "UNSELECT" | "CLOSE" => {
                self.selected = None;
                self.tagged(&tag, &format!("OK {name} completed")).await
            }
            "UID SEARCH" => self.search(&tag, &args, &script).await,
            "UID FETCH" => self.fetch(&tag, &args, &script).await,
            "UID STORE" => self.store(&tag, &args).await,
            "APPEND" => self.append(&tag, &args, &script).await,
            _ => self.tagged(&tag, &format!("BAD {name} is not supported here")).await,
        }
    }

    async fn list(&mut self, tag: &str, script: &Script) -> io::Result<Flow> {
        let names: Vec<String> = lock(&self.shared.mailbox)
            .folders()
            .iter()
            .map(|f| f.name.clone())
            .collect();
        let mut out = String::new();
        for name in names {
            out.push_str(&format!(
                "* LIST (\\HasNoChildren) \"{}\" \"{name}\"\r\n",
                script.separator
            ));
        }
        self.send(out.as_bytes()).await?;
        self.tagged(tag, "OK LIST completed").await
    }

    async fn select(&mut self, tag: &str, verb: &str, args: &[Token]) -> io::Result<Flow> {
        self.selected = None;
        let Some(name) = args.first().and_then(Token::text) else {
            return self.tagged(tag, &format!("BAD {verb} needs a mailbox")).await;
        };
        let status = lock(&self.shared.mailbox)
            .folder(&name)
            .map(|f| (f.name.clone(), f.messages.len(), f.uid_validity, f.uid_next));
        let Some((name, exists, uid_validity, uid_next)) = status else {
            return self.tagged(tag, "NO [NONEXISTENT] Mailbox doesn't exist").await;
        };
        let out = format!(
            "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n\
             * OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted.\r\n\
             * {exists} EXISTS\r\n\
             * 0 RECENT\r\n\
             * OK [UIDVALIDITY {uid_validity}] UIDs valid\r\n\
             * OK [UIDNEXT {uid_next}] Predicted next UID\r\n"
        );
        self.send(out.as_bytes()).await?;
        self.selected = Some(name);
        let mode = if verb == "EXAMINE" { "READ-ONLY" } else { "READ-WRITE" };
        self.tagged(tag, &format!("OK [{mode}] {verb} completed")).await
    }

    /// The selected folder's messages (with sequence numbers) in a UID set.
    fn messages_in(&self, set: &str) -> Option<Vec<(usize, StoredMessage)>> {
        let mailbox = lock(&self.shared.mailbox);
        let folder = mailbox.folder(self.selected.as_deref()?)?;
        let highest = folder.messages.last().map_or(0, |m| m.uid);
        let set = parse_set(set, highest)?;
        Some(
            folder
                .messages
                .iter()
                .enumerate()
                .filter(|(_, m)| in_set(&set, m.uid))
                .map(|(i, m)| (i + 1, m.clone()))
                .collect(),
        )
    }

    async fn search(&mut self, tag: &str, args: &[Token], script: &Script) -> io::Result<Flow> {
        if self.selected.is_none() {
            return self.tagged(tag, "BAD No mailbox selected").await;
        }
        let mut found = self.messages_in("1:*").unwrap_or_default();
        let mut args = args.iter();
        while let Some(key) = args.next() {
            match key.text().map(|k| k.to_ascii_uppercase()).as_deref() {
                Some("ALL") => {}
                Some("UID") => {
                    let set = args.next().and_then(Token::text).unwrap_or_default();
                    let Some(wanted) = self.messages_in(&set) else {
                        return self.tagged(tag, "BAD Invalid UID set").await;
                    };
                    found.retain(|(_, m)| wanted.iter().any(|(_, w)| w.uid == m.uid));
                }
                _ => return self.tagged(tag, "BAD Unsupported search key").await,
            }
        }
        let copies = if script.fault == Fault::DuplicateSearch { 2 } else { 1 };
        if copies > 1 && !found.is_empty() {
            self.shared.played();
        }
        let mut out = "* SEARCH".to_string();
        for (_, message) in &found {
            for _ in 0..copies {
                out.push_str(&format!(" {}", message.uid));
            }
        }
        out.push_str("\r\n");
        self.send(out.as_bytes()).await?;
        self.tagged(tag, "OK SEARCH completed").await
    }

    async fn fetch(&mut self, tag: &str, args: &[Token], script: &Script) -> io::Result<Flow> {
        let (Some(set), Some(items)) = (args.first().and_then(Token::text), args.get(1)) else {
            return self.tagged(tag, "BAD UID FETCH needs a set and items").await;
        };
        let items = match fetch_items(items) {
            Ok(items) => items,
            Err(problem) => return self.tagged(tag, &format!("BAD {problem}")).await,
        };
        let Some(messages) = self.messages_in(&set) else {
            return self.tagged(tag, "BAD No mailbox selected or invalid UID set").await;
        };
        let whole_body = items.iter().any(|i| matches!(i, FetchItem::Body { fields: None, .. }));
        for (seq, message) in messages {
            let fault = match &script.fault {
                Fault::InBodyFetch { folder, uid, fault }
                    if whole_body && *uid == message.uid && self.selected.as_deref() == Some(folder.as_str()) =>
                {
                    self.shared.played();
                    Some(*fault)
                }
                _ => None,
            };
            let response = fetch_response(seq, &message, &items, fault);
            match fault {
                Some(FetchFault::Garbage) => self.send(GARBAGE).await?,
                Some(FetchFault::Truncated) => {
                    self.send(&response[..response.len() / 2]).await?;
                    return Ok(Flow::Close);
                }
                Some(FetchFault::Bye) => {
                    self.send(b"* BYE Server shutting down for maintenance\r\n").await?;
                    return Ok(Flow::Close);
                }
                _ => {
                    self.send(&response).await?;
                    if script.fault == Fault::DuplicateFetch {
                        self.shared.played();
                        self.send(&response).await?;
                    }
                }
            }
        }
        self.tagged(tag, "OK UID FETCH completed").await
    }

    async fn store(&mut self, tag: &str, args: &[Token]) -> io::Result<Flow> {
        let (Some(set), Some(operation), Some(Token::List(flags))) = (
            args.first().and_then(Token::text),
            args.get(1).and_then(Token::text),
            args.get(2),
        ) else {
            return self
                .tagged(tag, "BAD UID STORE needs a set, an operation and flags")
                .await;
        };
        let operation = operation.to_ascii_uppercase();
        let flags: Vec<String> = flags.iter().filter_map(Token::text).collect();
        let Some(selected) = self.selected.clone() else {
            return self.tagged(tag, "BAD No mailbox selected").await;
        };
        let stored = store_flags(&mut lock(&self.shared.mailbox), &selected, &set, &operation, &flags);
        match stored {
            Ok(out) => {
                self.send(out.as_bytes()).await?;
                self.tagged(tag, "OK STORE completed").await
            }
            Err(problem) => self.tagged(tag, problem).await,
        }
    }

    async fn append(&mut self, tag: &str, args: &[Token], script: &Script) -> io::Result<Flow> {
        let Some(name) = args.first().and_then(Token::text) else {
            return self.tagged(tag, "BAD APPEND needs a mailbox").await;
        };
        let mut messages = Vec::new();
        let mut flags = Vec::new();
        let mut date = None;
        for token in &args[1..] {
            match token {
                Token::List(list) => flags = list.iter().filter_map(Token::text).collect(),
                Token::Quoted(text) => match DateTime::parse_from_str(text.trim(), DATE_TIME) {
                    Ok(parsed) => date = Some(parsed),
                    Err(_) => return self.tagged(tag, "BAD Invalid date-time").await,
                },
                Token::Literal(raw) => messages.push((
                    std::mem::take(&mut flags),
                    date.take().unwrap_or_else(|| Utc::now().fixed_offset()),
                    raw.clone(),
                )),
                Token::Atom(_) => return self.tagged(tag, "BAD Unexpected APPEND argument").await,
            }
        }
        if messages.is_empty() {
            return self.tagged(tag, "BAD APPEND without a message").await;
        }
        let stored = {
            let mut mailbox = lock(&self.shared.mailbox);
            match (mailbox.folder(&name), &script.fault) {
                (None, _) => None,
                (Some(_), Fault::OverQuota { limit }) if mailbox.message_count() + messages.len() > *limit => {
                    Some(Err("[OVERQUOTA] Quota exceeded (mailbox for user is full)".to_string()))
                }
                (Some(_), Fault::SizeLimit { max_bytes, refusal })
                    if messages.iter().any(|(_, _, raw)| raw.len() > *max_bytes) =>
                {
                    Some(Err(refusal.clone()))
                }
                (Some(folder), _) => {
                    let (folder_name, uid_validity) = (folder.name.clone(), folder.uid_validity);
                    let uids: Vec<u32> = messages
                        .into_iter()
                        .map(|(flags, date, raw)| {
                            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
                            mailbox.add(&folder_name, raw, &flags, date)
                        })
                        .collect();
                    Some(Ok((uid_validity, uids)))
                }
            }
        };
        match stored {
            None => self.tagged(tag, "NO [TRYCREATE] Mailbox doesn't exist").await,
            Some(Err(refusal)) => {
                self.shared.played();
                self.tagged(tag, &format!("NO {refusal}")).await
            }
            Some(Ok((uid_validity, uids))) if script.has_capability("UIDPLUS") => {
                let set = match (uids.first(), uids.last()) {
                    (Some(first), Some(last)) if first != last => format!("{first}:{last}"),
                    (Some(first), _) => first.to_string(),
                    _ => String::new(),
                };
                self.tagged(tag, &format!("OK [APPENDUID {uid_validity} {set}] APPEND completed"))
                    .await
            }
            Some(Ok(_)) => self.tagged(tag, "OK APPEND completed").await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(text: &[u8]) -> Vec<Item> {
        text.iter().map(|b| Item::Byte(*b)).collect()
    }

    #[test]
    fn commands_split_into_atoms_strings_lists_and_literals() {
        let mut items = bytes(b"c3 APPEND \"INBOX\" (\\Seen $Forwarded) \"07-Mar-2021 09:05:01 +0100\" ");
        items.push(Item::Literal(b"body".to_vec()));
        let tokens = Parser::parse(items).unwrap();
        assert_eq!(tokens[1], Token::Atom("APPEND".into()));
        assert_eq!(tokens[2], Token::Quoted("INBOX".into()));
        assert_eq!(
            tokens[3],
            Token::List(vec![Token::Atom("\\Seen".into()), Token::Atom("$Forwarded".into())])
        );
        assert_eq!(tokens[5], Token::Literal(b"body".to_vec()));
        let fetch = Parser::parse(bytes(
            b"c4 UID FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID DATE)])",
        ))
        .unwrap();
        let items = fetch_items(&fetch[4]).unwrap();
        assert_eq!(
            items[1],
            FetchItem::Body {
                section: "HEADER.FIELDS (MESSAGE-ID DATE)".into(),
                fields: Some(vec!["MESSAGE-ID".into(), "DATE".into()]),
            }
        );
    }

    #[test]
    fn literal_markers_sets_and_header_fields() {
        assert_eq!(literal_suffix(b"c1 APPEND INBOX {12+}"), Some((16, 12, true)));
        assert_eq!(literal_suffix(b"c1 LOGIN a {3}"), Some((11, 3, false)));
        assert_eq!(literal_suffix(b"c1 NOOP {x}"), None);
        let set = parse_set("1:3,7,9:*", 12).unwrap();
        assert!(in_set(&set, 2) && in_set(&set, 7) && in_set(&set, 12) && !in_set(&set, 5));
        // "n:*" with every UID below n still matches the highest, as in IMAP.
        assert!(in_set(&parse_set("20:*", 12).unwrap(), 12));
        let raw = b"Subject: a\r\n b\r\nX-Other: y\r\nFrom: c\r\n\r\nbody";
        assert_eq!(
            header_fields(raw, &["FROM".into(), "SUBJECT".into()]),
            b"Subject: a\r\n b\r\nFrom: c\r\n\r\n".to_vec()
        );
    }
}
