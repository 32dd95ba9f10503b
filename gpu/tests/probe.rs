//! The probe never panics: not without a driver library, not with a driver library that
//! reports no device (a stub libcuda built here with the C compiler), not when disabled.

use std::path::PathBuf;
use std::process::Command;

use dirk_gpu::GpuUnavailable;

#[test]
fn the_probe_answers_without_panicking_and_caches_its_answer() {
    let first = dirk_gpu::gpu();
    match &first {
        Ok(d) => eprintln!("GPU found: {} ({})", d.name(), d.arch()),
        Err(e) => {
            let message = e.to_string();
            assert!(
                !message.is_empty() && !message.contains('\n'),
                "{message:?}"
            );
            if std::env::var("DIRK_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("a GPU is required (DIRK_REQUIRE_GPU=1) but {message}");
            }
            eprintln!("no GPU: {message}");
        }
    }
    assert_eq!(dirk_gpu::gpu().err(), first.err());
}

/// Runs [`probe_in_child`] in a new process of this test binary with `env`.
fn probe_in_child_process(env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--ignored",
        "--exact",
        "probe_in_child",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env("DIRK_GPU_PROBE_CHILD", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the probe's process failed (a panic?):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.split_once("PROBE: ").map(|(_, answer)| answer))
        .unwrap_or_else(|| panic!("no probe answer in:\n{stdout}"))
        .to_string()
}

#[test]
#[ignore = "runs in a child process started by the other probe tests"]
fn probe_in_child() {
    if std::env::var_os("DIRK_GPU_PROBE_CHILD").is_none() {
        return;
    }
    let answer = match dirk_gpu::probe(0) {
        Ok(d) => format!("device {}", d.name()),
        Err(e) => format!("{e:?} / {e}"),
    };
    println!("PROBE: {answer}");
}

const STUB_LIBCUDA: &str = r#"
/* A driver library with no GPU behind it: what a container with the driver package but no
   device passes through. It exports only a handful of symbols. */
typedef int CUresult;
#define CUDA_ERROR_NO_DEVICE 100
CUresult cuInit(unsigned int flags) { (void)flags; return CUDA_ERROR_NO_DEVICE; }
CUresult cuDeviceGetCount(int* count) { *count = 0; return CUDA_ERROR_NO_DEVICE; }
CUresult cuDriverGetVersion(int* version) { *version = 13000; return 0; }
"#;

fn stub_dir() -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!("dirk-stub-libcuda-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("stub.c");
    std::fs::write(&src, STUB_LIBCUDA).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-shared", "-fPIC", "-o"])
        .arg(dir.join("libcuda.so.1"))
        .arg(&src)
        .status();
    match status {
        Ok(s) if s.success() => {
            std::fs::copy(dir.join("libcuda.so.1"), dir.join("libcuda.so")).unwrap();
            Some(dir)
        }
        other => {
            eprintln!("SKIPPED: no C compiler to build the stub libcuda ({cc}: {other:?})");
            None
        }
    }
}

#[test]
fn a_driver_library_without_a_device_is_an_answer_not_a_panic() {
    let Some(dir) = stub_dir() else { return };
    let answer = probe_in_child_process(&[("LD_LIBRARY_PATH", dir.to_str().unwrap())]);
    assert!(answer.contains("CUDA_ERROR_NO_DEVICE"), "{answer}");
    assert!(answer.contains("failed"), "{answer}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_backend_can_be_disabled() {
    let answer = probe_in_child_process(&[("DIRK_GPU_DISABLE", "1")]);
    assert!(
        answer.starts_with(&format!("{:?}", GpuUnavailable::Disabled)),
        "{answer}"
    );
}
