//! The deployment side: the SAM template passes cfn-lint (and a broken one
//! does not); deploy.sh and build-lambda.sh print every command in a dry
//! run and refuse what would fail on Lambda; the artifact's layout.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::common::run;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A tool from the tests' Python virtualenv (scripts/test.sh installs it).
fn venv_tool(name: &str) -> PathBuf {
    let venv = std::env::var("SLUICE_VENV").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/sluice-venv"));
    let tool = venv.join("bin").join(name);
    assert!(tool.exists(), "{} is missing: run the tests with scripts/test.sh, which installs it", tool.display());
    tool
}

fn script(name: &str) -> Command {
    let mut cmd = Command::new(repo().join("scripts").join(name));
    cmd.current_dir(repo());
    cmd
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn the_template_passes_cfn_lint_and_a_broken_one_fails() {
    let lint = venv_tool("cfn-lint");
    let template = repo().join("infra/template.yaml");
    let out = run(Command::new(&lint).arg(&template));
    assert_eq!(out.status.code(), Some(0), "infra/template.yaml: {:?}", text(&out));

    // The lint reads the SAM resources too: a wrong property type fails it.
    let broken = std::fs::read_to_string(&template).unwrap().replace("Timeout: 900", "Timeout: fifteen minutes");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("template.yaml"), broken).unwrap();
    let out = run(Command::new(&lint).arg(dir.path().join("template.yaml")));
    assert_ne!(out.status.code(), Some(0), "cfn-lint must catch a broken template");
}

#[test]
fn deploy_dry_run_prints_every_step_and_bad_arguments_are_refused() {
    let out = run(script("deploy.sh").arg("--help"));
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out).0.contains("--artifacts-bucket"));

    let out = run(script("deploy.sh").args(["--dry-run", "--artifacts-bucket", "art", "--stack", "demo", "--region", "eu-west-1", "--bucket", "data"])
        .args(["--tables", r#"{"incoming/orders/": {"table": "orders"}}"#, "--param", "IngestTimeout=600"]));
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let steps: Vec<String> = text(&out).0.lines().filter(|l| l.starts_with("+ ")).map(String::from).collect();
    let want = [
        "cargo zigbuild --locked --profile lambda --target x86_64-unknown-linux-gnu.2.34 -p sluice-workers --bin bootstrap",
        "zip -q -j -9 dist/lambda/bootstrap.zip",
        "aws --region eu-west-1 s3api get-bucket-notification-configuration --bucket data",
        "aws --region eu-west-1 cloudformation package --template-file infra/template.yaml --s3-bucket art --s3-prefix demo",
        "aws --region eu-west-1 cloudformation deploy --template-file dist/lambda/packaged.yaml --stack-name demo --capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND",
        "cloudformation describe-stacks --stack-name demo",
    ];
    let mut at = 0;
    for w in want {
        at += steps[at..].iter().position(|s| s.contains(w)).unwrap_or_else(|| panic!("step '{w}' missing or out of order in {steps:#?}"));
    }
    let deploy = steps.iter().find(|s| s.contains("cloudformation deploy")).unwrap();
    assert!(deploy.contains("ExistingBucket=data") && deploy.contains("IngestTimeout=600") && deploy.contains("Tables="), "{deploy}");

    for (args, why) in [(&["--dry-run"][..], "--artifacts-bucket is required"), (&["--artifacts-bucket", "a", "--param", "x"], "KEY=VALUE"), (&["--frob"], "unknown argument")] {
        let out = run(script("deploy.sh").args(args));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(text(&out).1.contains(why), "{args:?}: {:?}", text(&out));
    }
}

/// The packing half of the build (the compile half takes an hour; the README
/// reports its result): the zip holds an executable `bootstrap` at its root,
/// and what would not start on provided.al2023 is refused with the reason.
#[test]
fn build_lambda_packs_bootstrap_and_refuses_what_lambda_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let out = run(script("build-lambda.sh").args(["--binary", "/bin/true", "--out"]).arg(&out_dir));
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let listing = run(Command::new("unzip").arg("-Z").arg(out_dir.join("bootstrap.zip")));
    let listing = text(&listing).0;
    let entries: Vec<&str> = listing.lines().filter(|l| l.starts_with('-')).collect();
    assert_eq!(entries.len(), 1, "{listing}");
    assert!(entries[0].starts_with("-rwxr-xr-x") && entries[0].ends_with(" bootstrap"), "{listing}");

    let not_elf = dir.path().join("bootstrap.sh");
    std::fs::write(&not_elf, "#!/bin/sh\necho hi\n").unwrap();
    let refusals = [
        (vec!["--binary".to_string(), not_elf.display().to_string()], "not an x86-64 ELF"),
        (vec!["--binary".into(), "/bin/true".into(), "--max-glibc".into(), "2.2".into()], "but the Lambda runtime has 2.2"),
    ];
    for (args, why) in refusals {
        let out = run(script("build-lambda.sh").args(&args).arg("--out").arg(dir.path().join("refused")));
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(text(&out).1.contains(why), "{args:?}: {:?}", text(&out));
        assert!(!dir.path().join("refused/bootstrap.zip").exists(), "nothing written when refused");
    }
}

#[test]
fn invoke_dry_run_prints_the_call_and_the_payload() {
    let out = run(script("invoke.sh").arg("--help"));
    assert_eq!(out.status.code(), Some(0));
    let out = run(script("invoke.sh").args(["--dry-run", "--stack", "demo", "--region", "eu-west-1", "optimize", "tables=a,b", "parallel=2", "dry_run=true", "note=it's \"x\""]));
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let (stdout, stderr) = text(&out);
    assert!(stdout.contains("aws --region eu-west-1 cloudformation describe-stacks --stack-name demo"), "{stdout}");
    assert!(stdout.contains("lambda invoke --function-name demo-maintenance --payload fileb://"), "{stdout}");
    let payload = stderr.lines().find_map(|l| l.strip_prefix("payload: ")).expect("the payload is shown");
    let payload: serde_json::Value = serde_json::from_str(payload).unwrap();
    assert_eq!(payload, serde_json::json!({"action": "optimize", "tables": ["a", "b"], "parallel": 2, "dry_run": true, "note": "it's \"x\""}));
    for args in [&["--dry-run", "frob"][..], &["--dry-run"], &["--dry-run", "status", "oops"]] {
        assert_eq!(run(script("invoke.sh").args(args)).status.code(), Some(2), "{args:?}");
    }
}
