//! Criterion benchmarks of the engine's hot paths that need no server:
//! fingerprinting, delta planning on a 100,000-message folder, state
//! batches and Maildir writing. Server-bound speed is measured by
//! `cutover-harness bench` against a floor of the same servers.

use std::hint::black_box;

use chrono::DateTime;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use cutover_engine::fingerprint::Fingerprint;
use cutover_engine::message::{Flags, Message};
use cutover_engine::state::{FolderState, MessageRow, State};
use cutover_engine::sync::plan;
use cutover_engine::target::Target;

const FOLDER_SIZE: u32 = 100_000;

fn raw_message(i: u32, body_bytes: usize) -> Vec<u8> {
    let mut raw = format!(
        "Received: from mx{i}.example.org by mail.example.net; Mon, 1 Jan 2024 10:00:00 +0000\r\n\
         Message-ID: <{i}.bench@example.org>\r\nFrom: Sender {i} <s{i}@example.org>\r\nTo: r@example.net\r\n\
         Subject: Quarterly report {i}\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    .into_bytes();
    while raw.len() < body_bytes {
        raw.extend_from_slice(b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n");
    }
    raw
}

fn rows(count: u32) -> Vec<MessageRow> {
    (1..=count)
        .map(|uid| MessageRow {
            source_uid: uid,
            target_ref: Some(uid.to_string()),
            fingerprint: Fingerprint::from_headers(format!("Message-ID: <{uid}@b>\r\n\r\n").as_bytes(), 1),
            flags: Flags::new(["\\Seen"]),
            size: 10_000,
            internal_date: 1_700_000_000,
            source_gone: false,
        })
        .collect()
}

fn fingerprinting(c: &mut Criterion) {
    let message = raw_message(7, 20_000);
    let mut group = c.benchmark_group("fingerprint");
    group.throughput(Throughput::Elements(1));
    group.bench_function("20 KB message", |b| {
        b.iter(|| Fingerprint::from_headers(black_box(&message), message.len() as u64))
    });
    let no_id: Vec<u8> = String::from_utf8_lossy(&message)
        .replace("Message-ID", "X-Old-ID")
        .into_bytes();
    group.bench_function("20 KB message without Message-ID", |b| {
        b.iter(|| Fingerprint::from_headers(black_box(&no_id), no_id.len() as u64))
    });
    group.finish();
}

fn delta_planning(c: &mut Criterion) {
    let rows = rows(FOLDER_SIZE);
    // 0.2% re-flagged, 0.2% deleted: the delta issue's workload.
    let source_flags: Vec<(u32, Flags)> = (1..=FOLDER_SIZE)
        .filter(|uid| uid % 500 == 0)
        .map(|uid| (uid, Flags::new(["\\Seen", "\\Flagged"])))
        .collect();
    let existing: Vec<u32> = (1..=FOLDER_SIZE).filter(|uid| uid % 500 != 1).collect();
    let mut group = c.benchmark_group("delta planning, 100k-message folder");
    group.bench_function("flag changes", |b| {
        b.iter(|| plan::flag_changes(black_box(&rows), &source_flags))
    });
    group.bench_function("deletions", |b| {
        b.iter(|| plan::deletions(black_box(&rows), &[], &existing))
    });
    group.bench_function("load state rows", |b| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut state = State::open(dir.path().join("bench.db")).expect("state");
        let mailbox = state.mailbox("imap://bench@h:1", "maildir:/b").expect("mailbox");
        let mut folder: FolderState = state.folder(mailbox, "INBOX", "INBOX").expect("folder");
        folder.highest_uid = FOLDER_SIZE;
        state.record_batch(&folder, &rows, &[]).expect("rows");
        b.iter(|| state.messages(folder.id).expect("load"))
    });
    group.finish();
}

fn state_batches(c: &mut Criterion) {
    let batch = rows(200);
    let mut group = c.benchmark_group("state");
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function("record a 200-message batch", |b| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut state = State::open(dir.path().join("bench.db")).expect("state");
        let mailbox = state.mailbox("imap://bench@h:1", "maildir:/b").expect("mailbox");
        let folder = state.folder(mailbox, "INBOX", "INBOX").expect("folder");
        b.iter(|| state.record_batch(&folder, black_box(&batch), &[]).expect("record"))
    });
    group.finish();
}

fn maildir_writing(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let date = DateTime::parse_from_rfc3339("2024-01-01T10:00:00+00:00").expect("date");
    let messages: Vec<Message> = (1..=100)
        .map(|uid| Message {
            uid,
            flags: Flags::new(["\\Seen"]),
            internal_date: date,
            raw: raw_message(uid, 15_000),
        })
        .collect();
    let bytes: usize = messages.iter().map(|m| m.raw.len()).sum();
    let mut group = c.benchmark_group("maildir");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("append 100 × 15 KB", |b| {
        b.iter_batched(
            || tempfile::tempdir().expect("tempdir"),
            |dir| {
                runtime.block_on(async {
                    let endpoint = cutover_engine::endpoint::Endpoint::Maildir(dir.path().to_path_buf());
                    let mut target = Target::open(&endpoint, None, &Default::default()).await.expect("open");
                    target.append("INBOX", &messages).await.expect("append");
                });
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn csv_validation(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wave.csv");
    let mut text = String::from("source_address,source_password,target_address,target_password,business_unit,wave\n");
    for i in 0..10_000 {
        text.push_str(&format!(
            "user{i}@old.example.org,env:SRC_PW,user{i}@new.example.net,file:/etc/cutover/target.pw,unit{},w{}\n",
            i % 17,
            i % 3
        ));
    }
    std::fs::write(&path, text).expect("write csv");
    let mut group = c.benchmark_group("batch file");
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("validate 10,000 rows", |b| {
        b.iter(|| cutover_engine::batch::input::read_batch(black_box(&path)).expect("valid"))
    });
    group.finish();
}

criterion_group!(
    benches,
    fingerprinting,
    delta_planning,
    state_batches,
    maildir_writing,
    csv_validation
);
criterion_main!(benches);
