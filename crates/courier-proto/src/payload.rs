//! The arguments of an event or an acknowledgement, binary attachments included.

use crate::socket::{placeholder, placeholder_num};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Arguments as JSON values, in which each binary argument is a placeholder
/// (`{"_placeholder":true,"num":N}`) that refers to `attachments[N]`. This is the Socket.IO wire
/// form, so a payload goes out and comes in without copying the bytes.
///
/// ```
/// use courier_proto::payload::Payload;
/// use serde_json::json;
///
/// let p = Payload::new().value(json!({"name": "a.png"})).binary(vec![0x89, 0x50]);
/// assert_eq!(p.args.len(), 2);
/// assert_eq!(p.bytes(1).map(|b| b.len()), Some(2));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Payload {
    /// The arguments.
    pub args: Vec<Value>,
    /// Binary attachments referred to by placeholders in `args`.
    pub attachments: Vec<Bytes>,
}

impl Payload {
    /// No arguments.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a JSON argument.
    pub fn value(mut self, v: Value) -> Self {
        self.args.push(v);
        self
    }

    /// Appends an argument serialized from `v`.
    pub fn arg<T: Serialize + ?Sized>(self, v: &T) -> Result<Self, serde_json::Error> {
        Ok(self.value(serde_json::to_value(v)?))
    }

    /// Appends a binary argument.
    pub fn binary(mut self, bytes: impl Into<Bytes>) -> Self {
        let ph = self.binary_value(bytes);
        self.args.push(ph);
        self
    }

    /// Adds an attachment and returns the placeholder that stands for it, to be put anywhere in
    /// the arguments (inside an object, say).
    pub fn binary_value(&mut self, bytes: impl Into<Bytes>) -> Value {
        self.attachments.push(bytes.into());
        placeholder(self.attachments.len() - 1)
    }

    /// Deserializes all arguments as one value, typically a tuple: `let (a, b): (String, u32)`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&Value::Array(self.args.clone()))
    }

    /// Deserializes argument `i` (a missing argument reads as `null`).
    pub fn get<T: DeserializeOwned>(&self, i: usize) -> Result<T, serde_json::Error> {
        T::deserialize(self.args.get(i).unwrap_or(&Value::Null))
    }

    /// The bytes a placeholder value stands for.
    pub fn binary_of(&self, v: &Value) -> Option<&Bytes> {
        self.attachments.get(placeholder_num(v)?)
    }

    /// Argument `i` as bytes, when it is a binary argument.
    pub fn bytes(&self, i: usize) -> Option<&Bytes> {
        self.binary_of(self.args.get(i)?)
    }

    /// The arguments with every placeholder replaced by `f(bytes)`, e.g. to print them as JSON.
    pub fn map_binary(&self, f: impl Fn(&Bytes) -> Value) -> Vec<Value> {
        fn walk(v: &Value, p: &Payload, f: &dyn Fn(&Bytes) -> Value) -> Value {
            if let Some(b) = p.binary_of(v) {
                return f(b);
            }
            match v {
                Value::Array(a) => Value::Array(a.iter().map(|v| walk(v, p, f)).collect()),
                Value::Object(o) => {
                    Value::Object(o.iter().map(|(k, v)| (k.clone(), walk(v, p, f))).collect())
                }
                other => other.clone(),
            }
        }
        self.args.iter().map(|v| walk(v, self, &f)).collect()
    }
}

impl From<Value> for Payload {
    /// One argument.
    fn from(v: Value) -> Self {
        Payload::new().value(v)
    }
}

impl From<Vec<Value>> for Payload {
    /// Several arguments.
    fn from(args: Vec<Value>) -> Self {
        Payload {
            args,
            attachments: Vec::new(),
        }
    }
}

impl From<()> for Payload {
    /// No arguments.
    fn from(_: ()) -> Self {
        Payload::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn binary_arguments_are_placeholders() {
        let mut p = Payload::new().value(json!(1));
        let ph = p.binary_value(vec![1u8, 2, 3]);
        let p = p.value(json!({"file": ph})).binary(vec![9u8]);
        assert_eq!(
            p.args,
            vec![
                json!(1),
                json!({"file": {"_placeholder": true, "num": 0}}),
                json!({"_placeholder": true, "num": 1})
            ]
        );
        assert_eq!(p.bytes(2).unwrap().as_ref(), &[9]);
        let shown = p.map_binary(|b| json!(b.len()));
        assert_eq!(shown, vec![json!(1), json!({"file": 3}), json!(1)]);
    }

    #[test]
    fn parse_reads_all_arguments() {
        let p = Payload::from(vec![json!("a"), json!(2)]);
        let (a, b): (String, u32) = p.parse().unwrap();
        assert_eq!((a.as_str(), b), ("a", 2));
        assert_eq!(p.get::<Option<u32>>(5).unwrap(), None);
    }
}
