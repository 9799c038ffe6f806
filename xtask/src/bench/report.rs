//! Result tables: rendered as markdown for people and JSON for tools.

use serde_json::{json, Map, Value};

/// One table of results. Every row has one value per column; a row that
/// could not be measured carries its reason in `note`.
pub struct Table {
    pub id: &'static str,
    pub title: String,
    /// (JSON key, markdown header).
    pub columns: Vec<(&'static str, &'static str)>,
    pub rows: Vec<Vec<Value>>,
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(
        id: &'static str,
        title: impl Into<String>,
        columns: &[(&'static str, &'static str)],
    ) -> Self {
        Self {
            id,
            title: title.into(),
            columns: columns.to_vec(),
            rows: vec![],
            notes: vec![],
        }
    }

    pub fn row(&mut self, cells: Vec<Value>) {
        debug_assert_eq!(cells.len(), self.columns.len(), "table {}", self.id);
        self.rows.push(cells);
    }

    /// A row whose measurements are missing: its leading (label) cells,
    /// and the reason in the last column (which must be the note column).
    pub fn skipped(&mut self, lead: &[&str], reason: &str) {
        let mut cells: Vec<Value> = lead.iter().map(|l| json!(l)).collect();
        cells.resize(self.columns.len() - 1, Value::Null);
        cells.push(json!(format!("skipped: {reason}")));
        self.rows.push(cells);
    }

    pub fn markdown(&self) -> String {
        let mut s = format!("**{}**\n\n|", self.title);
        for (_, h) in &self.columns {
            s.push_str(&format!(" {h} |"));
        }
        s.push_str("\n|");
        for _ in &self.columns {
            s.push_str("---|");
        }
        s.push('\n');
        for r in &self.rows {
            s.push('|');
            for v in r {
                s.push_str(&format!(" {} |", cell(v)));
            }
            s.push('\n');
        }
        for n in &self.notes {
            s.push_str(&format!("\n{n}\n"));
        }
        s
    }

    pub fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let mut m = Map::new();
                for ((k, _), v) in self.columns.iter().zip(r) {
                    m.insert((*k).into(), v.clone());
                }
                Value::Object(m)
            })
            .collect();
        json!({"title": self.title, "rows": rows, "notes": self.notes})
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().unwrap_or(0.0);
            if x.abs() >= 100.0 {
                format!("{x:.0}")
            } else if x.abs() >= 10.0 {
                format!("{x:.1}")
            } else {
                format!("{x:.3}")
            }
        }
        other => other.to_string(),
    }
}

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// A float for a table cell (null when absent).
pub fn num(x: Option<f64>) -> Value {
    x.map(|x| json!(x)).unwrap_or(Value::Null)
}
