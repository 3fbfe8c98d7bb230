//! One event: its members scanned once, the rules applied in a fixed order, the normalised JSON written.

use std::borrow::Cow;
use std::ops::Range;

use crate::errors::{EventError, EventErrorKind};
use crate::json::{
    fits_double, write_str, JsonType, Scalar, Scanner, Shape, StrToken, SyntaxError,
};
use crate::{Context, Options};

/// Seconds values from this one on are taken as milliseconds (1e11 s is the year 5138).
const MILLISECONDS_FROM: f64 = 1e11;
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
    /// The minified value, in `Scratch::values`.
    value: Range<usize>,
    slot: Option<Slot>,
}

/// Buffers reused from event to event, so a batch allocates them once.
#[derive(Debug)]
pub struct Scratch<'a> {
    members: Members<'a>,
    values: Vec<u8>,
    key_hashes: Vec<u64>,
    /// The receive time, formatted once per request.
    received: Vec<u8>,
    /// The normalised JSON of the last valid event.
    pub json: Vec<u8>,
}

impl Scratch<'_> {
    pub fn new(now: f64) -> Self {
        let mut received = Vec::new();
        write_number(&mut received, now);
        Self {
            members: Members::default(),
            values: Vec::new(),
            key_hashes: Vec::new(),
            received,
            json: Vec::new(),
        }
    }
}

/// What the rest of the pipeline needs of a valid event besides its JSON (in `Scratch::json`).
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

/// Scans the event object at the cursor. `Ok(Err(..))` is a rejected event; `Err(..)` means the JSON
/// itself is broken and the whole request is unusable.
pub fn decode_event<'a>(
    scanner: &mut Scanner<'a>,
    index: usize,
    ctx: &Context<'_>,
    use_ip: bool,
    scratch: &mut Scratch<'a>,
) -> Result<Result<Valid<'a>, EventError>, SyntaxError> {
    scan_members(scanner, ctx.options, scratch)?;
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
        members,
        values,
        received,
    };
    Ok(normaliser.run(json, key_hashes))
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
        let start = scratch.values.len();
        let scalar = scanner.scalar()?;
        let ty = match scalar {
            Scalar::String(s) => {
                scratch.values.extend_from_slice(s.raw);
                JsonType::String
            }
            Scalar::Number(n) => {
                if members.violation.is_none() && !fits_double(n) {
                    let at = members.properties.len();
                    members.violation = Some((EventErrorKind::NumberOutOfRange, 0, at));
                }
                scratch.values.extend_from_slice(n);
                JsonType::Number
            }
            Scalar::Other(raw, ty) => {
                scratch.values.extend_from_slice(raw);
                ty
            }
            Scalar::Container(_) => {
                let ty = scanner.value(&mut scratch.values, &mut shape, 0)?;
                if let (None, Some((kind, value))) = (members.violation, shape.violation) {
                    members.violation = Some((kind, value, members.properties.len()));
                }
                ty
            }
        };
        if let Some(slot) = slot {
            let scalar = (!matches!(scalar, Scalar::Container(_))).then_some(scalar);
            members.reserved[slot as usize] = Some(Reserved { scalar, ty });
        }
        members.properties.push(Property {
            key_raw: key_token.raw,
            key,
            value: start..scratch.values.len(),
            slot,
        });
        if !scanner.next_member(b'}')? {
            return Ok(());
        }
    }
}

struct Normaliser<'c, 'a, 'm> {
    index: usize,
    ctx: &'c Context<'c>,
    use_ip: bool,
    members: &'m Members<'a>,
    values: &'m [u8],
    received: &'m [u8],
}

impl<'a> Normaliser<'_, 'a, '_> {
    #[cold]
    fn reject(&self, kind: EventErrorKind, field: &str, message: String) -> EventError {
        EventError::new(self.index, kind, field, message)
    }

    /// The rules, in the order their errors are reported: the first broken one names the event's error.
    fn run(&self, json: &mut Vec<u8>, key_hashes: &mut Vec<u64>) -> Result<Valid<'a>, EventError> {
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
        let funnel = if name.text() == "mp_funnel" {
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
        let distinct_id = match (&sent_distinct_id, peer_ip) {
            (Some(DistinctId::String(s)), Some(ip)) if s.raw.len() == 2 => DistinctId::Peer(ip),
            (Some(d), _) => *d,
            (None, Some(ip)) => DistinctId::Peer(ip),
            (None, None) => DistinctId::None,
        };
        let ip = match peer_ip {
            Some(ip) => IpValue::Peer(ip),
            None => sent_ip.map_or(IpValue::None, IpValue::Sent),
        };
        let funnel_json = funnel
            .as_ref()
            .map(|(name, step, goal)| (name.raw, *step, goal.raw));
        self.write(
            json,
            &name,
            &token,
            time,
            distinct_id,
            insert_id,
            ip,
            funnel_json,
        );
        if json.len() > options.max_event_bytes {
            return Err(self.reject(
                K::EventTooLarge,
                "",
                format!(
                    "the event is {} bytes; at most {} are allowed",
                    json.len(),
                    options.max_event_bytes
                ),
            ));
        }
        Ok(Valid {
            token: token.text(),
            name: name.text(),
            distinct_id: match distinct_id {
                DistinctId::Peer(ip) => Some(Cow::Owned(ip.to_owned())),
                _ => sent_distinct_id.and_then(|d| d.text()),
            },
            insert_id: insert_id.map(|s| s.text()),
            time,
            funnel: funnel.map(|(name, step, goal)| (name.text(), step, goal.text())),
        })
    }

    fn event_name(&self) -> Result<StrToken<'a>, EventError> {
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
        let chars = name.text().chars().count();
        if chars == 0 {
            return Err(self.reject(
                K::EventInvalid,
                "event",
                "the event name must not be empty".into(),
            ));
        }
        let max = self.ctx.options.max_event_name_chars;
        if chars > max {
            return Err(self.reject(
                K::EventTooLong,
                "event",
                format!("the event name is {chars} characters long; at most {max} are allowed"),
            ));
        }
        Ok(name)
    }

    fn token(&self) -> Result<StrToken<'a>, EventError> {
        use EventErrorKind as K;
        const FIELD: &str = "properties.token";
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

    fn time(&self) -> Result<f64, EventError> {
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

    fn distinct_id(&self) -> Result<Option<DistinctId<'a>>, EventError> {
        use EventErrorKind as K;
        const FIELD: &str = "properties.distinct_id";
        let Some(reserved) = self.members.get(Slot::DistinctId) else {
            return Ok(None);
        };
        let (value, chars) = match reserved.scalar {
            Some(Scalar::String(s)) => (DistinctId::String(s), s.text().chars().count()),
            Some(Scalar::Number(n)) => (DistinctId::Number(n), n.len()),
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
        let max = self.ctx.options.max_distinct_id_chars;
        if chars > max {
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

    fn insert_id(&self) -> Result<Option<StrToken<'a>>, EventError> {
        let Some(reserved) = self.members.get(Slot::InsertId) else {
            return Ok(None);
        };
        if let Some(s) = reserved.string() {
            let text = s.text();
            if text.len() <= MAX_INSERT_ID_CHARS
                && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
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

    fn funnel(&self) -> Result<(StrToken<'a>, u32, StrToken<'a>), EventError> {
        use EventErrorKind as K;
        let m = self.members;
        // Names of Redis keys and hash fields: held to the length of an event name.
        let max = self.ctx.options.max_event_name_chars;
        let fits = |s: &StrToken<'_>| s.raw.len() - 2 <= max || s.text().chars().count() <= max;
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
    fn shape_error(&self, kind: EventErrorKind, value: usize, key: &[u8]) -> EventError {
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

    /// Sorting hashes finds a candidate pair without comparing every key with every other; only keys
    /// whose hashes collide are compared byte for byte.
    fn no_duplicates(&self, hashes: &mut Vec<u64>) -> Result<(), EventError> {
        let props = &self.members.properties;
        if props.len() < 2 {
            return Ok(());
        }
        hashes.clear();
        hashes.extend(props.iter().map(|p| key_hash(&p.key)));
        hashes.sort_unstable();
        if hashes.windows(2).all(|w| w[0] != w[1]) {
            return Ok(());
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

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        out: &mut Vec<u8>,
        name: &StrToken<'_>,
        token: &StrToken<'_>,
        time: f64,
        distinct_id: DistinctId<'_>,
        insert_id: Option<StrToken<'_>>,
        ip: IpValue<'_>,
        funnel: Option<(&[u8], u32, &[u8])>,
    ) {
        out.clear();
        out.extend_from_slice(b"{\"event\":");
        out.extend_from_slice(name.raw);
        out.extend_from_slice(b",\"time\":");
        write_number(out, time);
        out.extend_from_slice(b",\"received\":");
        out.extend_from_slice(self.received);
        out.extend_from_slice(b",\"token\":");
        out.extend_from_slice(token.raw);
        if !matches!(distinct_id, DistinctId::None) {
            out.extend_from_slice(b",\"distinct_id\":");
            distinct_id.write(out);
        }
        if let Some(id) = insert_id {
            out.extend_from_slice(b",\"insert_id\":");
            out.extend_from_slice(id.raw);
        }
        if !matches!(ip, IpValue::None) {
            out.extend_from_slice(b",\"ip\":");
            ip.write(out);
        }
        if let Some((name, step, goal)) = funnel {
            out.extend_from_slice(b",\"funnel\":{\"name\":");
            out.extend_from_slice(name);
            out.extend_from_slice(b",\"step\":");
            out.extend_from_slice(itoa::Buffer::new().format(step).as_bytes());
            out.extend_from_slice(b",\"goal\":");
            out.extend_from_slice(goal);
            out.push(b'}');
        }
        let props = &self.members.properties;
        let mut first_mp = true;
        for prop in props.iter().filter(|p| p.key.starts_with(b"mp_")) {
            out.extend_from_slice(if first_mp { b",\"mp_keys\":[" } else { b"," });
            out.extend_from_slice(prop.key_raw);
            first_mp = false;
        }
        if !first_mp {
            out.push(b']');
        }
        out.extend_from_slice(b",\"properties\":{");
        let (mut has_time, mut has_distinct_id, mut has_ip) = (false, false, false);
        for (i, prop) in props.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(prop.key_raw);
            out.push(b':');
            match prop.slot {
                Some(Slot::Time) => {
                    has_time = true;
                    write_number(out, time);
                }
                Some(Slot::DistinctId) => {
                    has_distinct_id = true;
                    distinct_id.write(out);
                }
                Some(Slot::Ip) if matches!(ip, IpValue::Peer(_)) => {
                    has_ip = true;
                    ip.write(out);
                }
                _ => out.extend_from_slice(&self.values[prop.value.clone()]),
            }
        }
        let mut sep = !props.is_empty();
        let mut append = |out: &mut Vec<u8>, key: &[u8]| {
            if sep {
                out.push(b',');
            }
            sep = true;
            out.extend_from_slice(key);
        };
        if !has_time {
            append(out, b"\"time\":");
            write_number(out, time);
        }
        if !has_distinct_id && matches!(distinct_id, DistinctId::Peer(_)) {
            append(out, b"\"distinct_id\":");
            distinct_id.write(out);
        }
        if !has_ip && matches!(ip, IpValue::Peer(_)) {
            append(out, b"\"ip\":");
            ip.write(out);
        }
        out.extend_from_slice(b"}}");
    }
}

#[derive(Debug, Clone, Copy)]
enum DistinctId<'a> {
    None,
    String(StrToken<'a>),
    /// Stored as a string: its JSON number text, quoted.
    Number(&'a [u8]),
    Peer(&'a str),
}

impl<'a> DistinctId<'a> {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Self::None => out.extend_from_slice(b"null"),
            Self::String(s) => out.extend_from_slice(s.raw),
            Self::Number(n) => {
                out.push(b'"');
                out.extend_from_slice(n);
                out.push(b'"');
            }
            Self::Peer(ip) => write_str(out, ip),
        }
    }

    /// The text of a distinct_id that was sent (`Peer` values are owned by the caller).
    fn text(&self) -> Option<Cow<'a, str>> {
        match *self {
            Self::None | Self::Peer(_) => None,
            Self::String(s) => Some(s.text()),
            Self::Number(n) => Some(Cow::Borrowed(
                std::str::from_utf8(n).expect("number tokens are ASCII"),
            )),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum IpValue<'a> {
    None,
    Sent(StrToken<'a>),
    Peer(&'a str),
}

impl IpValue<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Self::None => out.extend_from_slice(b"null"),
            Self::Sent(s) => out.extend_from_slice(s.raw),
            Self::Peer(ip) => write_str(out, ip),
        }
    }
}

/// A cheap fingerprint of a key (length, first and last eight bytes): equal keys always match, and
/// the rare different keys that match are told apart byte for byte.
fn key_hash(key: &[u8]) -> u64 {
    let load = |bytes: &[u8]| {
        let mut word = [0u8; 8];
        word[..bytes.len()].copy_from_slice(bytes);
        u64::from_le_bytes(word)
    };
    let n = key.len();
    let head = load(&key[..n.min(8)]);
    let tail = if n > 8 { load(&key[n - 8..]) } else { 0 };
    head ^ tail.rotate_left(29) ^ ((n as u64) << 56)
}

/// Key names longer than this are cut in error fields: the answer repeats the field, and a key can be
/// as long as the event (1 MB by default), so a small gzipped request could draw a large answer.
const MAX_FIELD_KEY_CHARS: usize = 100;

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
fn parse_f64(raw: &[u8]) -> f64 {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Whole numbers without a fraction, others in their shortest round-trip form.
pub fn write_number(out: &mut Vec<u8>, value: f64) {
    if value.fract() == 0.0 && value.abs() < 9_007_199_254_740_992.0 {
        out.extend_from_slice(itoa::Buffer::new().format(value as i64).as_bytes());
    } else {
        out.extend_from_slice(ryu::Buffer::new().format_finite(value).as_bytes());
    }
}

fn human_duration(seconds: f64) -> String {
    // Two units: "3 hours 1 minute", where one decimal said "3.0 hours".
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
