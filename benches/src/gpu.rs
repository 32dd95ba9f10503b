//! The GPU backend on data resident in device memory, against DataFusion on all CPU cores over
//! the same rows: `SUM(x) WHERE y > k` at three selectivities, and `SUM, COUNT, AVG GROUP BY
//! key` at three key counts. Prints input GB/s, the fraction of the device's own measured
//! device-to-device copy bandwidth, the CPU time and the ratio; the upload (host to device) is
//! timed separately. Without a GPU it says so and exits cleanly; `--emulate` runs the same code
//! on the host emulator (a smoke test of the benchmark: its figures mean nothing).

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::physical_plan::collect;
use datafusion::prelude::SessionContext;
use dirk_gpu::{Device, DeviceBatch, GpuAggregate};
use rayon::prelude::*;

use crate::report::{Report, Row};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Rows resident on the device.
    #[arg(long, default_value_t = 100_000_000)]
    rows: usize,
    /// Timed runs per case (the best is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Run on the host emulator instead of a GPU (checks the benchmark runs; figures are
    /// meaningless).
    #[arg(long)]
    emulate: bool,
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

/// Column `salt` of `rows` pseudo-random values in `[0, modulus)`.
fn column(rows: usize, salt: u64, modulus: u64) -> Int64Array {
    let values: Vec<i64> = (0..rows as u64)
        .into_par_iter()
        .map(|i| (mix(i ^ (salt << 56)) % modulus) as i64)
        .collect();
    Int64Array::from(values)
}

fn best(runs: usize, mut f: impl FnMut() -> Result<(), String>) -> Result<f64, String> {
    let mut best = f64::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

pub(crate) fn run(args: &Args, report: &mut Report) -> Result<(), String> {
    let device = if args.emulate {
        Device::host_emulator(64 << 30).map_err(|e| e.to_string())?
    } else {
        match Device::gpu() {
            Ok(d) => d,
            Err(e) => {
                println!("SKIPPED gpu benchmark: {e}");
                return Ok(());
            }
        }
    };
    let copy_bw = match &device {
        Device::Cuda(d) => d.copy_bandwidth(1 << 30).map_err(|e| e.to_string())?,
        Device::Host(_) => {
            let src = vec![1u8; 1 << 28];
            let mut dst = vec![0u8; 1 << 28];
            let t = Instant::now();
            dst.copy_from_slice(&src);
            std::hint::black_box(&dst);
            (2 << 28) as f64 / t.elapsed().as_secs_f64()
        }
    };
    println!(
        "device: {}; device-to-device copy {:.0} GB/s (read + write)",
        device.describe(),
        copy_bw / 1e9
    );
    // DataFusion's side runs on one runtime for the whole suite; the GPU side is synchronous.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let n = args.rows;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!("{n} rows; DataFusion on {cores} cores\n");
    let setup = Setup {
        rt,
        device,
        runs: args.runs,
        cores,
        copy_bw,
    };
    println!(
        "{:<44} {:>10} {:>9} {:>10} {:>10} {:>8}",
        "case", "device ms", "GB/s", "% of copy", "CPU ms", "CPU/GPU"
    );
    let x = column(n, 1, 1000);
    let y = column(n, 2, 1000);
    let filter_cases: Vec<(String, String)> = [0.01, 0.5, 0.99]
        .iter()
        .map(|s: &f64| {
            let k = (1000.0 * (1.0 - s)) as i64 - 1;
            (
                format!("SUM(x) WHERE y > k, {:.0}% selected", s * 100.0),
                format!("SELECT sum(x) FROM t WHERE y > {k}"),
            )
        })
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("x", DataType::Int64, false),
        Field::new("y", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(x.clone()), Arc::new(y)])
        .map_err(|e| e.to_string())?;
    measure(&setup, report, &batch, &filter_cases)?;
    drop(batch);
    for keys in [10u64, 10_000, 10_000_000] {
        let key = column(n, 3, keys);
        let schema = Arc::new(Schema::new(vec![
            Field::new("key", DataType::Int64, false),
            Field::new("x", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(key), Arc::new(x.clone())])
            .map_err(|e| e.to_string())?;
        let case = vec![(
            format!("SUM, COUNT, AVG GROUP BY key, {keys} keys"),
            "SELECT key, sum(x), count(*), avg(x) FROM t GROUP BY key".to_string(),
        )];
        measure(&setup, report, &batch, &case)?;
    }
    Ok(())
}

/// What every case of the suite shares.
struct Setup {
    rt: tokio::runtime::Runtime,
    device: Device,
    runs: usize,
    cores: usize,
    copy_bw: f64,
}

fn measure(
    setup: &Setup,
    report: &mut Report,
    batch: &RecordBatch,
    cases: &[(String, String)],
) -> Result<(), String> {
    let Setup {
        rt,
        device,
        runs,
        cores,
        copy_bw,
    } = setup;
    let (runs, cores, copy_bw) = (*runs, *cores, *copy_bw);
    let input_bytes = batch.get_array_memory_size() as f64;
    let t = Instant::now();
    let resident = DeviceBatch::upload(device, batch).map_err(|e| e.to_string())?;
    let upload = t.elapsed().as_secs_f64();
    println!(
        "  upload {:.0} MB host to device: {:.0} ms ({:.1} GB/s)",
        input_bytes / 1e6,
        upload * 1e3,
        input_bytes / upload / 1e9
    );
    report.add(Row {
        suite: "gpu",
        case: format!("upload {} rows", batch.num_rows()),
        system: "dirk-gpu",
        metric: "time",
        value: upload,
        unit: "s",
    });
    // DataFusion over the same rows, one partition per core.
    let chunk = batch.num_rows().div_ceil(cores).max(1);
    let parts: Vec<Vec<RecordBatch>> = (0..batch.num_rows())
        .step_by(chunk)
        .map(|s| vec![batch.slice(s, chunk.min(batch.num_rows() - s))])
        .collect();
    let ctx = SessionContext::new();
    let table = MemTable::try_new(batch.schema(), parts).map_err(|e| e.to_string())?;
    ctx.register_table("t", Arc::new(table))
        .map_err(|e| e.to_string())?;
    for (name, sql) in cases {
        let plan = rt
            .block_on(async { ctx.sql(sql).await?.create_physical_plan().await })
            .map_err(|e| e.to_string())?;
        let partial =
            GpuAggregate::find_partial(&plan).ok_or("no partial aggregate in the plan")?;
        let gpu = GpuAggregate::from_plan(&partial, &batch.schema()).map_err(|e| e.to_string())?;
        gpu.run(device, &resident).map_err(|e| e.to_string())?; // compiles the kernels
        let gpu_time = best(runs, || {
            gpu.run(device, &resident)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })?;
        let cpu_time = best(runs, || {
            rt.block_on(collect(plan.clone(), ctx.task_ctx()))
                .map(|_| ())
                .map_err(|e| e.to_string())
        })?;
        let gbps = input_bytes / gpu_time / 1e9;
        println!(
            "{name:<44} {:>10.2} {:>9.0} {:>9.0}% {:>10.1} {:>7.1}x",
            gpu_time * 1e3,
            gbps,
            100.0 * input_bytes / gpu_time / copy_bw,
            cpu_time * 1e3,
            cpu_time / gpu_time
        );
        for (system, value) in [("dirk-gpu", gpu_time), ("datafusion-cpu", cpu_time)] {
            report.add(Row {
                suite: "gpu",
                case: name.clone(),
                system,
                metric: "time",
                value,
                unit: "s",
            });
        }
    }
    Ok(())
}
