//! Test fixture for zimhook's plugin host, not an example: logs once at every level through the
//! host, writes 100 KiB to stdout (more than the host keeps) and a line to stderr, then replies
//! `{"chatty":true}`. The host must keep the logs, cap the output and not fail the call.

use std::io::Write;

use zimhook_plugin::{Event, Handler, Outcome, log};

struct Chatty;

impl Handler for Chatty {
    fn handle(event: Event) -> Result<Outcome, String> {
        log::trace("chatty trace");
        log::debug("chatty debug");
        log::info(&format!("chatty info for {}", event.name));
        log::warn("chatty warn");
        log::error("chatty error");
        let line = [b'x'; 1023];
        let mut stdout = std::io::stdout();
        for _ in 0..100 {
            stdout.write_all(&line).map_err(|e| e.to_string())?;
            stdout.write_all(b"\n").map_err(|e| e.to_string())?;
        }
        println!("still printing after the cap");
        eprintln!("chatty stderr line");
        Ok(Outcome::respond(r#"{"chatty":true}"#))
    }
}

zimhook_plugin::export!(Chatty);
