//! Valid events grouped by (token, partition) and packed as RESP, so the Python side hands a partition's
//! batch to Redis without touching its events: each event's `XADD` command complete, and the arguments
//! the counting function needs.

use crate::event::Valid;

/// The version of the function's argument layout, which it checks: a gateway and a function library of
/// different versions must not misread each other. 7: an event whose day is `""` is stored, not counted
/// (`/import`'s of days past the counter retention); 6: profile updates among the events' arguments; 5:
/// the batch id among the function's fixed arguments (made by `store.WriteCommands`) is
/// `<writer>:<seq>:<slot>`, the slot of the batch's entry in its partition's ring; 4 gave the events'
/// max age; the events' arguments are as in 3.
///
/// Per event, four arguments: its UTC day (`YYYY-MM-DD`; `""` for an event stored but not counted, whose
/// funnel is then `""` too); `HH:<event name>`, the hour's counter field; the distinct_id (`""` when
/// none); the funnel (`""` unless mp_funnel). An mp_funnel event has three
/// more: its time in whole seconds, its step and its goal. Everything the function needs comes
/// ready-made, so it does no date arithmetic or string building per event. The event itself is not
/// among them: it goes to its stream in an `XADD` of its own (see `Batch::xadds`), which costs Redis
/// less than the same XADD called from the function (see `store.py`).
///
/// With deduplication on (`Options::dedup_window`), every event has one argument more, after the
/// others: its dedup hash (`dedup_hash`: its time, then a hash of its identity), or `""` when it has no
/// `$insert_id` and so cannot be deduplicated. The function is told which form it gets (`store.py`), so
/// the form without it is this version's as it was.
///
/// Per profile update (`profile.rs` packs them), five arguments and what the fifth counts: the
/// operation (`$set`, ..., `$delete`: a `$` tells an update from an event, whose first argument is a
/// day); the group key (`""` for a person's profile); the distinct_id or group id; `$last_seen` as
/// `YYYY-MM-DDTHH:MM:SS` (`""` with `$ignore_time`); the number of arguments that follow: a property
/// name and its value's JSON per property (`$set`, `$set_once`, `$add`, `$append`, `$union`,
/// `$remove`), the names (`$unset`), none (`$delete`).
pub const PACKED_LAYOUT: u32 = 7;

#[derive(Debug)]
pub struct Batch {
    pub token: String,
    pub partition: u32,
    pub stream: Stream,
    pub count: usize,
    /// RESP bulk strings in `packed`.
    pub args: usize,
    /// The events' arguments as RESP bulk strings, the events in `time` order (profile updates in the
    /// order sent).
    pub packed: Vec<u8>,
    /// One `XADD <stream> * data <json>` command per event, complete, in the order of `packed`.
    pub xadds: Vec<u8>,
    /// `XADD <stream> * data ` of this batch's stream, made once.
    xadd_prefix: Vec<u8>,
    /// The batch's events in request order.
    entries: Vec<Entry>,
}

/// One event's parts inside `Batch::packed` and `Batch::xadds`.
#[derive(Debug, Clone, Copy)]
struct Entry {
    time: f64,
    /// Its arguments in `packed`.
    start: usize,
    end: usize,
    /// Its XADD command in `xadds`, and where the normalised JSON lies inside it.
    xadd_start: usize,
    xadd_end: usize,
    json_offset: usize,
    json_len: usize,
}

/// What every Redis key of trackgate begins with: `keys.PREFIX` on the Python side, which builds every
/// other key (`tests/test_keys.py` compares the streams named here with its `stream_key`).
pub const KEY_PREFIX: &str = "tg:";

/// The streams a partition's entries go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Events,
    ProfileUpdates,
}

impl Stream {
    /// The stream's key for a (project, partition): the partition's hash tag, shared by every project,
    /// keeps all of a partition's keys in one cluster slot.
    pub fn key(self, token: &str, partition: u32) -> String {
        let family = match self {
            Self::Events => "events",
            Self::ProfileUpdates => "updates",
        };
        format!("{KEY_PREFIX}{{{partition}}}:{token}:{family}")
    }

    /// `XADD <stream> * data ` as RESP, up to the entry's own bulk string.
    fn xadd_prefix(self, token: &str, partition: u32) -> Vec<u8> {
        let mut out = b"*5\r\n$4\r\nXADD\r\n".to_vec();
        bulk(&mut out, self.key(token, partition).as_bytes());
        out.extend_from_slice(b"$1\r\n*\r\n$4\r\ndata\r\n");
        out
    }
}

/// The event stream of a (project, partition).
pub fn stream_key(token: &str, partition: u32) -> String {
    Stream::Events.key(token, partition)
}

/// A valid event: its batch, and its place among the batch's entries.
#[derive(Debug, Clone, Copy)]
pub struct EventRef {
    pub batch: usize,
    entry: usize,
}

#[derive(Debug, Default)]
pub struct Batches {
    pub batches: Vec<Batch>,
    /// The valid events in request order.
    pub events: Vec<EventRef>,
    /// The last day formatted: a request's events nearly always share their day.
    day: Option<(i64, String)>,
    /// Whether each event's dedup hash is packed (see `PACKED_LAYOUT`).
    dedup: bool,
    /// What a dedup hash is computed over, kept from event to event.
    dedup_input: Vec<u8>,
}

/// The bytes of an event's dedup time, the first of its dedup hash.
const DEDUP_TIME_BYTES: usize = 4;

/// The bytes of an event's dedup hash: its dedup time, then the 128-bit hash of its identity.
pub const DEDUP_HASH_BYTES: usize = DEDUP_TIME_BYTES + 16;

/// The identity of an event for deduplication, as Mixpanel's: (event name, distinct_id, time in whole
/// seconds, `$insert_id`), with its project's token (a partition's sets are shared by its projects),
/// hashed to 128 bits (XXH3-128); None without an `$insert_id`. Each text field goes in behind its
/// length and the time as 8 fixed bytes, so that no two different tuples hash the same input, and two
/// tuples collide only as two random 128-bit values do: among n events in one partition's window, with
/// probability about n^2 / 2^129. A missing distinct_id is hashed as `""`.
/// `input` is a buffer to write the hash's input in.
///
/// Ahead of the hash, the time's seconds (big-endian, clamped to 0..=u32::MAX): the function keeps an
/// event's hash in the set of its time's bucket, so a retry (which has the same time) is looked up in
/// one set, and it reads the time without another argument per event. The clamp changes only the
/// bucket of a time outside 1970..2106; the hash holds the whole time.
pub fn dedup_hash(event: &Valid<'_>, input: &mut Vec<u8>) -> Option<[u8; DEDUP_HASH_BYTES]> {
    let insert_id = event.insert_id.as_deref()?;
    let distinct_id = event.distinct_id.as_deref().unwrap_or("");
    let seconds = event.time.floor() as i64;
    input.clear();
    for field in [
        event.token.as_bytes(),
        event.name.as_bytes(),
        distinct_id.as_bytes(),
    ] {
        input.extend_from_slice(&(field.len() as u32).to_le_bytes());
        input.extend_from_slice(field);
    }
    input.extend_from_slice(&seconds.to_le_bytes());
    input.extend_from_slice(&(insert_id.len() as u32).to_le_bytes());
    input.extend_from_slice(insert_id.as_bytes());
    let mut out = [0; DEDUP_HASH_BYTES];
    let time = u32::try_from(seconds.max(0)).unwrap_or(u32::MAX);
    out[..DEDUP_TIME_BYTES].copy_from_slice(&time.to_be_bytes());
    out[DEDUP_TIME_BYTES..].copy_from_slice(&xxhash_rust::xxh3::xxh3_128(input).to_le_bytes());
    Some(out)
}

/// The partition of a user: a stable hash (CRC-32, IEEE) of the key, so one user's events share a
/// stream and keep their order. Events without distinct_id fall back to `$insert_id`, then to their JSON.
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    crc32fast::hash(key) % partitions.max(1)
}

impl Batches {
    /// Batches that pack each event's dedup hash (`dedup`), or not.
    pub fn new(dedup: bool) -> Self {
        Self {
            dedup,
            ..Self::default()
        }
    }

    /// The batch of a (token, partition, stream), made when first needed.
    fn batch_for(&mut self, token: &str, partition: u32, stream: Stream) -> usize {
        let found = self
            .batches
            .iter()
            .position(|b| b.partition == partition && b.stream == stream && b.token == token);
        found.unwrap_or_else(|| {
            self.batches.push(Batch {
                token: token.to_owned(),
                partition,
                stream,
                count: 0,
                args: 0,
                packed: Vec::with_capacity(256),
                xadds: Vec::with_capacity(1024),
                xadd_prefix: stream.xadd_prefix(token, partition),
                entries: Vec::new(),
            });
            self.batches.len() - 1
        })
    }

    /// Appends an entry's XADD to batch `index`; its packed arguments are the caller's to write, from
    /// where `packed` ends now to where it ends once `close_entry` is called.
    fn add_entry(&mut self, index: usize, json: &[u8], time: f64) {
        let batch = &mut self.batches[index];
        batch.count += 1;
        let xadd_start = batch.xadds.len();
        batch.xadds.extend_from_slice(&batch.xadd_prefix);
        let json_offset = batch.xadds.len() - xadd_start + bulk_header_len(json.len());
        bulk(&mut batch.xadds, json);
        self.events.push(EventRef {
            batch: index,
            entry: batch.entries.len(),
        });
        let start = batch.packed.len();
        batch.entries.push(Entry {
            time,
            start,
            end: start,
            xadd_start,
            xadd_end: batch.xadds.len(),
            json_offset,
            json_len: json.len(),
        });
    }

    /// The last entry's packed arguments end here: `args` of them.
    fn close_entry(batch: &mut Batch, args: usize) {
        batch.args += args;
        let end = batch.packed.len();
        batch.entries.last_mut().expect("an entry was added").end = end;
    }

    /// A valid profile update: its normalised JSON to the stream of profile updates of its profile's
    /// partition, and the arguments `pack` writes (returning how many) for the function that applies
    /// it.
    pub fn push_update(
        &mut self,
        token: &str,
        partition: u32,
        json: &[u8],
        time: f64,
        pack: impl FnOnce(&mut Vec<u8>) -> usize,
    ) {
        let index = self.batch_for(token, partition, Stream::ProfileUpdates);
        self.add_entry(index, json, time);
        let batch = &mut self.batches[index];
        let args = pack(&mut batch.packed);
        Self::close_entry(batch, args);
    }

    /// A valid event: its XADD to its partition's stream, and its arguments for the function that
    /// counts it.
    pub fn push(&mut self, event: &Valid<'_>, json: &[u8], partitions: u32) {
        self.pack(event, json, partitions, true);
    }

    /// A valid event stored but not counted (see `import.rs`: a day older than the counters are kept):
    /// its XADD, and its arguments with the day `""`, which the function skips but for deduplication.
    pub fn push_uncounted(&mut self, event: &Valid<'_>, json: &[u8], partitions: u32) {
        self.pack(event, json, partitions, false);
    }

    fn pack(&mut self, event: &Valid<'_>, json: &[u8], partitions: u32, counted: bool) {
        let index = self.add_event(event, json, partitions);
        let seconds = event.time.floor() as i64;
        let (day, hour) = (
            seconds.div_euclid(86_400),
            seconds.rem_euclid(86_400) / 3600,
        );
        let date = if counted {
            match &self.day {
                Some((cached, date)) if *cached == day => date.as_str(),
                _ => &self.day.insert((day, utc_date(day))).1,
            }
        } else {
            ""
        };
        let batch = &mut self.batches[index];
        let out = &mut batch.packed;
        bulk(out, date.as_bytes());
        let hh = [b'0' + (hour / 10) as u8, b'0' + (hour % 10) as u8, b':'];
        bulk_parts(out, &[&hh, event.name.as_bytes()]);
        bulk(out, event.distinct_id.as_deref().unwrap_or("").as_bytes());
        let funnel = event.funnel.as_ref().filter(|_| counted);
        let mut args = if let Some((name, step, goal)) = funnel {
            bulk(out, name.as_bytes());
            bulk(out, itoa::Buffer::new().format(seconds).as_bytes());
            bulk(out, itoa::Buffer::new().format(*step).as_bytes());
            bulk(out, goal.as_bytes());
            7
        } else {
            out.extend_from_slice(b"$0\r\n\r\n");
            4
        };
        if self.dedup {
            let hash = dedup_hash(event, &mut self.dedup_input);
            bulk(out, hash.as_ref().map_or(&[][..], |hash| &hash[..]));
            args += 1;
        }
        Self::close_entry(batch, args);
    }

    /// An event's XADD to the stream of its partition: its user's (`distinct_id`), else its
    /// `$insert_id`'s, else its JSON's. Returns its batch.
    fn add_event(&mut self, event: &Valid<'_>, json: &[u8], partitions: u32) -> usize {
        let key: &[u8] = match (&event.distinct_id, &event.insert_id) {
            (Some(id), _) if !id.is_empty() => id.as_bytes(),
            (_, Some(id)) => id.as_bytes(),
            _ => json,
        };
        let partition = partition_of(key, partitions);
        let index = self.batch_for(&event.token, partition, Stream::Events);
        self.add_entry(index, json, event.time);
        index
    }

    /// Orders each batch's events by `time` (stably): within one request, time is the only order there
    /// is, since mixpanel-browser does not send its batches in tracking order. Profile updates keep the
    /// order they were sent in, which is the order they apply in.
    pub fn finish(&mut self) {
        for batch in &mut self.batches {
            if batch.stream == Stream::ProfileUpdates
                || batch.entries.windows(2).all(|w| w[0].time <= w[1].time)
            {
                continue;
            }
            let mut order: Vec<usize> = (0..batch.entries.len()).collect();
            order.sort_by(|&a, &b| batch.entries[a].time.total_cmp(&batch.entries[b].time));
            let mut packed = Vec::with_capacity(batch.packed.len());
            let mut xadds = Vec::with_capacity(batch.xadds.len());
            for i in order {
                let entry = &mut batch.entries[i];
                let start = packed.len();
                packed.extend_from_slice(&batch.packed[entry.start..entry.end]);
                entry.end = packed.len();
                entry.start = start;
                let start = xadds.len();
                xadds.extend_from_slice(&batch.xadds[entry.xadd_start..entry.xadd_end]);
                entry.xadd_end = xadds.len();
                entry.xadd_start = start;
            }
            batch.packed = packed;
            batch.xadds = xadds;
        }
    }

    pub fn event_json(&self, event: EventRef) -> &[u8] {
        let batch = &self.batches[event.batch];
        let entry = batch.entries[event.entry];
        let start = entry.xadd_start + entry.json_offset;
        &batch.xadds[start..start + entry.json_len]
    }
}

/// `YYYY-MM-DD` of a day counted from 1970-01-01 (Howard Hinnant's `civil_from_days`).
pub fn utc_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn bulk_header_len(len: usize) -> usize {
    itoa::Buffer::new().format(len).len() + 3
}

/// One RESP bulk string: `$<len>\r\n<bytes>\r\n`.
pub fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    bulk_parts(out, &[bytes]);
}

/// One RESP bulk string made of `parts` joined, without joining them first.
fn bulk_parts(out: &mut Vec<u8>, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.push(b'$');
    out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
    out.extend_from_slice(b"\r\n");
    for part in parts {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_strings() {
        let mut out = Vec::new();
        bulk(&mut out, b"hello");
        bulk(&mut out, b"");
        assert_eq!(out, b"$5\r\nhello\r\n$0\r\n\r\n");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(-1), "1969-12-31");
        assert_eq!(utc_date(11_016), "2000-02-29");
        assert_eq!(utc_date(20_418), "2025-11-26");
        assert_eq!(utc_date(2_932_896), "9999-12-31");
    }

    #[test]
    fn xadd_commands_name_the_partition_stream() {
        let mut out = Stream::Events.xadd_prefix("tok", 3);
        bulk(&mut out, b"{}");
        assert_eq!(
            out,
            b"*5\r\n$4\r\nXADD\r\n$17\r\ntg:{3}:tok:events\r\n$1\r\n*\r\n$4\r\ndata\r\n$2\r\n{}\r\n"
        );
    }

    fn valid<'a>(
        name: &'a str,
        distinct_id: Option<&'a str>,
        time: f64,
        insert_id: Option<&'a str>,
    ) -> Valid<'a> {
        valid_of("tok", name, distinct_id, time, insert_id)
    }

    fn valid_of<'a>(
        token: &'a str,
        name: &'a str,
        distinct_id: Option<&'a str>,
        time: f64,
        insert_id: Option<&'a str>,
    ) -> Valid<'a> {
        Valid {
            token: token.into(),
            name: name.into(),
            distinct_id: distinct_id.map(Into::into),
            insert_id: insert_id.map(Into::into),
            time,
            funnel: None,
        }
    }

    #[test]
    fn dedup_hashes_tell_apart_any_one_field_and_ignore_fractions_of_a_second() {
        let hash =
            |name, id, time, insert| dedup_hash(&valid(name, id, time, insert), &mut Vec::new());
        let base = hash("a", Some("u"), 100.2, Some("i1"));
        assert!(base.is_some());
        assert_eq!(base, hash("a", Some("u"), 100.9, Some("i1")));
        for other in [
            hash("b", Some("u"), 100.2, Some("i1")),
            hash("a", Some("v"), 100.2, Some("i1")),
            hash("a", Some("u"), 101.0, Some("i1")),
            hash("a", Some("u"), 100.2, Some("i2")),
            // The lengths keep fields from moving into one another.
            hash("au", Some(""), 100.2, Some("i1")),
            // Another project's event of the same identity.
            dedup_hash(
                &valid_of("other", "a", Some("u"), 100.2, Some("i1")),
                &mut Vec::new(),
            ),
        ] {
            assert_ne!(base, other);
        }
        assert_eq!(
            hash("a", None, 100.2, Some("i1")),
            hash("a", Some(""), 100.2, Some("i1"))
        );
        assert_eq!(hash("a", Some("u"), 100.2, None), None);
    }

    #[test]
    fn dedup_hashes_begin_with_the_time_in_seconds_big_endian_clamped() {
        let time = |at| dedup_hash(&valid("a", Some("u"), at, Some("i1")), &mut Vec::new());
        let head = |at| time(at).map(|hash| hash[..DEDUP_TIME_BYTES].to_vec());
        assert_eq!(
            head(1_765_000_000.7),
            Some(1_765_000_000_u32.to_be_bytes().to_vec())
        );
        assert_eq!(head(-5.0), Some(vec![0; 4]));
        assert_eq!(head(5e9), Some(vec![0xff; 4]));
        // Clamped alike, told apart by the hash.
        assert_ne!(time(-5.0), time(-6.0));
    }

    #[test]
    fn partition_is_crc32_mod_p() {
        // CRC-32 (IEEE) of "123456789" is the standard check value 0xCBF43926.
        assert_eq!(partition_of(b"123456789", 1 << 31), 0xCBF4_3926 % (1 << 31));
        assert_eq!(partition_of(b"anything", 1), 0);
    }
}
