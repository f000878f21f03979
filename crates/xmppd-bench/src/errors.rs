//! Error counts by stage (connect, tls, auth, bind, …), with the first message of each kind
//! kept as an example for the report.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::conn::Failure;

#[derive(Default)]
pub struct Errors {
    by_stage: Mutex<BTreeMap<&'static str, (u64, String)>>,
}

impl Errors {
    pub fn record(&self, failure: &Failure) {
        let mut map = self.by_stage.lock().unwrap();
        let entry = map
            .entry(failure.stage)
            .or_insert_with(|| (0, failure.detail.clone()));
        entry.0 += 1;
    }

    pub fn add(&self, stage: &'static str, count: u64, example: &str) {
        if count == 0 {
            return;
        }
        let mut map = self.by_stage.lock().unwrap();
        let entry = map.entry(stage).or_insert_with(|| (0, example.to_owned()));
        entry.0 += count;
    }

    pub fn count(&self, stage: &str) -> u64 {
        self.by_stage.lock().unwrap().get(stage).map_or(0, |v| v.0)
    }

    pub fn total(&self) -> u64 {
        self.by_stage.lock().unwrap().values().map(|v| v.0).sum()
    }

    pub fn to_json(&self) -> Value {
        let map = self.by_stage.lock().unwrap();
        map.iter()
            .map(|(stage, (count, example))| {
                (
                    stage.to_string(),
                    json!({ "count": count, "example": example }),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_keeps_first_example() {
        let e = Errors::default();
        e.record(&Failure::new("auth", "first"));
        e.record(&Failure::new("auth", "second"));
        e.add("lost", 0, "never shown");
        e.add("lost", 3, "messages not delivered");
        assert_eq!(e.total(), 5);
        assert_eq!(e.count("auth"), 2);
        assert_eq!(e.count("tls"), 0);
        assert_eq!(
            e.to_json(),
            json!({
                "auth": {"count": 2, "example": "first"},
                "lost": {"count": 3, "example": "messages not delivered"},
            })
        );
    }
}
