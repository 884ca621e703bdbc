//! Test fixture for zimhook's plugin host, not an example: `handle` allocates (and writes)
//! 1 MiB blocks without end, so the host must stop it at its memory limit.

use zimhook_plugin::{Event, Handler, Outcome};

struct Hog;

impl Handler for Hog {
    fn handle(_event: Event) -> Result<Outcome, String> {
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        loop {
            blocks.push(std::hint::black_box(vec![0xA5; 1 << 20]));
        }
    }
}

zimhook_plugin::export!(Hog);
