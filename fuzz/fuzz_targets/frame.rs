//! The in-vehicle frame decoder, fed arbitrary bytes in arbitrary pieces (the first byte sets
//! the piece size), and every JSON payload it yields parsed as the ECU would parse it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_vehicle::protocol::{parse_json, FrameDecoder, InstallBegin, Kind, ReportRequest};

fuzz_target!(|data: &[u8]| {
    let Some((&piece, mut rest)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece).max(1);
    let mut decoder = FrameDecoder::new();
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(piece.min(rest.len()));
        rest = tail;
        let mut chunk = chunk;
        while !chunk.is_empty() {
            match decoder.feed(chunk) {
                Ok((used, frame)) => {
                    // Progress, never past the input, and everything used unless a frame
                    // ended inside it.
                    assert!(used > 0 && used <= chunk.len());
                    assert!(frame.is_some() || used == chunk.len());
                    if let Some(frame) = frame {
                        assert!(frame.payload.len() as u64 <= u64::from(frame.kind.max_payload()));
                        match frame.kind {
                            Kind::ReportRequest => drop(ReportRequest::parse(&frame)),
                            Kind::InstallBegin => drop(parse_json::<InstallBegin>(&frame)),
                            _ => {}
                        }
                    }
                    chunk = &chunk[used..];
                }
                Err(_) => return,
            }
        }
    }
    let _ = decoder.end_of_input();
});
