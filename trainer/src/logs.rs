//! Impression logs: the in-memory types and their Parquet schema (arrow-rs).
//!
//! On disk a log is one Parquet row per impression (schema in `docs/trainer.md`, built by
//! [`impression_schema`]); rows of one request are contiguous and share `request_id`, user and behaviour
//! columns. In memory the trainer groups them back into [`Request`]s so a behaviour sequence is stored
//! (and later encoded) once per request, not once per impression.
//!
//! The item corpus (every item the exporter must embed) is a second file with the schema of
//! [`item_schema`].

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{
    Float64Builder, Int32Builder, Int64Builder, ListBuilder, StringBuilder, UInt64Builder,
    UInt8Builder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type, Int64Type, UInt64Type, UInt8Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::error::DataError;

/// Names of the privileged (interacted) feature columns, in the order of [`Shown::privileged`].
pub const PRIVILEGED: [&str; 4] = [
    "priv_clicks_category_24h",
    "priv_clicks_shop_24h",
    "priv_clicks_brand_24h",
    "priv_impressions_category_24h",
];

/// One entry of a user's behaviour sequence (a clicked / faved / carted / bought item).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Behavior {
    pub item_id: u64,
    pub category: u64,
    pub shop: u64,
    pub brand: u64,
    /// Strongest action on the item: "click", "fav", "cart" or "buy".
    pub action: String,
    /// Seconds between the behaviour and the request.
    pub seconds_ago: f64,
    /// Seconds spent on the item's page.
    pub dwell_seconds: f64,
}

/// One shown item of a request: an impression row without the request-level columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    pub item_id: u64,
    pub item_category: u64,
    pub item_shop: u64,
    pub item_brand: u64,
    /// Raw counts of the privileged features, in [`PRIVILEGED`] order (bucketed by the model).
    pub privileged: [i32; 4],
    /// 1 if clicked.
    pub label: u8,
}

/// One request (page view): the user, the behaviour sequence and the items shown.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub request_id: u64,
    /// Day index; the last day of a log is the held-out day.
    pub day: i32,
    /// Seconds since the start of the log.
    pub timestamp: i64,
    pub user_id: u64,
    pub user_age: Option<i64>,
    pub user_gender: Option<String>,
    pub user_purchase_level: Option<i64>,
    /// Most recent first.
    pub behaviors: Vec<Behavior>,
    pub shown: Vec<Shown>,
}

/// A row of the item corpus.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub item_id: u64,
    pub category: u64,
    pub shop: u64,
    pub brand: u64,
}

/// A whole log: the item corpus and the requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Logs {
    pub items: Vec<Item>,
    pub requests: Vec<Request>,
}

impl Logs {
    /// The last day present (the held-out day).
    pub fn last_day(&self) -> i32 {
        self.requests.iter().map(|r| r.day).max().unwrap_or(0)
    }

    /// Number of impression rows.
    pub fn impressions(&self) -> usize {
        self.requests.iter().map(|r| r.shown.len()).sum()
    }
}

fn list_of(dt: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", dt, true)))
}

/// The impression schema: one row per impression.
pub fn impression_schema() -> SchemaRef {
    let mut fields = vec![
        Field::new("request_id", DataType::UInt64, false),
        Field::new("day", DataType::Int32, false),
        Field::new("timestamp", DataType::Int64, false),
        Field::new("user_id", DataType::UInt64, false),
        Field::new("user_age", DataType::Int64, true),
        Field::new("user_gender", DataType::Utf8, true),
        Field::new("user_purchase_level", DataType::Int64, true),
        Field::new("behavior_item_id", list_of(DataType::UInt64), false),
        Field::new("behavior_category", list_of(DataType::UInt64), false),
        Field::new("behavior_shop", list_of(DataType::UInt64), false),
        Field::new("behavior_brand", list_of(DataType::UInt64), false),
        Field::new("behavior_action", list_of(DataType::Utf8), false),
        Field::new("behavior_seconds_ago", list_of(DataType::Float64), false),
        Field::new("behavior_dwell_seconds", list_of(DataType::Float64), false),
        Field::new("item_id", DataType::UInt64, false),
        Field::new("item_category", DataType::UInt64, false),
        Field::new("item_shop", DataType::UInt64, false),
        Field::new("item_brand", DataType::UInt64, false),
    ];
    for name in PRIVILEGED {
        fields.push(Field::new(name, DataType::Int32, false));
    }
    fields.push(Field::new("label", DataType::UInt8, false));
    Arc::new(Schema::new(fields))
}

/// The item corpus schema.
pub fn item_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("item_id", DataType::UInt64, false),
        Field::new("category", DataType::UInt64, false),
        Field::new("shop", DataType::UInt64, false),
        Field::new("brand", DataType::UInt64, false),
    ]))
}

fn props() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(65_536))
        .build()
}

/// Impression rows written per Arrow batch.
const ROWS_PER_BATCH: usize = 16_384;

/// Writes the impression rows of `requests` to a Parquet file.
pub fn write_impressions(path: &Path, requests: &[Request]) -> Result<(), DataError> {
    let schema = impression_schema();
    let file = File::create(path).map_err(|e| DataError::io(path, e))?;
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props()))?;
    let mut start = 0;
    while start < requests.len() {
        let mut end = start;
        let mut rows = 0;
        while end < requests.len() && rows < ROWS_PER_BATCH {
            rows += requests[end].shown.len();
            end += 1;
        }
        writer.write(&impression_batch(&schema, &requests[start..end])?)?;
        start = end;
    }
    writer.close()?;
    Ok(())
}

fn impression_batch(schema: &SchemaRef, requests: &[Request]) -> Result<RecordBatch, DataError> {
    let mut request_id = UInt64Builder::new();
    let mut day = Int32Builder::new();
    let mut timestamp = Int64Builder::new();
    let mut user_id = UInt64Builder::new();
    let mut age = Int64Builder::new();
    let mut gender = StringBuilder::new();
    let mut level = Int64Builder::new();
    let mut b_item = ListBuilder::new(UInt64Builder::new());
    let mut b_cat = ListBuilder::new(UInt64Builder::new());
    let mut b_shop = ListBuilder::new(UInt64Builder::new());
    let mut b_brand = ListBuilder::new(UInt64Builder::new());
    let mut b_action = ListBuilder::new(StringBuilder::new());
    let mut b_ago = ListBuilder::new(Float64Builder::new());
    let mut b_dwell = ListBuilder::new(Float64Builder::new());
    let mut item_id = UInt64Builder::new();
    let mut item_cat = UInt64Builder::new();
    let mut item_shop = UInt64Builder::new();
    let mut item_brand = UInt64Builder::new();
    let mut privileged: Vec<Int32Builder> =
        (0..PRIVILEGED.len()).map(|_| Int32Builder::new()).collect();
    let mut label = UInt8Builder::new();
    for r in requests {
        for s in &r.shown {
            request_id.append_value(r.request_id);
            day.append_value(r.day);
            timestamp.append_value(r.timestamp);
            user_id.append_value(r.user_id);
            age.append_option(r.user_age);
            gender.append_option(r.user_gender.as_deref());
            level.append_option(r.user_purchase_level);
            for b in &r.behaviors {
                b_item.values().append_value(b.item_id);
                b_cat.values().append_value(b.category);
                b_shop.values().append_value(b.shop);
                b_brand.values().append_value(b.brand);
                b_action.values().append_value(&b.action);
                b_ago.values().append_value(b.seconds_ago);
                b_dwell.values().append_value(b.dwell_seconds);
            }
            b_item.append(true);
            b_cat.append(true);
            b_shop.append(true);
            b_brand.append(true);
            b_action.append(true);
            b_ago.append(true);
            b_dwell.append(true);
            item_id.append_value(s.item_id);
            item_cat.append_value(s.item_category);
            item_shop.append_value(s.item_shop);
            item_brand.append_value(s.item_brand);
            for (b, v) in privileged.iter_mut().zip(s.privileged) {
                b.append_value(v);
            }
            label.append_value(s.label);
        }
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(request_id.finish()),
        Arc::new(day.finish()),
        Arc::new(timestamp.finish()),
        Arc::new(user_id.finish()),
        Arc::new(age.finish()),
        Arc::new(gender.finish()),
        Arc::new(level.finish()),
        Arc::new(b_item.finish()),
        Arc::new(b_cat.finish()),
        Arc::new(b_shop.finish()),
        Arc::new(b_brand.finish()),
        Arc::new(b_action.finish()),
        Arc::new(b_ago.finish()),
        Arc::new(b_dwell.finish()),
        Arc::new(item_id.finish()),
        Arc::new(item_cat.finish()),
        Arc::new(item_shop.finish()),
        Arc::new(item_brand.finish()),
    ];
    for mut b in privileged {
        columns.push(Arc::new(b.finish()));
    }
    columns.push(Arc::new(label.finish()));
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Writes the item corpus.
pub fn write_items(path: &Path, items: &[Item]) -> Result<(), DataError> {
    let schema = item_schema();
    let file = File::create(path).map_err(|e| DataError::io(path, e))?;
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props()))?;
    for chunk in items.chunks(ROWS_PER_BATCH) {
        let col = |f: fn(&Item) -> u64| -> ArrayRef {
            Arc::new(arrow_array::UInt64Array::from_iter_values(
                chunk.iter().map(f),
            ))
        };
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                col(|i| i.item_id),
                col(|i| i.category),
                col(|i| i.shop),
                col(|i| i.brand),
            ],
        )?;
        writer.write(&batch)?;
    }
    writer.close()?;
    Ok(())
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, DataError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| DataError::Schema(format!("missing column {name:?}")))
}

fn check_type(batch: &RecordBatch, name: &str, expected: &DataType) -> Result<(), DataError> {
    let found = column(batch, name)?.data_type();
    // Nullability of list items is not part of the contract; compare the value types only.
    let same = match (found, expected) {
        (DataType::List(a), DataType::List(b)) => a.data_type() == b.data_type(),
        (a, b) => a == b,
    };
    if same {
        Ok(())
    } else {
        Err(DataError::Schema(format!(
            "column {name:?}: expected {expected}, found {found}"
        )))
    }
}

/// Reads an impression file and groups its rows into requests (rows of a request must be contiguous).
pub fn read_impressions(path: &Path) -> Result<Vec<Request>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?
        .with_batch_size(ROWS_PER_BATCH)
        .build()?;
    let schema = impression_schema();
    let mut requests: Vec<Request> = Vec::new();
    for batch in reader {
        let batch = batch?;
        for f in schema.fields() {
            check_type(&batch, f.name(), f.data_type())?;
        }
        let prim_u64 = |n: &str| -> Result<_, DataError> {
            Ok(column(&batch, n)?.as_primitive::<UInt64Type>())
        };
        let prim_i64 = |n: &str| -> Result<_, DataError> {
            Ok(column(&batch, n)?.as_primitive::<Int64Type>())
        };
        let prim_i32 = |n: &str| -> Result<_, DataError> {
            Ok(column(&batch, n)?.as_primitive::<Int32Type>())
        };
        let list = |n: &str| -> Result<_, DataError> { Ok(column(&batch, n)?.as_list::<i32>()) };
        let request_id = prim_u64("request_id")?;
        let day = prim_i32("day")?;
        let timestamp = prim_i64("timestamp")?;
        let user_id = prim_u64("user_id")?;
        let age = prim_i64("user_age")?;
        let gender = column(&batch, "user_gender")?.as_string::<i32>();
        let level = prim_i64("user_purchase_level")?;
        let b_item = list("behavior_item_id")?;
        let b_cat = list("behavior_category")?;
        let b_shop = list("behavior_shop")?;
        let b_brand = list("behavior_brand")?;
        let b_action = list("behavior_action")?;
        let b_ago = list("behavior_seconds_ago")?;
        let b_dwell = list("behavior_dwell_seconds")?;
        let item_id = prim_u64("item_id")?;
        let item_cat = prim_u64("item_category")?;
        let item_shop = prim_u64("item_shop")?;
        let item_brand = prim_u64("item_brand")?;
        let privileged = PRIVILEGED
            .iter()
            .map(|n| prim_i32(n))
            .collect::<Result<Vec<_>, _>>()?;
        let label = column(&batch, "label")?.as_primitive::<UInt8Type>();
        for row in 0..batch.num_rows() {
            let shown = Shown {
                item_id: item_id.value(row),
                item_category: item_cat.value(row),
                item_shop: item_shop.value(row),
                item_brand: item_brand.value(row),
                privileged: std::array::from_fn(|k| privileged[k].value(row)),
                label: label.value(row).min(1),
            };
            let rid = request_id.value(row);
            if let Some(last) = requests.last_mut() {
                if last.request_id == rid {
                    last.shown.push(shown);
                    continue;
                }
            }
            let items = b_item.value(row);
            let items = items.as_primitive::<UInt64Type>();
            let cats = b_cat.value(row);
            let cats = cats.as_primitive::<UInt64Type>();
            let shops = b_shop.value(row);
            let shops = shops.as_primitive::<UInt64Type>();
            let brands = b_brand.value(row);
            let brands = brands.as_primitive::<UInt64Type>();
            let actions = b_action.value(row);
            let actions = actions.as_string::<i32>();
            let agos = b_ago.value(row);
            let agos = agos.as_primitive::<Float64Type>();
            let dwells = b_dwell.value(row);
            let dwells = dwells.as_primitive::<Float64Type>();
            let n = items.len();
            if [
                cats.len(),
                shops.len(),
                brands.len(),
                actions.len(),
                agos.len(),
                dwells.len(),
            ]
            .iter()
            .any(|&l| l != n)
            {
                return Err(DataError::Schema(format!(
                    "request {rid}: behaviour columns have different lengths"
                )));
            }
            let behaviors = (0..n)
                .map(|j| Behavior {
                    item_id: items.value(j),
                    category: cats.value(j),
                    shop: shops.value(j),
                    brand: brands.value(j),
                    action: actions.value(j).to_string(),
                    seconds_ago: agos.value(j),
                    dwell_seconds: dwells.value(j),
                })
                .collect();
            requests.push(Request {
                request_id: rid,
                day: day.value(row),
                timestamp: timestamp.value(row),
                user_id: user_id.value(row),
                user_age: (!age.is_null(row)).then(|| age.value(row)),
                user_gender: (!gender.is_null(row)).then(|| gender.value(row).to_string()),
                user_purchase_level: (!level.is_null(row)).then(|| level.value(row)),
                behaviors,
                shown: vec![shown],
            });
        }
    }
    Ok(requests)
}

/// Reads the item corpus.
pub fn read_items(path: &Path) -> Result<Vec<Item>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    let mut items = Vec::new();
    for batch in reader {
        let batch = batch?;
        for f in item_schema().fields() {
            check_type(&batch, f.name(), f.data_type())?;
        }
        let c = |n: &str| -> Result<_, DataError> {
            Ok(column(&batch, n)?.as_primitive::<UInt64Type>())
        };
        let (id, cat, shop, brand) = (c("item_id")?, c("category")?, c("shop")?, c("brand")?);
        for row in 0..batch.num_rows() {
            items.push(Item {
                item_id: id.value(row),
                category: cat.value(row),
                shop: shop.value(row),
                brand: brand.value(row),
            });
        }
    }
    Ok(items)
}

/// File names inside a data directory.
pub const IMPRESSIONS_FILE: &str = "impressions.parquet";
pub const ITEMS_FILE: &str = "items.parquet";
pub const DESCRIPTION_FILE: &str = "data.json";

/// Writes a whole log into `dir` (impressions, items and a JSON description).
pub fn write_dir(
    dir: &Path,
    logs: &Logs,
    description: &serde_json::Value,
) -> Result<(), DataError> {
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    write_impressions(&dir.join(IMPRESSIONS_FILE), &logs.requests)?;
    write_items(&dir.join(ITEMS_FILE), &logs.items)?;
    let desc_path = dir.join(DESCRIPTION_FILE);
    let text = serde_json::to_string_pretty(description).map_err(DataError::Json)?;
    std::fs::write(&desc_path, text).map_err(|e| DataError::io(&desc_path, e))?;
    Ok(())
}

/// Reads a data directory written by [`write_dir`] (or by your own pipeline with the same schema).
pub fn read_dir(dir: &Path) -> Result<(Logs, serde_json::Value), DataError> {
    let requests = read_impressions(&dir.join(IMPRESSIONS_FILE))?;
    let items = read_items(&dir.join(ITEMS_FILE))?;
    let desc_path = dir.join(DESCRIPTION_FILE);
    let description = match std::fs::read_to_string(&desc_path) {
        Ok(text) => serde_json::from_str(&text).map_err(DataError::Json)?,
        Err(_) => serde_json::json!({"source": dir.display().to_string()}),
    };
    Ok((Logs { items, requests }, description))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{generate, SynthConfig};

    #[test]
    fn parquet_round_trip() {
        let cfg = SynthConfig::preset("ci", 1).expect("preset");
        let logs = generate(&cfg);
        let dir = tempfile::tempdir().expect("tempdir");
        write_dir(dir.path(), &logs, &serde_json::json!({"t": 1})).expect("write");
        let (back, desc) = read_dir(dir.path()).expect("read");
        assert_eq!(desc["t"], 1);
        assert_eq!(back, logs);
    }
}
