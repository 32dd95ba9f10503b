//! Result rows: printed as tables by each suite, written as JSON lines with `--json`.

use std::io::Write;
use std::path::Path;

/// One measurement.
pub(crate) struct Row {
    pub(crate) suite: &'static str,
    pub(crate) case: String,
    pub(crate) system: &'static str,
    pub(crate) metric: &'static str,
    pub(crate) value: f64,
    pub(crate) unit: &'static str,
}

/// Collects rows and writes them out.
pub(crate) struct Report {
    json: Option<std::path::PathBuf>,
    rows: Vec<Row>,
}

impl Report {
    pub(crate) fn new(json: Option<&Path>) -> Self {
        Report {
            json: json.map(Path::to_path_buf),
            rows: Vec::new(),
        }
    }

    pub(crate) fn add(&mut self, row: Row) {
        self.rows.push(row);
    }

    pub(crate) fn finish(&self) -> Result<(), String> {
        let Some(path) = &self.json else {
            return Ok(());
        };
        let mut f = std::fs::File::create(path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        for r in &self.rows {
            let line = serde_json::json!({"suite": r.suite, "case": r.case, "system": r.system,
                "metric": r.metric, "value": r.value, "unit": r.unit});
            writeln!(f, "{line}").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        println!("wrote {} results to {}", self.rows.len(), path.display());
        Ok(())
    }
}

/// Peak resident memory of this process since the last reset, in bytes (Linux; 0 elsewhere).
pub(crate) fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Resets the peak resident memory counter to the current size (Linux).
pub(crate) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
