//! The JSON, form and query client-id rewriters, against a reference walker: whatever
//! the body, what would reach the backend is valid, and names no client but the caller
//! under any spelling of the id; a refusal is only ever a refusal.
#![no_main]

use std::fmt;

use http::header::HeaderName;
use libfuzzer_sys::fuzz_target;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use tollgate_policy::snapshot::{ClientIdPolicy, JsonType, Mismatch};
use tollgate_proxy::internals::{form_body, json_body, query, Caller};

const CALLER: Caller<'static> = Caller {
    id: "1001",
    integer: false,
};

fn policy(mismatch: Mismatch, pointer: &[&str]) -> ClientIdPolicy {
    ClientIdPolicy {
        query: true,
        header: Some(HeaderName::from_static("x-client-id")),
        json: true,
        form: true,
        names: vec!["clientId".into(), "client_id".into()],
        json_pointer: pointer.iter().map(|s| s.to_string()).collect(),
        on_mismatch: mismatch,
        allow_non_object_json: true,
        max_body_bytes: 1 << 20,
        json_type: JsonType::Claim,
    }
}

/// Every member (name, value as text) at any depth, duplicates included.
struct Members<'a>(&'a mut Vec<(String, String)>);

impl<'de> Visitor<'de> for Members<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            let raw: &serde_json::value::RawValue = map.next_value()?;
            let value: serde_json::Value = serde_json::from_str(raw.get()).unwrap_or_default();
            let text = match &value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            self.0.push((key, text));
            let mut de = serde_json::Deserializer::from_str(raw.get());
            let _ = de.deserialize_any(Members(self.0));
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(raw) = seq.next_element::<&serde_json::value::RawValue>()? {
            let mut de = serde_json::Deserializer::from_str(raw.get());
            let _ = de.deserialize_any(Members(self.0));
        }
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

fn members(json: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut de = serde_json::Deserializer::from_str(json);
    let _ = de.deserialize_any(Members(&mut out));
    out
}

fuzz_target!(|data: &[u8]| {
    for pointer in [&[][..], &["data"][..]] {
        let reject = policy(Mismatch::Reject, pointer);
        let overwrite = policy(Mismatch::Overwrite, pointer);
        for p in [&reject, &overwrite] {
            if let Ok(out) = json_body(data, p, CALLER) {
                let sent = match &out {
                    Some(bytes) => std::str::from_utf8(bytes).expect("UTF-8 out").to_owned(),
                    None => std::str::from_utf8(data).expect("UTF-8 in").to_owned(),
                };
                if !sent.trim().is_empty() {
                    serde_json::from_str::<IgnoredAny>(&sent).expect("valid JSON out");
                }
                for (name, value) in members(&sent) {
                    if p.is_name(&name) {
                        assert_eq!(value, "1001", "{name} in {sent}");
                    }
                }
            }
        }
        let Ok(_) = std::str::from_utf8(data) else {
            continue;
        };
        for p in [&reject, &overwrite] {
            if let Ok(sent) = form_body(data, p, CALLER) {
                for (name, value) in tollgate_policy::param::pairs(&sent) {
                    if p.is_name(&name) {
                        assert_eq!(value, "1001", "{name} in {sent:?}");
                    }
                }
            }
            if let Ok(Some(sent)) = query(std::str::from_utf8(data).ok(), p, CALLER) {
                for (name, value) in tollgate_policy::param::pairs(sent.as_bytes()) {
                    if p.is_name(&name) {
                        assert_eq!(value, "1001", "{name} in {sent:?}");
                    }
                }
            }
        }
    }
});
