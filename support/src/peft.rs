//! `scripts/oracles/peft_lora.py`: Python `peft` as the LoRA oracle (adapters it makes, loads, merges and
//! scores), driven by a JSON list of jobs over a set of prompts.
use serde_json::{json, Value};

use crate::oracle;

/// Runs the PEFT oracle on `jobs` over `prompts` and returns one result per job, in order.
pub fn run_jobs(prompts: &[Vec<i64>], jobs: Vec<Value>) -> Vec<Value> {
    let tmp = tempfile::tempdir().unwrap();
    let (spec, out) = (tmp.path().join("jobs.json"), tmp.path().join("out.json"));
    let body = json!({"prompts": prompts, "jobs": jobs});
    std::fs::write(&spec, body.to_string()).unwrap();
    oracle::run(
        oracle::python_command()
            .arg(oracle::script("peft_lora.py"))
            .arg(&spec)
            .arg(&out)
            .env("HF_HUB_OFFLINE", "1")
            .env("OMP_NUM_THREADS", "1"),
        "peft oracle",
    );
    let parsed: Value = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    parsed["results"].as_array().unwrap().clone()
}
