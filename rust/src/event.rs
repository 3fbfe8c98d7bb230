//! One event: its members scanned once, the rules applied in a fixed order, the normalised JSON written.

use std::borrow::Cow;
use std::convert::Infallible;
use std::ops::Range;

use crate::errors::{EventError, EventErrorKind};
use crate::json::{
    ends, fits_double, write_str, JsonType, Length, Out, Scalar, Scanner, Shape, StrToken,
    SyntaxError,
};
use crate::{Context, Options};

/// Seconds values from this one on are taken as milliseconds (1e11 s is the year 5138).
pub(crate) const MILLISECONDS_FROM: f64 = 1e11;
const MAX_INSERT_ID_CHARS: usize = 36;
/// The highest funnel step. A report lists every step up to the highest seen, per day of a range: an
/// unbounded step would let one event (anyone who knows a project's public token can send it) make
/// reports of millions of steps.
pub const MAX_FUNNEL_STEP: u32 = 100;

/// A reserved property as it was sent: its token when a scalar, its type either way.
#[derive(Debug, Clone, Copy)]
struct Reserved<'a> {
    scalar: Option<Scalar<'a>>,
    ty: JsonType,
}

impl<'a> Reserved<'a> {
    fn string(&self) -> Option<StrToken<'a>> {
        match self.scalar {
            Some(Scalar::String(s)) => Some(s),
            _ => None,
        }
    }

    fn number(&self) -> Option<&'a [u8]> {
        match self.scalar {
            Some(Scalar::Number(n)) => Some(n),
            _ => None,
        }
    }
}

/// Which reserved property a key names, by its unescaped text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Token,
    Time,
    DistinctId,
    InsertId,
    Ip,
    Funnel,
    Step,
    Goal,
}

impl Slot {
    fn of(key: &[u8]) -> Option<Self> {
        Some(match key {
            b"token" => Self::Token,
            b"time" => Self::Time,
            b"distinct_id" => Self::DistinctId,
            b"$insert_id" => Self::InsertId,
            b"ip" => Self::Ip,
            b"funnel" => Self::Funnel,
            b"step" => Self::Step,
            b"goal" => Self::Goal,
            _ => return None,
        })
    }
}

#[derive(Debug)]
struct Property<'a> {
    key_raw: &'a [u8],
    /// Unescaped; UTF-8, since the payload was checked.
    key: Cow<'a, [u8]>,
    value: Sent<'a>,
    slot: Option<Slot>,
}

/// A property's value as sent: a scalar's token, or an array or object minified into
/// `Scratch::values`.
#[derive(Debug, Clone)]
enum Sent<'a> {
    Scalar(Scalar<'a>),
    Container(Range<usize>),
}

/// Buffers reused from event to event, so a batch allocates them once.
#[derive(Debug)]
pub struct Scratch<'a> {
    members: Members<'a>,
    values: Vec<u8>,
    key_hashes: Vec<u64>,
    /// The receive time, formatted once per request when first written.
    received: Vec<u8>,
    /// The normalised JSON of the last valid event.
    pub json: Vec<u8>,
}

impl Default for Scratch<'_> {
    // Inlined, so that it is made where it is kept rather than copied there.
    #[inline]
    fn default() -> Self {
        // Room for the properties of most events, so that the first does not grow it step by step:
        // 1 KiB, the largest block glibc's allocator keeps in its per-thread cache (a larger one
        // is searched for in its bins, a cost a one-event payload would pay on every call).
        const PROPERTIES: usize = 1024 / std::mem::size_of::<Property<'_>>();
        let mut members = Members::default();
        members.properties.reserve(PROPERTIES);
        Self {
            members,
            values: Vec::new(),
            key_hashes: Vec::new(),
            received: Vec::new(),
            json: Vec::new(),
        }
    }
}

/// What the gateway's batches need of a valid event besides its JSON (`Normalised::json`).
#[derive(Debug)]
pub struct Valid<'a> {
    pub token: Cow<'a, str>,
    pub name: Cow<'a, str>,
    pub distinct_id: Option<Cow<'a, str>>,
    pub insert_id: Option<Cow<'a, str>>,
    pub time: f64,
    pub funnel: Option<(Cow<'a, str>, u32, Cow<'a, str>)>,
}

/// Everything seen in one event object.
#[derive(Debug, Default)]
struct Members<'a> {
    name: Option<Reserved<'a>>,
    properties_type: Option<JsonType>,
    properties: Vec<Property<'a>>,
    reserved: [Option<Reserved<'a>>; 8],
    violation: Option<(EventErrorKind, usize, usize)>,
}

impl<'a> Members<'a> {
    fn get(&self, slot: Slot) -> Option<Reserved<'a>> {
        self.reserved[slot as usize]
    }

    fn clear_properties(&mut self) {
        self.properties.clear();
        self.reserved = [None; 8];
        self.violation = None;
    }
}

/// Where the events of a payload go as they are decoded, one by one.
pub trait Sink {
    /// Whether it reads `Normalised::json`: when not, the JSON is written only if it may be too large.
    const KEEPS_JSON: bool = true;

    fn event(&mut self, event: &Normalised<'_>);
    fn error(&mut self, error: EventError);
    /// After the last event of a payload that decoded.
    fn finish(&mut self) {}
}

/// Scans the event object at the cursor and hands the event, or why it was rejected, to `sink`. An
/// error means the JSON itself is broken and the whole request is unusable.
///
/// `project` is the token of the project the request is authenticated for (/import, see `import.rs`):
/// then an event may leave `properties.token` out, and one that gives it must give this one. Without
/// it (/track), every event names its project by its token.
pub fn decode_event<'a, S: Sink>(
    scanner: &mut Scanner<'a>,
    index: usize,
    ctx: &Context<'_>,
    use_ip: bool,
    project: Option<StrToken<'_>>,
    scratch: &mut Scratch<'a>,
    sink: &mut S,
) -> Result<(), SyntaxError> {
    let start = scanner.position();
    scan_members(scanner, ctx.options, scratch)?;
    let span = scanner.position() - start;
    let Scratch {
        members,
        values,
        key_hashes,
        received,
        json,
    } = scratch;
    let normaliser = Normaliser {
        index,
        ctx,
        use_ip,
        project,
        members,
        values,
    };
    let mut event = match normaliser.run(key_hashes) {
        Ok(event) => event,
        Err(error) => {
            sink.error(*error.0);
            return Ok(());
        }
    };
    let keep_json = S::KEEPS_JSON;
    let measure = !keep_json && most_json_bytes(span, ctx.peer_ip) > ctx.options.max_event_bytes;
    if (keep_json || measure) && received.is_empty() {
        write_number(received, ctx.now);
    }
    let size = if keep_json {
        json.clear();
        event.write_json(json, received);
        json.len()
    } else if measure {
        let mut length = Length::default();
        event.write_json(&mut length, received);
        length.0
    } else {
        0
    };
    if size > ctx.options.max_event_bytes {
        sink.error(*normaliser.too_large(size).0);
        return Ok(());
    }
    if keep_json {
        event.json = json;
    }
    sink.event(&event);
    Ok(())
}

fn scan_members<'a>(
    scanner: &mut Scanner<'a>,
    options: &Options,
    scratch: &mut Scratch<'a>,
) -> Result<(), SyntaxError> {
    scratch.members.name = None;
    scratch.members.properties_type = None;
    scratch.members.clear_properties();
    scratch.values.clear();
    if scanner.open(b'{', b'}') {
        return Ok(());
    }
    loop {
        let key = scanner.key()?;
        match &*key.bytes() {
            b"event" => {
                let scalar = scanner.scalar()?;
                if let Scalar::Container(_) = scalar {
                    scanner.skip()?;
                }
                scratch.members.name = Some(Reserved {
                    scalar: Some(scalar),
                    ty: scalar.json_type(),
                });
            }
            b"properties" => {
                if scanner.peek() == Some(b'{') {
                    // A repeated "properties" member replaces the earlier one, as in most JSON readers.
                    scratch.members.clear_properties();
                    scratch.values.clear();
                    scan_properties(scanner, options, scratch)?;
                    scratch.members.properties_type = Some(JsonType::Object);
                } else {
                    scratch.members.properties_type = Some(scanner.skip()?);
                }
            }
            _ => {
                scanner.skip()?;
            }
        }
        if !scanner.next_member(b'}')? {
            return Ok(());
        }
    }
}

fn scan_properties<'a>(
    scanner: &mut Scanner<'a>,
    options: &Options,
    scratch: &mut Scratch<'a>,
) -> Result<(), SyntaxError> {
    let members = &mut scratch.members;
    if scanner.open(b'{', b'}') {
        return Ok(());
    }
    let mut shape = Shape::new(
        options.max_depth,
        options.max_array_len,
        options.max_properties,
    );
    loop {
        let key_token = scanner.key()?;
        let key = key_token.bytes();
        let slot = Slot::of(&key);
        let scalar = scanner.scalar()?;
        let (value, ty) = match scalar {
            Scalar::Container(_) => {
                let start = scratch.values.len();
                let ty = scanner.value(&mut scratch.values, &mut shape, 0)?;
                if let (None, Some((kind, value))) = (members.violation, shape.violation) {
                    members.violation = Some((kind, value, members.properties.len()));
                }
                (Sent::Container(start..scratch.values.len()), ty)
            }
            Scalar::Number(n) => {
                if members.violation.is_none() && !fits_double(n) {
                    let at = members.properties.len();
                    members.violation = Some((EventErrorKind::NumberOutOfRange, 0, at));
                }
                (Sent::Scalar(scalar), JsonType::Number)
            }
            _ => (Sent::Scalar(scalar), scalar.json_type()),
        };
        if let Some(slot) = slot {
            let scalar = (!matches!(scalar, Scalar::Container(_))).then_some(scalar);
            members.reserved[slot as usize] = Some(Reserved { scalar, ty });
        }
        members.properties.push(Property {
            key_raw: key_token.raw,
            key,
            value,
            slot,
        });
        if !scanner.next_member(b'}')? {
            return Ok(());
        }
    }
}

/// Why an event was rejected. Boxed, so that a rule's result is the size of its value rather than
/// of the error's strings, which every `?` would copy.
struct Rejected(Box<EventError>);

struct Normaliser<'n> {
    index: usize,
    ctx: &'n Context<'n>,
    use_ip: bool,
    project: Option<StrToken<'n>>,
    members: &'n Members<'n>,
    values: &'n [u8],
}

impl<'n> Normaliser<'n> {
    #[cold]
    fn reject(&self, kind: EventErrorKind, field: &str, message: String) -> Rejected {
        let mut error = EventError::new(self.index, kind, field, message);
        error.insert_id = self.sent_insert_id();
        Rejected(Box::new(error))
    }

    /// The event's `$insert_id` when it is a valid one.
    #[cold]
    fn sent_insert_id(&self) -> Option<String> {
        let text = self.members.get(Slot::InsertId)?.string()?.bytes();
        valid_insert_id(&text).then(|| utf8(text).into_owned())
    }

    /// The rules, in the order their errors are reported: the first broken one names the event's error.
    /// The last, the size of the normalised JSON, is checked once it is written (`too_large`).
    fn run(&self, key_hashes: &mut Vec<u64>) -> Result<Normalised<'n>, Rejected> {
        use EventErrorKind as K;
        let options = self.ctx.options;
        let m = self.members;

        let name = self.event_name()?;
        if let Some(ty) = m.properties_type.filter(|t| *t != JsonType::Object) {
            return Err(self.reject(
                K::PropertiesInvalid,
                "properties",
                format!("properties must be an object, got {}", ty.name()),
            ));
        }
        let token = self.token()?;
        let time = self.time()?;
        let sent_distinct_id = self.distinct_id()?;
        let insert_id = self.insert_id()?;
        let sent_ip = match m.get(Slot::Ip) {
            None => None,
            Some(r) => Some(r.string().ok_or_else(|| {
                self.reject(
                    K::IpInvalid,
                    "properties.ip",
                    format!("properties.ip must be a string, got {}", r.ty.name()),
                )
            })?),
        };
        let funnel = if *name.bytes() == *b"mp_funnel" {
            Some(self.funnel()?)
        } else {
            None
        };
        if m.properties.len() > options.max_properties {
            return Err(self.reject(
                K::TooManyProperties,
                "properties",
                format!(
                    "{} properties; at most {} are allowed",
                    m.properties.len(),
                    options.max_properties
                ),
            ));
        }
        if let Some((kind, value, at)) = m.violation {
            return Err(self.shape_error(kind, value, &m.properties[at].key));
        }
        self.no_duplicates(key_hashes)?;

        let peer_ip = if self.use_ip { self.ctx.peer_ip } else { None };
        let distinct_id = match (sent_distinct_id, peer_ip) {
            (Some(DistinctId::String(s)), Some(ip)) if s.raw.len() == 2 => DistinctId::Peer(ip),
            (Some(d), _) => d,
            (None, Some(ip)) => DistinctId::Peer(ip),
            (None, None) => DistinctId::None,
        };
        let ip = match peer_ip {
            Some(ip) => IpValue::Peer(ip),
            None => sent_ip.map_or(IpValue::None, IpValue::Sent),
        };
        Ok(Normalised {
            name,
            token,
            time,
            distinct_id,
            insert_id,
            ip,
            funnel,
            members: m,
            values: self.values,
            json: &[],
        })
    }

    #[cold]
    fn too_large(&self, size: usize) -> Rejected {
        let max = self.ctx.options.max_event_bytes;
        self.reject(
            EventErrorKind::EventTooLarge,
            "",
            format!("the event is {size} bytes; at most {max} are allowed"),
        )
    }

    fn event_name(&self) -> Result<StrToken<'n>, Rejected> {
        use EventErrorKind as K;
        let Some(reserved) = self.members.name else {
            return Err(self.reject(
                K::EventMissing,
                "event",
                "the event name (`event`) is missing".into(),
            ));
        };
        let Some(name) = reserved.string() else {
            return Err(self.reject(
                K::EventInvalid,
                "event",
                format!(
                    "the event name must be a string, got {}",
                    reserved.ty.name()
                ),
            ));
        };
        if name.raw.len() == 2 {
            return Err(self.reject(
                K::EventInvalid,
                "event",
                "the event name must not be empty".into(),
            ));
        }
        let max = self.ctx.options.max_event_name_chars;
        if let Some(chars) = chars_over(name, max) {
            return Err(self.reject(
                K::EventTooLong,
                "event",
                format!("the event name is {chars} characters long; at most {max} are allowed"),
            ));
        }
        Ok(name)
    }

    fn token(&self) -> Result<StrToken<'n>, Rejected> {
        use EventErrorKind as K;
        const FIELD: &str = "properties.token";
        if let Some(project) = self.project {
            return match self.members.get(Slot::Token) {
                None => Ok(project),
                Some(reserved) => match reserved.string() {
                    Some(token) if token.bytes() == project.bytes() => Ok(token),
                    _ => Err(self.reject(
                        K::TokenInvalid,
                        FIELD,
                        "properties.token is not the token of the project the request is authenticated for"
                            .into(),
                    )),
                },
            };
        }
        let Some(reserved) = self.members.get(Slot::Token) else {
            return Err(self.reject(
                K::TokenMissing,
                FIELD,
                "properties.token is missing: every event needs its project's token".into(),
            ));
        };
        let token = match reserved.string() {
            Some(t) if t.raw.len() > 2 => t,
            Some(_) => {
                return Err(self.reject(
                    K::TokenInvalid,
                    FIELD,
                    "properties.token must not be empty".into(),
                ))
            }
            None => {
                return Err(self.reject(
                    K::TokenInvalid,
                    FIELD,
                    format!(
                        "properties.token must be a string, got {}",
                        reserved.ty.name()
                    ),
                ))
            }
        };
        if let Some(known) = self.ctx.tokens {
            if !known.contains(&*token.text()) {
                return Err(self.reject(
                    K::UnknownToken,
                    FIELD,
                    "properties.token is not the token of any project".into(),
                ));
            }
        }
        Ok(token)
    }

    fn time(&self) -> Result<f64, Rejected> {
        use EventErrorKind as K;
        const FIELD: &str = "properties.time";
        let now = self.ctx.now;
        let Some(reserved) = self.members.get(Slot::Time) else {
            return Ok(now);
        };
        let invalid = || {
            self.reject(
                K::TimeInvalid,
                FIELD,
                format!(
                    "properties.time must be a non-negative number of seconds (or milliseconds) since 1970, got {}",
                    reserved.ty.name()
                ),
            )
        };
        let raw = reserved.number().ok_or_else(invalid)?;
        let mut time: f64 = parse_f64(raw);
        if !time.is_finite() || time < 0.0 {
            return Err(invalid());
        }
        if time >= MILLISECONDS_FROM {
            time /= 1000.0;
        }
        let age = now - time;
        let max_age = self.ctx.options.max_age;
        if age > max_age {
            return Err(self.reject(
                K::TimeTooOld,
                FIELD,
                format!(
                    "properties.time is {} old, {} more than the {} allowed",
                    human_duration(age),
                    human_duration(age - max_age),
                    human_duration(max_age)
                ),
            ));
        }
        if -age > self.ctx.options.max_future_skew {
            return Ok(now);
        }
        Ok(time)
    }

    fn distinct_id(&self) -> Result<Option<DistinctId<'n>>, Rejected> {
        use EventErrorKind as K;
        const FIELD: &str = "properties.distinct_id";
        let Some(reserved) = self.members.get(Slot::DistinctId) else {
            return Ok(None);
        };
        let max = self.ctx.options.max_distinct_id_chars;
        let (value, over) = match reserved.scalar {
            Some(Scalar::String(s)) => (DistinctId::String(s), chars_over(s, max)),
            Some(Scalar::Number(n)) => (DistinctId::Number(n), Some(n.len()).filter(|&n| n > max)),
            _ => {
                return Err(self.reject(
                    K::DistinctIdInvalid,
                    FIELD,
                    format!(
                        "properties.distinct_id must be a string or a number, got {}",
                        reserved.ty.name()
                    ),
                ))
            }
        };
        if let Some(chars) = over {
            return Err(self.reject(
                K::DistinctIdTooLong,
                FIELD,
                format!(
                    "properties.distinct_id is {chars} characters long; at most {max} are allowed"
                ),
            ));
        }
        Ok(Some(value))
    }

    fn insert_id(&self) -> Result<Option<StrToken<'n>>, Rejected> {
        let Some(reserved) = self.members.get(Slot::InsertId) else {
            return Ok(None);
        };
        if let Some(s) = reserved.string() {
            if valid_insert_id(&s.bytes()) {
                return Ok(Some(s));
            }
        }
        Err(self.reject(
            EventErrorKind::InsertIdInvalid,
            "properties.$insert_id",
            format!(
                "properties.$insert_id must be a string of at most {MAX_INSERT_ID_CHARS} characters from A-Z, a-z, 0-9 and '-'"
            ),
        ))
    }

    fn funnel(&self) -> Result<(StrToken<'n>, u32, StrToken<'n>), Rejected> {
        use EventErrorKind as K;
        let m = self.members;
        // Names of Redis keys and hash fields: held to the length of an event name.
        let max = self.ctx.options.max_event_name_chars;
        let fits = |s: &StrToken<'_>| chars_over(*s, max).is_none();
        let name = m
            .get(Slot::Funnel)
            .and_then(|r| r.string())
            .filter(|s| s.raw.len() > 2 && fits(s))
            .ok_or_else(|| {
                self.reject(
                    K::FunnelInvalid,
                    "properties.funnel",
                    format!("mp_funnel events need properties.funnel, a non-empty string of at most {max} characters"),
                )
            })?;
        let step = m.get(Slot::Step).and_then(|r| parse_step(r.scalar?)).ok_or_else(|| {
            self.reject(
                K::StepInvalid,
                "properties.step",
                format!("mp_funnel events need properties.step, an integer from 1 to {MAX_FUNNEL_STEP} (or a string holding one)"),
            )
        })?;
        let goal = m
            .get(Slot::Goal)
            .and_then(|r| r.string())
            .filter(fits)
            .ok_or_else(|| {
                self.reject(
                    K::GoalInvalid,
                    "properties.goal",
                    format!("mp_funnel events need properties.goal, a string of at most {max} characters"),
                )
            })?;
        Ok((name, step, goal))
    }

    #[cold]
    fn shape_error(&self, kind: EventErrorKind, value: usize, key: &[u8]) -> Rejected {
        let options = self.ctx.options;
        let field = property_field(key);
        let message = match kind {
            EventErrorKind::TooDeep => {
                format!(
                    "{field} is nested more than {} levels deep",
                    options.max_depth
                )
            }
            EventErrorKind::NumberOutOfRange => {
                format!("{field} holds a number beyond the range of a double (about ±1.8e308)")
            }
            EventErrorKind::ArrayTooLong => {
                format!(
                    "{field} holds an array of {value} elements; at most {} are allowed",
                    options.max_array_len
                )
            }
            _ => format!(
                "{field} holds an object of {value} keys; at most {} are allowed",
                options.max_properties
            ),
        };
        self.reject(kind, &field, message)
    }

    /// Keys are compared by a cheap fingerprint first. When there are few, each fingerprint sets one
    /// bit of a 1024-bit set, and only a bit found set already (a repeated key, or by chance two keys
    /// on one bit) leads on: to comparing the fingerprints of every pair of keys, or of neighbours once
    /// sorted when there are many (sorting finds a candidate pair without comparing every key with
    /// every other). Only keys whose fingerprints match are compared byte for byte.
    fn no_duplicates(&self, hashes: &mut Vec<u64>) -> Result<(), Rejected> {
        const FEW: usize = 16;
        let props = &self.members.properties;
        if props.len() < 2 {
            return Ok(());
        }
        if props.len() <= 2 * FEW {
            let mut seen = [0u64; 16];
            let mut repeated = false;
            for prop in props {
                let bit = key_hash(&prop.key).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54;
                let (word, mask) = ((bit >> 6) as usize, 1 << (bit & 63));
                repeated |= seen[word] & mask != 0;
                seen[word] |= mask;
            }
            if !repeated {
                return Ok(());
            }
        }
        hashes.clear();
        hashes.extend(props.iter().map(|p| key_hash(&p.key)));
        if props.len() <= FEW {
            let distinct = hashes
                .iter()
                .enumerate()
                .all(|(i, a)| hashes[i + 1..].iter().all(|b| a != b));
            if distinct {
                return Ok(());
            }
        } else {
            hashes.sort_unstable();
            if hashes.windows(2).all(|w| w[0] != w[1]) {
                return Ok(());
            }
        }
        for (i, a) in props.iter().enumerate() {
            if let Some(b) = props[i + 1..].iter().find(|b| b.key == a.key) {
                let field = property_field(&b.key);
                let message = format!("{field} appears more than once");
                return Err(self.reject(EventErrorKind::DuplicateProperty, &field, message));
            }
        }
        Ok(())
    }
}

/// A bound on the bytes of the normalised JSON of an event whose JSON object took `span` bytes: when
/// it is within the limit, the JSON need not be measured. The normalised JSON copies each byte of
/// the event at most twice (a property's key in `mp_keys`, its value as a top-level field), writes at
/// most a separator per byte, and adds fixed text, numbers and (with `ip=1`) the caller's address
/// escaped, at most four times.
fn most_json_bytes(span: usize, peer_ip: Option<&str>) -> usize {
    let address = peer_ip.map_or(0, str::len);
    span.saturating_mul(3)
        .saturating_add(1024)
        .saturating_add(address.saturating_mul(24))
}

/// A valid event as the gateway stores it: the fields the rules settled, and its properties as sent but
/// for the ones the gateway sets (`time`, and `distinct_id` and `ip` with `ip=1`). The gateway writes
/// it as JSON (`write_json`, in `json` once written); the Python binding makes objects of it.
#[derive(Debug)]
pub struct Normalised<'n> {
    pub name: StrToken<'n>,
    pub token: StrToken<'n>,
    /// Seconds since 1970.
    pub time: f64,
    pub distinct_id: DistinctId<'n>,
    pub insert_id: Option<StrToken<'n>>,
    pub ip: IpValue<'n>,
    /// Name, step and goal of an `mp_funnel` event.
    pub funnel: Option<(StrToken<'n>, u32, StrToken<'n>)>,
    members: &'n Members<'n>,
    /// The arrays and objects among the properties' values, minified (see `Sent::Container`).
    values: &'n [u8],
    /// The normalised JSON, when the sink keeps it (`Sink::KEEPS_JSON`).
    pub json: &'n [u8],
}

/// One property of a normalised event. Its value refers to the scanned token rather than copying
/// it: copies of these small enums, read back whole after their tags were written byte by byte,
/// stall the CPU (failed store-to-load forwards).
#[derive(Debug, Clone, Copy)]
pub struct Entry<'n> {
    /// The key as sent: a JSON string token, quotes included.
    pub key_raw: &'n [u8],
    /// The key's text, unescaped.
    pub key: &'n [u8],
    pub value: Value<'n>,
}

/// A property's value in a normalised event.
#[derive(Debug, Clone, Copy)]
pub enum Value<'n> {
    /// A string, number, boolean or null as sent.
    Scalar(&'n Scalar<'n>),
    /// An array or object as sent, minified.
    Json(&'n [u8]),
    /// The event's time, in seconds.
    Time(f64),
    DistinctId(&'n DistinctId<'n>),
    Ip(&'n IpValue<'n>),
}

impl Value<'_> {
    fn write(&self, out: &mut impl Out) {
        match self {
            Self::Scalar(scalar) => out.put(scalar.raw()),
            Self::Json(json) => out.put(json),
            Self::Time(time) => write_number(out, *time),
            Self::DistinctId(id) => id.write(out),
            Self::Ip(ip) => ip.write(out),
        }
    }
}

impl<'n> Normalised<'n> {
    /// Calls `f` with each property in the order they are stored: as sent, then `time`,
    /// `distinct_id` and `ip` when the gateway sets them and they were not sent.
    pub fn try_for_each_property<'s, E>(
        &'s self,
        mut f: impl FnMut(Entry<'s>) -> Result<(), E>,
    ) -> Result<(), E> {
        for prop in &self.members.properties {
            f(Entry {
                key_raw: prop.key_raw,
                key: &prop.key,
                value: match prop.slot {
                    Some(Slot::Time) => Value::Time(self.time),
                    Some(Slot::DistinctId) => Value::DistinctId(&self.distinct_id),
                    Some(Slot::Ip) if matches!(self.ip, IpValue::Peer(_)) => Value::Ip(&self.ip),
                    _ => match &prop.value {
                        Sent::Scalar(scalar) => Value::Scalar(scalar),
                        Sent::Container(range) => Value::Json(&self.values[range.clone()]),
                    },
                },
            })?;
        }
        let mut added = |slot, key_raw: &'static [u8], value| {
            if self.members.get(slot).is_some() {
                return Ok(());
            }
            let key = &key_raw[1..key_raw.len() - 1];
            f(Entry {
                key_raw,
                key,
                value,
            })
        };
        added(Slot::Time, b"\"time\"", Value::Time(self.time))?;
        if let DistinctId::Peer(_) = self.distinct_id {
            added(
                Slot::DistinctId,
                b"\"distinct_id\"",
                Value::DistinctId(&self.distinct_id),
            )?;
        }
        if let IpValue::Peer(_) = self.ip {
            added(Slot::Ip, b"\"ip\"", Value::Ip(&self.ip))?;
        }
        Ok(())
    }

    /// How many properties `try_for_each_property` gives.
    pub fn property_count(&self) -> usize {
        let added = |slot, set: bool| usize::from(set && self.members.get(slot).is_none());
        self.members.properties.len()
            + added(Slot::Time, true)
            + added(
                Slot::DistinctId,
                matches!(self.distinct_id, DistinctId::Peer(_)),
            )
            + added(Slot::Ip, matches!(self.ip, IpValue::Peer(_)))
    }

    /// The properties whose key starts with `mp_` (Mixpanel's own), in order: the keys as sent, and
    /// unescaped.
    pub fn mp_keys(&self) -> impl Iterator<Item = (&'n [u8], &'n [u8])> + '_ {
        self.members
            .properties
            .iter()
            .filter(|prop| prop.key.starts_with(b"mp_"))
            .map(|prop| (prop.key_raw, &*prop.key))
    }

    /// Whether the event sent `properties.time` (else it was given the receive time).
    pub fn time_sent(&self) -> bool {
        self.members.get(Slot::Time).is_some()
    }

    /// What the gateway's batches need of the event.
    pub fn valid(&self) -> Valid<'n> {
        Valid {
            token: self.token.text(),
            name: self.name.text(),
            distinct_id: self.distinct_id.text(),
            insert_id: self.insert_id.map(|s| s.text()),
            time: self.time,
            funnel: self
                .funnel
                .map(|(name, step, goal)| (name.text(), step, goal.text())),
        }
    }

    /// The normalised JSON: the top-level fields in the README's order, then the properties.
    fn write_json(&self, out: &mut impl Out, received: &[u8]) {
        let (mut ints, mut floats) = (itoa::Buffer::new(), ryu::Buffer::new());
        let time = number_text(self.time, &mut ints, &mut floats);
        out.put(b"{\"event\":");
        out.put(self.name.raw);
        out.put(b",\"time\":");
        out.put(time);
        out.put(b",\"received\":");
        out.put(received);
        out.put(b",\"token\":");
        out.put(self.token.raw);
        if !matches!(self.distinct_id, DistinctId::None) {
            out.put(b",\"distinct_id\":");
            self.distinct_id.write(out);
        }
        if let Some(id) = self.insert_id {
            out.put(b",\"insert_id\":");
            out.put(id.raw);
        }
        if !matches!(self.ip, IpValue::None) {
            out.put(b",\"ip\":");
            self.ip.write(out);
        }
        if let Some((name, step, goal)) = self.funnel {
            out.put(b",\"funnel\":{\"name\":");
            out.put(name.raw);
            out.put(b",\"step\":");
            out.put(itoa::Buffer::new().format(step).as_bytes());
            out.put(b",\"goal\":");
            out.put(goal.raw);
            out.put_byte(b'}');
        }
        let mut mp_keys = self.mp_keys().map(|(raw, _)| raw).peekable();
        if mp_keys.peek().is_some() {
            out.put(b",\"mp_keys\":[");
            for (i, key) in mp_keys.enumerate() {
                if i > 0 {
                    out.put_byte(b',');
                }
                out.put(key);
            }
            out.put_byte(b']');
        }
        out.put(b",\"properties\":{");
        let mut first = true;
        let written: Result<(), Infallible> = self.try_for_each_property(|entry| {
            if !first {
                out.put_byte(b',');
            }
            first = false;
            out.put(entry.key_raw);
            out.put_byte(b':');
            match entry.value {
                Value::Time(_) => out.put(time),
                value => value.write(out),
            }
            Ok(())
        });
        let Ok(()) = written;
        out.put(b"}}");
    }
}

/// The distinct_id of a normalised event.
#[derive(Debug, Clone, Copy)]
pub enum DistinctId<'a> {
    None,
    String(StrToken<'a>),
    /// Stored as a string: its JSON number text, quoted.
    Number(&'a [u8]),
    /// The caller's address, with `ip=1`.
    Peer(&'a str),
}

impl<'a> DistinctId<'a> {
    fn write(&self, out: &mut impl Out) {
        match self {
            Self::None => out.put(b"null"),
            Self::String(s) => out.put(s.raw),
            Self::Number(n) => {
                out.put_byte(b'"');
                out.put(n);
                out.put_byte(b'"');
            }
            Self::Peer(ip) => write_str(out, ip),
        }
    }

    /// Its text, as stored.
    pub fn text(&self) -> Option<Cow<'a, str>> {
        self.bytes().map(utf8)
    }

    /// Its text as UTF-8 bytes, as stored.
    pub fn bytes(&self) -> Option<Cow<'a, [u8]>> {
        match *self {
            Self::None => None,
            Self::String(s) => Some(s.bytes()),
            Self::Number(n) => Some(Cow::Borrowed(n)),
            Self::Peer(ip) => Some(Cow::Borrowed(ip.as_bytes())),
        }
    }
}

/// The ip of a normalised event: as sent, or the caller's address with `ip=1`.
#[derive(Debug, Clone, Copy)]
pub enum IpValue<'a> {
    None,
    Sent(StrToken<'a>),
    Peer(&'a str),
}

impl<'a> IpValue<'a> {
    /// Its text as UTF-8 bytes, as stored.
    pub fn bytes(&self) -> Option<Cow<'a, [u8]>> {
        match *self {
            Self::None => None,
            Self::Sent(s) => Some(s.bytes()),
            Self::Peer(ip) => Some(Cow::Borrowed(ip.as_bytes())),
        }
    }

    fn write(&self, out: &mut impl Out) {
        match self {
            Self::None => out.put(b"null"),
            Self::Sent(s) => out.put(s.raw),
            Self::Peer(ip) => write_str(out, ip),
        }
    }
}

/// At most MAX_INSERT_ID_CHARS characters of `A-Za-z0-9-`, as Mixpanel takes an `$insert_id`.
fn valid_insert_id(text: &[u8]) -> bool {
    // Every byte looked up, without a branch per byte: ids are short, and their bytes mix classes.
    static ALLOWED: [bool; 256] = {
        let mut table = [false; 256];
        let mut b = 0;
        while b < 256 {
            table[b] = (b as u8).is_ascii_alphanumeric() || b == b'-' as usize;
            b += 1;
        }
        table
    };
    text.len() <= MAX_INSERT_ID_CHARS && text.iter().fold(true, |ok, &b| ok & ALLOWED[b as usize])
}

/// A cheap fingerprint of a key (length, first and last eight bytes): equal keys always match, and
/// the rare different keys that match are told apart byte for byte.
fn key_hash(key: &[u8]) -> u64 {
    let (head, tail) = ends(key);
    head ^ tail.rotate_left(29) ^ ((key.len() as u64) << 56)
}

/// Key names longer than this are cut in error fields: the answer repeats the field, and a key can be
/// as long as the event (1 MB by default), so a small gzipped request could draw a large answer.
pub(crate) const MAX_FIELD_KEY_CHARS: usize = 100;

/// `properties.<key>` for an error, the key cut to MAX_FIELD_KEY_CHARS characters (ending in "...").
#[cold]
fn property_field(key: &[u8]) -> String {
    let key = String::from_utf8_lossy(key);
    match key.char_indices().nth(MAX_FIELD_KEY_CHARS) {
        Some((cut, _)) => format!("properties.{}...", &key[..cut]),
        None => format!("properties.{key}"),
    }
}

/// An integer of at least 1, as a JSON number (2, 2.0) or as a string of digits ("2").
fn parse_step(scalar: Scalar<'_>) -> Option<u32> {
    let value = match scalar {
        Scalar::Number(n) => parse_f64(n),
        Scalar::String(s) => {
            let text = s.text();
            if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            text.parse::<f64>().ok()?
        }
        _ => return None,
    };
    (value.fract() == 0.0 && (1.0..=f64::from(MAX_FUNNEL_STEP)).contains(&value))
        .then_some(value as u32)
}

/// A validated JSON number token as f64 (Rust's parser is correctly rounded).
pub(crate) fn parse_f64(raw: &[u8]) -> f64 {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Whole numbers without a fraction, others in their shortest round-trip form.
pub fn write_number(out: &mut impl Out, value: f64) {
    out.put(number_text(
        value,
        &mut itoa::Buffer::new(),
        &mut ryu::Buffer::new(),
    ));
}

/// A number as `write_number` writes it, in one of the two buffers.
fn number_text<'b>(
    value: f64,
    ints: &'b mut itoa::Buffer,
    floats: &'b mut ryu::Buffer,
) -> &'b [u8] {
    if value.fract() == 0.0 && value.abs() < 9_007_199_254_740_992.0 {
        ints.format(value as i64).as_bytes()
    } else {
        floats.format_finite(value).as_bytes()
    }
}

/// Text of the payload, which was checked as UTF-8.
fn utf8(bytes: Cow<'_, [u8]>) -> Cow<'_, str> {
    const CHECKED: &str = "the payload was checked as UTF-8";
    match bytes {
        Cow::Borrowed(bytes) => Cow::Borrowed(std::str::from_utf8(bytes).expect(CHECKED)),
        Cow::Owned(bytes) => Cow::Owned(String::from_utf8(bytes).expect(CHECKED)),
    }
}

/// The characters of a string token's text when they are more than `max`. They are counted only
/// when its bytes are more: no text has more characters than bytes, and an escape is longer than the
/// character it stands for.
fn chars_over(token: StrToken<'_>, max: usize) -> Option<usize> {
    if token.raw.len() - 2 <= max {
        return None;
    }
    Some(char_count(&token.bytes())).filter(|&chars| chars > max)
}

/// The characters of UTF-8 text: its bytes but for continuation bytes.
pub(crate) fn char_count(text: &[u8]) -> usize {
    text.iter().filter(|&&b| b & 0xC0 != 0x80).count()
}

fn human_duration(seconds: f64) -> String {
    // Two whole units, "3 hours 1 minute", rather than a fraction of one.
    let s = seconds.max(0.0).round() as u64;
    let (major, minor) = match s {
        0 if seconds > 0.0 => return "less than a second".to_owned(),
        0..=119 => return units(s, "second"),
        120..=7199 => ((s / 60, "minute"), (s % 60, "second")),
        7200..=172_799 => ((s / 3600, "hour"), (s % 3600 / 60, "minute")),
        _ => ((s / 86400, "day"), (s % 86400 / 3600, "hour")),
    };
    if minor.0 == 0 {
        units(major.0, major.1)
    } else {
        format!("{} {}", units(major.0, major.1), units(minor.0, minor.1))
    }
}

fn units(n: u64, unit: &str) -> String {
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Options;

    /// Keeps the size of the last event's normalised JSON.
    struct Size(usize);

    impl Sink for Size {
        fn event(&mut self, event: &Normalised<'_>) {
            self.0 = event.json.len();
        }

        fn error(&mut self, error: EventError) {
            panic!("a valid event: {error:?}");
        }
    }

    /// The normalised JSON of `event` (with `ip=1` from `peer`) against the bound on its size.
    fn assert_within_bound(event: &str, peer: &str) {
        // Any time is recent enough: `"time":1` is the shortest one to replace.
        let options = Options {
            max_age: 1e18,
            ..Options::default()
        };
        let ctx = Context {
            options: &options,
            now: 1_700_000_000.123_456_7,
            peer_ip: Some(peer),
            tokens: None,
        };
        let mut scanner = Scanner::new(event.as_bytes());
        let mut size = Size(0);
        decode_event(
            &mut scanner,
            0,
            &ctx,
            true,
            None,
            &mut Scratch::default(),
            &mut size,
        )
        .unwrap();
        let bound = most_json_bytes(event.len(), Some(peer));
        assert!(size.0 <= bound, "{event}: {} > {bound}", size.0);
    }

    #[test]
    fn the_size_bound_holds_where_the_json_grows_most() {
        let many_tiny = (0..200)
            .map(|i| format!("\"mp_{i}\":0"))
            .collect::<Vec<_>>()
            .join(",");
        let peer = "\"\u{1}\\\u{1f}\"";
        for properties in [
            String::new(),
            format!("{many_tiny},"),
            "\"distinct_id\":0,\"ip\":\"\",\"time\":1,\"$insert_id\":\"a\",".to_owned(),
            "\"distinct_id\":\"\",\"funnel\":\"f\",\"step\":1,\"goal\":\"\",".to_owned(),
        ] {
            let name = if properties.contains("funnel") {
                "mp_funnel"
            } else {
                "e"
            };
            let event =
                format!("{{\"event\":\"{name}\",\"properties\":{{{properties}\"token\":\"t\"}}}}");
            assert_within_bound(&event, peer);
            assert_within_bound(&event, "203.0.113.7");
        }
    }
}
