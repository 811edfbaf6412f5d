//! `sluice sources`: what became of each source, from the lake alone.

use crate::common::*;

fn sources(root: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let out = run(sluice(root).args(["--json", "sources"]).args(args));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn sources_says_what_became_of_each_file() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        let a = jsonl(dir.path(), "a.jsonl", 0..10);
        let c = jsonl(dir.path(), "c.jsonl", 100..105);
        let d = jsonl(dir.path(), "d.jsonl", 200..203);
        assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&a)).status.code(), Some(0));
        assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "u"]).arg(&c).arg(&d)).status.code(), Some(0));
        let bad = write(dir.path(), "bad.jsonl", b"{\"id\": 1}\n{\"id\": \n");
        assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&bad)).status.code(), Some(3));
        // Killed after its commit, with a deadline far away: in flight.
        let late = jsonl(dir.path(), "late.jsonl", 10..20);
        kill_9_at(sluice(&b.root).args(["ingest", "--table", "t", "--timeout", "3s"]).arg(&late), "ingest.after-commit");

        let all = sources(&b.root, &[]);
        let by_status = |s: &str| all.iter().filter(|e| e["status"] == s).collect::<Vec<_>>();
        let in_flight = by_status("in-flight");
        assert_eq!(in_flight.len(), 1, "{}: {all:?}", b.name);
        assert_eq!((&in_flight[0]["uri"], &in_flight[0]["table"]), (&late.display().to_string().into(), &"t".into()));
        let quarantined = by_status("quarantined");
        assert_eq!(quarantined.len(), 1, "{}: {all:?}", b.name);
        assert!(quarantined[0]["reason"].as_str().unwrap().contains("line 2"), "{quarantined:?}");
        let ingested = by_status("ingested");
        let v = status(&b.root)["manifest_version"].as_u64().unwrap();
        let seen: Vec<(String, String, u64, u64)> = ingested
            .iter()
            .map(|e| {
                let name = e["uri"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
                (name, e["table"].as_str().unwrap().to_string(), e["manifest_version"].as_u64().unwrap(), e["rows"].as_u64().unwrap())
            })
            .collect();
        assert_eq!(
            seen,
            vec![("c.jsonl".into(), "u".into(), v, 5), ("d.jsonl".into(), "u".into(), v, 3), ("a.jsonl".into(), "t".into(), v - 1, 10)],
            "{}: newest first, with the version that published each",
            b.name
        );
        assert!(ingested.iter().all(|e| e["bytes"].as_u64().unwrap() > 0 && e["identity"].as_str().unwrap().contains("sha256=")));

        // Filters: table, status, limit, since.
        let t = sources(&b.root, &["--table", "t", "--status", "ingested"]);
        assert_eq!(t.len(), 1);
        // A quarantined file is listed under the table it was for.
        let q = sources(&b.root, &["--table", "t", "--status", "quarantined"]);
        assert_eq!((q.len(), &q[0]["table"]), (1, &"t".into()), "{q:?}");
        assert!(sources(&b.root, &["--table", "u", "--status", "quarantined"]).is_empty());
        assert_eq!(sources(&b.root, &["--status", "ingested", "--limit", "2"]).len(), 2);
        assert!(sources(&b.root, &["--since", "2099-01-01T00:00:00Z"]).is_empty());

        // Recovery publishes the dead ingest: it is ingested now, at the version recovery published.
        sweep_until_clean(&b.root, std::time::Duration::from_secs(60));
        let now = sources(&b.root, &["--status", "ingested", "--table", "t"]);
        assert_eq!(now[0]["uri"], late.display().to_string(), "{now:?}");
        assert_eq!(now[0]["manifest_version"], status(&b.root)["manifest_version"]);
        assert!(sources(&b.root, &["--status", "in-flight"]).is_empty());

        // The bad file fixed in place and ingested: no longer quarantined.
        std::fs::write(&bad, b"{\"id\": 1}\n{\"id\": 2}\n").unwrap();
        assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&bad)).status.code(), Some(0));
        assert!(sources(&b.root, &["--status", "quarantined"]).is_empty(), "{}", b.name);
    }
}
