//! verl-style parquet datasets: `prompt` (list of {role, content}) and `reward_model.ground_truth`, written here
//! with arrow and read back through the `math` environment.

use std::fs::File;
use std::sync::Arc;

use alp_envs::{Registry, Role, Split};
use arrow_array::builder::{ListBuilder, StringBuilder, StructBuilder};
use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray, StructArray};
use arrow_schema::{DataType, Field, Fields};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde_json::json;

fn write_verl(path: &std::path::Path, rows: &[(&str, &str)], compression: Compression) {
    let msg_fields = Fields::from(vec![
        Field::new("content", DataType::Utf8, true),
        Field::new("role", DataType::Utf8, true),
    ]);
    let mut prompts = ListBuilder::new(StructBuilder::from_fields(msg_fields.clone(), rows.len()));
    for (q, _) in rows {
        let s = prompts.values();
        s.field_builder::<StringBuilder>(0)
            .unwrap()
            .append_value(*q);
        s.field_builder::<StringBuilder>(1)
            .unwrap()
            .append_value("user");
        s.append(true);
        prompts.append(true);
    }
    let gt: ArrayRef = Arc::new(StringArray::from(
        rows.iter().map(|r| r.1).collect::<Vec<_>>(),
    ));
    let style: ArrayRef = Arc::new(StringArray::from(vec!["rule"; rows.len()]));
    let reward_model = StructArray::from(vec![
        (
            Arc::new(Field::new("ground_truth", DataType::Utf8, true)),
            gt,
        ),
        (Arc::new(Field::new("style", DataType::Utf8, true)), style),
    ]);
    let index: ArrayRef = Arc::new(Int64Array::from((0..rows.len() as i64).collect::<Vec<_>>()));
    let batch = RecordBatch::try_from_iter(vec![
        (
            "data_source",
            Arc::new(StringArray::from(vec!["openai/gsm8k"; rows.len()])) as ArrayRef,
        ),
        ("prompt", Arc::new(prompts.finish()) as ArrayRef),
        ("reward_model", Arc::new(reward_model) as ArrayRef),
        ("index", index),
    ])
    .unwrap();
    let props = WriterProperties::builder()
        .set_compression(compression)
        .build();
    let mut w =
        ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn verl_parquet_rows_score() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [
        ("What is 6*7? Output the answer after ####.", "42"),
        ("Half of 9?", "4.5"),
        ("Big?", "1,000"),
    ];
    for (name, compression) in [
        ("u.parquet", Compression::UNCOMPRESSED),
        ("s.parquet", Compression::SNAPPY),
    ] {
        let path = dir.path().join(name);
        write_verl(&path, &rows, compression);
        let settings = json!({"train_path": path.to_str().unwrap(), "test_path": ""});
        let env = Registry::builtin().build("math", &settings).unwrap();
        assert_eq!(env.num_examples(Split::Train).unwrap(), Some(3));
        let e = env.num_examples(Split::Test).unwrap_err().to_string();
        assert!(e.contains("no test split"), "{e}");

        let ex = env.example(Split::Train, 0).unwrap();
        assert_eq!(ex.data["prompt"][0]["role"], "user");
        assert_eq!(ex.data["reward_model"]["ground_truth"], "42");
        assert_eq!(ex.data["index"], 0);
        let mut ep = env.reset(&ex.data).unwrap();
        assert_eq!(ep.messages.len(), 1);
        assert_eq!(ep.messages[0].role, Role::User);
        assert_eq!(ep.messages[0].content, rows[0].0);
        let o = ep.step("6*7 = 42\n#### 42").unwrap();
        assert!(o.info.correct && o.done);

        let half = env.example(Split::Train, 1).unwrap();
        assert!(
            env.score(&half.data, "\\boxed{\\frac{9}{2}}")
                .unwrap()
                .correct
        );
        assert!(!env.score(&half.data, "\\boxed{4}").unwrap().correct);
        let big = env.example(Split::Train, 2).unwrap();
        assert!(env.score(&big.data, "#### 1000").unwrap().correct);
    }
}
