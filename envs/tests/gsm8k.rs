//! Acceptance 1: every GSM8K gold answer (train + test, 8,792) scores correct when the completion ends with
//! `#### N` and with `\boxed{N}`, and wrong with N+1.

use alp_envs::dataset::{load_rows, shared_data_file};
use alp_envs::envs::math::{Math, MathSettings};
use alp_envs::{Registry, Split};
use serde_json::{json, Value};

fn rows(file: &str) -> Vec<Value> {
    let path = shared_data_file(file)
        .unwrap_or_else(|e| panic!("GSM8K data is required for this test: {e}"));
    load_rows(&path).unwrap()
}

/// N+1 written like the gold (thousands separators kept when the gold had them).
fn plus_one(gold: &str) -> String {
    let n: i64 = gold
        .replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("GSM8K gold is an integer: {gold}"));
    let s = (n + 1).to_string();
    if gold.contains(',') {
        let (neg, digits) = s
            .strip_prefix('-')
            .map_or((false, s.as_str()), |d| (true, d));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{}{out}", if neg { "-" } else { "" })
    } else {
        s
    }
}

#[test]
fn every_gold_answer_scores_right_and_off_by_one_scores_wrong() {
    let env = Registry::builtin().build("math", &json!({})).unwrap();
    let mut count = 0;
    for file in ["gsm8k/train.jsonl", "gsm8k/test.jsonl"] {
        for row in rows(file) {
            let answer = row["answer"].as_str().unwrap();
            let gold = answer.rsplit("####").next().unwrap().trim();
            // The dataset's own worked answer (numbers and calculator annotations all through it).
            let worked = answer.to_string();
            let body = &answer[..answer.rfind("####").unwrap()];
            let boxed = format!("{body}The answer is \\boxed{{{gold}}}.");
            let wrong = plus_one(gold);
            for (completion, want) in [
                (worked, true),
                (format!("Thinking...\n#### {gold}"), true),
                (boxed, true),
                (format!("{body}#### {wrong}"), false),
                (format!("{body}The answer is \\boxed{{{wrong}}}."), false),
            ] {
                let r = env.score(&row, &completion).unwrap();
                assert_eq!(
                    r.correct,
                    want,
                    "gold {gold:?}, completion ending {:?}",
                    &completion[completion.len().saturating_sub(60)..]
                );
                assert_eq!(r.reward, if want { 1.0 } else { 0.0 });
            }
            count += 1;
        }
    }
    assert_eq!(count, 8792);
}

#[test]
fn dataset_splits_load_through_the_environment() {
    let env = Registry::builtin().build("math", &json!({})).unwrap();
    assert_eq!(env.num_examples(Split::Train).unwrap(), Some(7473));
    assert_eq!(env.num_examples(Split::Test).unwrap(), Some(1319));
    let ex = env.example(Split::Test, 0).unwrap();
    assert_eq!(ex.id, "test:0");
    let ep = env.reset(&ex.data).unwrap();
    assert!(ep.messages[0].content.contains("Janet"));
    let reference = env.reference_completion(&ex.data).unwrap().unwrap();
    assert!(
        !reference.contains("<<") && reference.ends_with("#### 18"),
        "{reference}"
    );
    assert!(env.score(&ex.data, &reference).unwrap().correct);
    assert_eq!(
        env.example(Split::Test, 1319).unwrap(),
        ex,
        "seeds wrap around the dataset"
    );
}

#[test]
fn a_malformed_dataset_row_is_reported_by_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.jsonl");
    std::fs::write(
        &path,
        "{\"question\": \"1 + 1?\", \"answer\": \"#### 2\"}\n\n{\"questoin\": \"2 + 2?\", \"answer\": \"#### 4\"}\n",
    )
    .unwrap();
    let math = Math::new(MathSettings::default());
    let rows = load_rows(&path).unwrap();
    let bad = math.malformed_rows(&path, &rows);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(
        bad[0].starts_with(&format!("{}: line 3: ", path.display()))
            && bad[0].contains("expected `question`"),
        "{}",
        bad[0]
    );
}
