//! Round trips: the latency model (a fixed delay before every request, sluice's
//! and Lance's alike) makes wall time count sequential requests, as on S3.
//!
//! - `roundtrips`: one 1 MiB JSONL ingest, with no delay and with `delay` per
//!   request; the round trips each waited for in sequence (counted by the
//!   lake's wrapper, and checked against the wall-time difference). Then,
//!   with `delay`: an upsert against plain Lance's merge-insert, and a
//!   redelivery of a file already ingested.
//! - `contention`: 1, 8 and 32 single-file ingests at once into one table,
//!   each a separate worker (its own lake handle), with `delay` per request.

use std::path::Path;
use std::time::{Duration, Instant};

use sluice::Lake;

use sluice::counting::RequestSnapshot;

use crate::{Row, generate, lance_append, lance_upsert, median, ms, percentile, sluice_ingest, sluice_upsert, try_lance_append, try_sluice_ingest};

/// One single-file ingest: wall time, and the requests it made.
type Trip = (Duration, RequestSnapshot);

/// Medians of `reps` ingests of distinct 1 MiB files, sluice and Lance interleaved.
async fn trips(root: &str, work: &Path, delay: Duration, reps: usize, seed: u64) -> (Vec<Trip>, Vec<Trip>) {
    let lake = Lake::open_delayed(root, delay).unwrap();
    let warm = generate(work, "rt-warm.jsonl", 1, seed);
    sluice_ingest(&lake, &warm).await;
    lance_append(&lake, &warm).await;
    let (mut s, mut l) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let file = generate(work, &format!("rt-{rep}.jsonl"), 1, seed + 1 + rep as u64);
        s.push(sluice_ingest(&lake, &file).await);
        l.push(lance_append(&lake, &file).await);
        std::fs::remove_file(file).unwrap();
    }
    (s, l)
}

fn med(trips: &[Trip], f: impl Fn(&RequestSnapshot) -> u64) -> u64 {
    let mut v: Vec<u64> = trips.iter().map(|(_, r)| f(r)).collect();
    v.sort();
    v[v.len() / 2]
}

fn med_wall(trips: &[Trip]) -> Duration {
    median(trips.iter().map(|(wall, _)| *wall).collect())
}

pub async fn single(root: impl Fn(&str) -> String, work: &Path, delay: Duration, reps: usize, rows: &mut Vec<Row>) {
    let (s0, l0) = trips(&root("rt0"), work, Duration::ZERO, reps, 40_000).await;
    let (sd, ld) = trips(&root("rtd"), work, delay, reps, 41_000).await;
    let d = delay.as_millis();
    let ratio = |s: Duration, l: Duration| format!("{:.2}x", s.as_secs_f64() / l.as_secs_f64());
    let (s, l) = (med_wall(&s0), med_wall(&l0));
    rows.push((format!("1 MiB JSONL ingest, no added delay (median of {reps})"), ms(s), ms(l), ratio(s, l)));
    let (s, l) = (med_wall(&sd), med_wall(&ld));
    rows.push((format!("1 MiB JSONL ingest, +{d} ms per request (median of {reps})"), ms(s), ms(l), ratio(s, l)));
    let (rs, rl) = (med(&sd, |r| r.round_trips), med(&ld, |r| r.round_trips));
    rows.push(("round trips in sequence, single-file ingest (counted)".into(), rs.to_string(), rl.to_string(), format!("+{}", rs as i64 - rl as i64)));
    // The same, from time: what the delay added, in delays.
    let by_time = |with: &[Trip], without: &[Trip]| (med_wall(with).saturating_sub(med_wall(without))).as_secs_f64() / delay.as_secs_f64();
    let (ts, tl) = (by_time(&sd, &s0), by_time(&ld, &l0));
    rows.push((format!("round trips in sequence, from wall time (+{d} ms minus none)"), format!("{ts:.1}"), format!("{tl:.1}"), format!("+{:.1}", ts - tl)));
    let (qs, ql) = (med(&sd, RequestSnapshot::total), med(&ld, RequestSnapshot::total));
    rows.push(("requests, single-file ingest".into(), qs.to_string(), ql.to_string(), format!("+{}", qs as i64 - ql as i64)));

    let (su, lu) = upserts(&root("rtu"), work, delay, reps, 42_000).await;
    let (s, l) = (med_wall(&su), med_wall(&lu));
    rows.push((format!("2 MiB JSONL upsert, half its keys new, +{d} ms per request (median of {reps})"), ms(s), ms(l), ratio(s, l)));
    let (rs, rl) = (med(&su, |r| r.round_trips), med(&lu, |r| r.round_trips));
    rows.push(("round trips in sequence, single-file upsert (counted)".into(), rs.to_string(), rl.to_string(), format!("+{}", rs as i64 - rl as i64)));

    let again = redeliveries(&root("rtr"), work, delay, reps, 43_000).await;
    let wall = med_wall(&again);
    rows.push((format!("redelivery of an ingested 1 MiB file, +{d} ms: wall, round trips (median of {reps})"), format!("{}, {}", ms(wall), med(&again, |r| r.round_trips)), "-".into(), "-".into()));
}

/// Medians of `reps` upserts of 2 MiB files, half of them keys the table has
/// (the previous file's new rows) and half new; sluice and Lance interleaved.
async fn upserts(root: &str, work: &Path, delay: Duration, reps: usize, seed: u64) -> (Vec<Trip>, Vec<Trip>) {
    let lake = Lake::open_delayed(root, delay).unwrap();
    let lines = |path: &Path| std::fs::read_to_string(path).unwrap().lines().map(|l| format!("{l}\n")).collect::<Vec<_>>();
    let warm = generate(work, "up-warm.jsonl", 1, seed);
    sluice_upsert(&lake, &warm).await;
    lance_upsert(&lake, &warm).await;
    let mut previous = lines(&warm);
    let (mut s, mut l) = (Vec::new(), Vec::new());
    // The first round warms the sessions.
    for rep in 0..reps + 1 {
        let fresh = generate(work, &format!("up-{rep}.jsonl"), 1, seed + 1 + rep as u64);
        let new: Vec<String> = lines(&fresh).into_iter().take(previous.len()).collect();
        let mixed = work.join(format!("up-mixed-{rep}.jsonl"));
        std::fs::write(&mixed, previous.concat() + &new.concat()).unwrap();
        let (ts, tl) = (sluice_upsert(&lake, &mixed).await, lance_upsert(&lake, &mixed).await);
        if rep > 0 {
            s.push(ts);
            l.push(tl);
        }
        previous = new;
        std::fs::remove_file(fresh).unwrap();
        std::fs::remove_file(mixed).unwrap();
    }
    std::fs::remove_file(warm).unwrap();
    (s, l)
}

/// `reps` redeliveries of 1 MiB files sluice already ingested.
async fn redeliveries(root: &str, work: &Path, delay: Duration, reps: usize, seed: u64) -> Vec<Trip> {
    let lake = Lake::open_delayed(root, delay).unwrap();
    let mut again = Vec::new();
    for rep in 0..reps + 1 {
        let file = generate(work, &format!("rd-{rep}.jsonl"), 1, seed + rep as u64);
        sluice_ingest(&lake, &file).await;
        let trip = sluice_ingest(&lake, &file).await;
        // The first round warms the session.
        if rep > 0 {
            again.push(trip);
        }
        std::fs::remove_file(file).unwrap();
    }
    again
}

pub async fn contention(root: impl Fn(&str) -> String, work: &Path, delay: Duration, writers: &[usize], rows: &mut Vec<Row>) {
    let d = delay.as_millis();
    let mut lone = None;
    for &n in writers {
        let at = root(&format!("contention{n}"));
        let setup = Lake::open(&at).unwrap();
        let warm = generate(work, &format!("ct{n}-warm.jsonl"), 0, 50_000 + n as u64);
        sluice_ingest(&setup, &warm).await;
        lance_append(&setup, &warm).await;
        let files: Vec<_> = (0..n).map(|i| generate(work, &format!("ct{n}-{i}.jsonl"), 0, 51_000 + (n * 100 + i) as u64)).collect();
        let mut sides = Vec::new();
        for lance in [false, true] {
            let version = || async { setup.open_table(if lance { "plain" } else { "t" }, None).await.expect("the table").version().version };
            let first = version().await;
            let start = Instant::now();
            let tasks: Vec<_> = files
                .iter()
                .cloned()
                .map(|f| {
                    let at = at.clone();
                    tokio::spawn(async move {
                        let lake = Lake::open_delayed(&at, delay).unwrap();
                        let done = if lance {
                            try_lance_append(&lake, &f).await.map_err(|e| e.to_string())
                        } else {
                            try_sluice_ingest(&lake, &f).await.map_err(|e| e.to_string())
                        };
                        (done.map(|(wall, _)| wall), lake.manifest_retries())
                    })
                })
                .collect();
            let (mut walls, mut failed) = (Vec::new(), Vec::new());
            let mut retries = 0;
            for t in tasks {
                let (wall, r) = t.await.unwrap();
                match wall {
                    Ok(wall) => walls.push(wall),
                    Err(e) => failed.push(e),
                }
                retries += r;
            }
            if let Some(e) = failed.first() {
                eprintln!("{} of {n} {} writers failed; the first: {e}", failed.len(), if lance { "plain Lance" } else { "sluice" });
            }
            let elapsed = start.elapsed();
            sides.push((walls, elapsed, retries, failed.len(), version().await - first));
        }
        let (s, l) = (&sides[0], &sides[1]);
        let p = |walls: &[Duration], q: f64| if walls.is_empty() { Duration::ZERO } else { percentile(walls.to_vec(), q) };
        let (sp99, lp99) = (p(&s.0, 0.99), p(&l.0, 0.99));
        let lone_p50 = *lone.get_or_insert(p(&s.0, 0.5));
        rows.push((
            format!("{n} writer(s) at once, +{d} ms per request: p50 / p99"),
            format!("{} / {}", ms(p(&s.0, 0.5)), ms(sp99)),
            format!("{} / {}", ms(p(&l.0, 0.5)), ms(lp99)),
            format!("p99 {:.2}x Lance's, {:.2}x a lone ingest", sp99.as_secs_f64() / lp99.as_secs_f64(), sp99.as_secs_f64() / lone_p50.as_secs_f64()),
        ));
        let per_s = |count: usize, t: Duration| count as f64 / t.as_secs_f64();
        let failed = |count: usize| if count == 0 { String::new() } else { format!(", {count} of {n} failed") };
        rows.push((
            format!("{n} writer(s) at once: ingests per second, Lance commits, manifest retries, failures"),
            format!("{:.1}/s, {} commits, {} retries{}", per_s(s.0.len(), s.1), s.4, s.2, failed(s.3)),
            format!("{:.1}/s, {} commits{}", per_s(l.0.len(), l.1), l.4, failed(l.3)),
            "-".into(),
        ));
        for f in files {
            std::fs::remove_file(f).unwrap();
        }
    }
}
