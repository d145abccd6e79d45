//! The PostgreSQL launcher against Debian's real server, checked with psql
//! only, so nothing but the harness is under test.

use std::process::Command;
use std::time::Instant;

use cutover_harness::postgres::{self, Postgres};

/// psql over TCP with a URL, as an application would connect.
fn psql_url(url: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .arg(url)
        .args(["-c", sql])
        .env_remove("PGPASSWORD")
        .env_remove("PGSERVICE")
        .output()
        .expect("running psql");
    assert!(
        output.status.success(),
        "psql over TCP failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[test]
fn start_serves_the_admin_socket_and_the_app_url() {
    let started = Instant::now();
    let pg = Postgres::start().expect("start postgres");
    eprintln!("Postgres::start took {:?}", started.elapsed());
    assert!(pg.is_running());
    assert_eq!(pg.psql("postgres", "select 1").unwrap().trim(), "1");

    let url = pg.url();
    assert!(
        url.starts_with("postgres://cutover:") && url.ends_with(&format!("@127.0.0.1:{}/cutover", pg.port())),
        "unexpected URL shape"
    );
    assert_eq!(psql_url(&url, "select current_user"), "cutover");
    assert_eq!(psql_url(&url, "select current_database()"), "cutover");

    // A wrong password is refused: host connections really use SCRAM.
    let wrong = url.replacen("postgres://cutover:", "postgres://cutover:x", 1);
    let status = Command::new("psql")
        .args(["-X", "-c", "select 1"])
        .arg(&wrong)
        .env_remove("PGPASSWORD")
        .output()
        .expect("running psql")
        .status;
    assert!(!status.success(), "a wrong password was accepted");
}

#[test]
fn create_database_gives_fresh_databases() {
    let pg = Postgres::start().expect("start postgres");
    let first = pg.create_database().unwrap();
    let second = pg.create_database().unwrap();
    assert_ne!(first, second);
    let name = |url: &str| url.rsplit('/').next().unwrap().to_owned();
    assert_ne!(name(&first), name(&second));

    psql_url(&first, "create table t (x int); insert into t values (1)");
    assert_eq!(psql_url(&first, "select count(*) from t"), "1");
    // The second database does not see the first one's table.
    assert_eq!(
        psql_url(&second, "select count(*) from pg_tables where tablename = 't'"),
        "0"
    );
    assert_eq!(
        pg.psql(
            &name(&second),
            "select pg_get_userbyid(datdba) from pg_database where datname = current_database()"
        )
        .unwrap()
        .trim(),
        "cutover"
    );
}

#[test]
fn restart_and_stop_keep_data_and_port() {
    let mut pg = Postgres::start().expect("start postgres");
    let port = pg.port();
    let url = pg.create_database().unwrap();
    psql_url(&url, "create table kept (x int); insert into kept values (42)");

    pg.restart().expect("restart");
    assert_eq!(pg.port(), port);
    assert!(pg.is_running());
    assert_eq!(psql_url(&url, "select x from kept"), "42");

    pg.stop().expect("stop");
    assert!(!pg.is_running());
    assert!(pg.psql("postgres", "select 1").is_err());
    pg.stop().expect("stopping a stopped server");
    pg.start_again().expect("start again");
    assert!(pg.is_running());
    assert_eq!(pg.port(), port);
    assert_eq!(psql_url(&url, "select x from kept"), "42");
}

#[test]
fn start_again_on_a_taken_port_fails_with_the_server_log() {
    let mut pg = Postgres::start().expect("start postgres");
    pg.stop().unwrap();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", pg.port())).expect("take the port");
    let err = pg.start_again().unwrap_err().to_string();
    assert!(err.contains("Address already in use"), "{err}");
    assert!(err.contains(&pg.port().to_string()), "{err}");
    assert!(!pg.is_running());
    drop(squatter);
    pg.start_again().expect("start once the port is free");
    assert_eq!(pg.psql("postgres", "select 1").unwrap().trim(), "1");
}

#[test]
fn errors_name_the_problem_but_not_the_password() {
    let pg = postgres::shared();
    let err = pg
        .psql("postgres", "select * from no_such_table")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no_such_table"), "{err}");
    let password = pg
        .url()
        .split(':')
        .nth(2)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    let err = pg
        .psql("postgres", &format!("select '{password}' from no_such_table"))
        .unwrap_err()
        .to_string();
    assert!(!err.contains(&password), "{err}");
}

#[test]
fn drop_stops_the_server_and_removes_its_directory() {
    let pg = Postgres::start().expect("start postgres");
    let dir = pg.temp_dir().to_owned();
    let port = pg.port();
    drop(pg);
    assert!(!dir.exists());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn shared_is_one_cluster() {
    let a = postgres::shared();
    let b = postgres::shared();
    assert!(std::ptr::eq(a, b));
    assert_eq!(a.port(), b.port());
    let url = a.create_database().unwrap();
    assert_eq!(psql_url(&url, "select current_user"), "cutover");
}
