use std::path::PathBuf;
use cutover_engine::batch::input::*;
#[test]
fn dump() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/batches");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().chain(std::fs::read_dir(dir.join("bad")).unwrap()).map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    for f in files {
        println!("=== {}", f.display());
        match read_batch(&f) {
            Ok(b) => { println!("OK {:?} {} rows", b.format, b.rows.len()); for r in &b.rows { println!("  {r:?}"); } for w in &b.warnings { println!("  W {w}"); } }
            Err(ps) => for p in ps { println!("  E {p}"); },
        }
    }
}
