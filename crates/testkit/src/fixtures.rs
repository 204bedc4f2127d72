//! The recorded controller transcripts under `protocol-fixtures/jnlp4/`.

use std::path::PathBuf;

use serde::Deserialize;

/// Who sent a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Direction {
    /// From the agent to the controller.
    #[serde(rename = "agent>controller")]
    AgentToController,
    /// From the controller to the agent.
    #[serde(rename = "controller>agent")]
    ControllerToAgent,
}

/// The protocol layer a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// `utf("Protocol:JNLP4-connect")`.
    Protocol,
    /// `utf("ACK")`.
    Ack,
    /// `utf(headers)`.
    Headers,
    /// `utf("OK" | "ERROR: …" | "FATAL: …")`.
    Response,
    /// `utf("BYE")`.
    Bye,
    /// `utf(base64 capability)`.
    Capability,
    /// One chunk, header included.
    Chunk,
}

/// One record of a transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Position in the session.
    pub seq: usize,
    /// Sender.
    pub dir: Direction,
    /// Layer.
    pub layer: Layer,
    /// The exact bytes.
    pub bytes: Vec<u8>,
}

#[derive(Deserialize)]
struct RawRecord {
    seq: usize,
    dir: Direction,
    layer: Layer,
    hex: String,
}

/// The fixture directory (`<workspace>/protocol-fixtures/jnlp4`).
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../protocol-fixtures/jnlp4")
}

/// Names of every `.jsonl` transcript, sorted.
pub fn transcripts() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .expect("fixture directory")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".jsonl"))
        .collect();
    names.sort();
    names
}

/// Loads one transcript by file name, in `seq` order.
pub fn load(name: &str) -> Vec<Record> {
    let text = std::fs::read_to_string(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut records: Vec<Record> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let raw: RawRecord =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}: {e}"));
            Record {
                seq: raw.seq,
                dir: raw.dir,
                layer: raw.layer,
                bytes: hex::decode(&raw.hex).unwrap_or_else(|e| panic!("{name}: {e}")),
            }
        })
        .collect();
    records.sort_by_key(|r| r.seq);
    records
}

/// The first bytes the stock engine writes on stdout.
pub fn engine_preamble() -> Vec<u8> {
    std::fs::read(dir().join("engine-stdio-preamble.bin")).expect("engine preamble fixture")
}

/// `agent-initiated-close.jsonl`, compiled in: the test controller and the
/// fake engine replay its closes wherever they run.
const CLOSE_TRANSCRIPT: &str =
    include_str!("../../../protocol-fixtures/jnlp4/agent-initiated-close.jsonl");

/// The bytes of the records of `agent-initiated-close.jsonl` with these
/// `seq`s, concatenated in the order given.
pub fn close_transcript(seqs: &[usize]) -> Vec<u8> {
    let records: Vec<RawRecord> = CLOSE_TRANSCRIPT
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| serde_json::from_str(line).expect("agent-initiated-close.jsonl"))
        .collect();
    let mut out = Vec::new();
    for seq in seqs {
        let record = records
            .iter()
            .find(|r| r.seq == *seq)
            .unwrap_or_else(|| panic!("agent-initiated-close.jsonl has no seq {seq}"));
        out.extend(hex::decode(&record.hex).expect("hex"));
    }
    out
}

/// The controller's answer to an agent's `Channel$CloseCommand` (seq 20).
pub fn controller_close_command() -> Vec<u8> {
    close_transcript(&[20])
}

/// The engine's answer to the controller's close: its own close and a
/// zero-length chunk (seq 21 and 22).
pub fn engine_close_answer() -> Vec<u8> {
    close_transcript(&[21, 22])
}
