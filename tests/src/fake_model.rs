//! A fake OpenAI Responses-API model server on 127.0.0.1 that scripts tool
//! calls, so the real Codex CLI can be driven offline.
//!
//! Each `POST /v1/responses` is answered with a server-sent event stream:
//! while scripted commands remain, a `function_call` to `exec_command`
//! with the next command and its `call_id`; then a final assistant
//! message. Which command comes next is decided by counting the
//! `function_call_output` items in the request's `input`.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
};

use serde_json::{json, Value};

/// One scripted tool call.
#[derive(Clone, Debug)]
pub struct ScriptedCall {
    pub call_id: String,
    pub cmd: String,
}

/// The running server.
pub struct FakeModel {
    pub port: u16,
    /// Request bodies received, in order.
    pub requests: Arc<Mutex<Vec<Value>>>,
}

impl FakeModel {
    pub fn start(script: Vec<ScriptedCall>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let reqs = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let script = script.clone();
                let reqs = reqs.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &script, &reqs);
                });
            }
        });
        Self { port, requests }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
}

fn read_body(
    r: &mut BufReader<TcpStream>,
    headers: &[(String, String)],
) -> std::io::Result<Vec<u8>> {
    let get = |k: &str| {
        headers
            .iter()
            .find(|(h, _)| h.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    };
    if let Some(len) = get("content-length").and_then(|v| v.trim().parse::<usize>().ok()) {
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        return Ok(body);
    }
    if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut body = Vec::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            if size == 0 {
                let mut end = String::new();
                r.read_line(&mut end)?;
                return Ok(body);
            }
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk[..size]);
        }
    }
    Ok(Vec::new())
}

fn serve(
    conn: TcpStream,
    script: &[ScriptedCall],
    reqs: &Mutex<Vec<Value>>,
) -> std::io::Result<()> {
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        if r.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let body = read_body(&mut r, &headers)?;
        if !request_line.starts_with("POST") || !request_line.contains("/responses") {
            let msg = b"not found";
            write!(
                w,
                "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\n\r\n",
                msg.len()
            )?;
            w.write_all(msg)?;
            continue;
        }
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let done = v["input"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|i| i["type"] == "function_call_output")
                    .count()
            })
            .unwrap_or(0);
        reqs.lock().unwrap().push(v);
        let item = match script.get(done) {
            Some(c) => json!({
                "type": "function_call",
                "id": format!("fc_{}", c.call_id),
                "call_id": c.call_id,
                "name": "exec_command",
                "arguments": json!({"cmd": c.cmd}).to_string(),
            }),
            None => json!({
                "type": "message",
                "role": "assistant",
                "id": "msg_done",
                "content": [{"type": "output_text", "text": "done"}],
            }),
        };
        let rid = format!("resp_{done}");
        let events = [
            json!({"type": "response.created", "response": {"id": rid}}),
            json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
            json!({"type": "response.completed", "response": {"id": rid, "usage": {
                "input_tokens": 1, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 1, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 2}}}),
        ];
        let mut sse = String::new();
        for e in events {
            sse.push_str(&format!(
                "event: {}\ndata: {}\n\n",
                e["type"].as_str().unwrap(),
                e
            ));
        }
        write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nContent-Length: {}\r\n\r\n{}",
            sse.len(),
            sse
        )?;
        w.flush()?;
    }
}
