//! Profile updates, what `/engage` (people) and `/groups` receive: each update object scanned once, its
//! rules applied in a fixed order, its normalised JSON written for the partition's stream of updates and
//! its arguments packed for the function that applies it (PACKED_LAYOUT in resp.rs).
//!
//! An update is `$token`, the profile (`$distinct_id`, or `$group_key` and `$group_id`), exactly one
//! operation, and optionally `$time`, `$ip`, `$ignore_time` and `$ignore_alias`; other members (the
//! browser adds `$device_id` and `$user_id`) are ignored. An operation's value is held to the limits of
//! event properties: its keys as properties, their values as property values.

use std::borrow::Cow;
use std::ops::Range;

use crate::errors::{EventError, EventErrorKind as K, RequestError};
use crate::event::{char_count, parse_f64, write_number, MAX_FIELD_KEY_CHARS, MILLISECONDS_FROM};
use crate::json::{write_str, JsonType, Out, Scalar, Scanner, Shape, StrToken};
use crate::payload::{decode_text, each_item, Events};
use crate::resp::{bulk, partition_of, utc_date};
use crate::Context;

/// Whose profiles a request updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `/engage`: people, by `$distinct_id`.
    People,
    /// `/groups`: groups, by `$group_key` and `$group_id`.
    Groups,
}

/// What an update does to its profile (the function library applies it; README, "Profiles").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Set,
    SetOnce,
    Add,
    Append,
    Union,
    Remove,
    Unset,
    Delete,
}

/// What an operation's value must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expects {
    /// An object of properties, their values anything.
    Properties,
    /// An object of properties, their values numbers.
    Numbers,
    /// An object of properties, their values arrays.
    Lists,
    /// An array of property names.
    Names,
    /// Anything: the value is ignored.
    Nothing,
}

impl Operation {
    pub const ALL: [Self; 8] = [
        Self::Set,
        Self::SetOnce,
        Self::Add,
        Self::Append,
        Self::Union,
        Self::Remove,
        Self::Unset,
        Self::Delete,
    ];

    /// Its key in an update, and its name in the function's arguments.
    pub fn name(self) -> &'static str {
        match self {
            Self::Set => "$set",
            Self::SetOnce => "$set_once",
            Self::Add => "$add",
            Self::Append => "$append",
            Self::Union => "$union",
            Self::Remove => "$remove",
            Self::Unset => "$unset",
            Self::Delete => "$delete",
        }
    }

    fn of(key: &[u8]) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.name().as_bytes() == key)
    }

    fn expects(self) -> Expects {
        match self {
            Self::Set | Self::SetOnce | Self::Append | Self::Remove => Expects::Properties,
            Self::Add => Expects::Numbers,
            Self::Union => Expects::Lists,
            Self::Unset => Expects::Names,
            Self::Delete => Expects::Nothing,
        }
    }

    /// Group profiles have no `$append` (Mixpanel's groups API lists every other operation).
    pub fn applies_to(self, target: Target) -> bool {
        !(self == Self::Append && target == Target::Groups)
    }
}

/// The update's own members, by their key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Token,
    DistinctId,
    GroupKey,
    GroupId,
    Time,
    Ip,
    IgnoreTime,
    IgnoreAlias,
}

impl Slot {
    const ALL: [Self; 8] = [
        Self::Token,
        Self::DistinctId,
        Self::GroupKey,
        Self::GroupId,
        Self::Time,
        Self::Ip,
        Self::IgnoreTime,
        Self::IgnoreAlias,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Token => "$token",
            Self::DistinctId => "$distinct_id",
            Self::GroupKey => "$group_key",
            Self::GroupId => "$group_id",
            Self::Time => "$time",
            Self::Ip => "$ip",
            Self::IgnoreTime => "$ignore_time",
            Self::IgnoreAlias => "$ignore_alias",
        }
    }

    fn of(key: &[u8]) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|slot| slot.name().as_bytes() == key)
    }
}

/// A member as sent: its token when a scalar, its type either way.
#[derive(Debug, Clone, Copy)]
struct Sent<'a> {
    scalar: Option<Scalar<'a>>,
    ty: JsonType,
}

/// One property of an operation's object, or one name of `$unset`.
#[derive(Debug)]
struct Member<'a> {
    /// The key (or the name) as sent: a JSON string token, quotes included.
    raw: &'a [u8],
    /// Its text, unescaped.
    key: Cow<'a, [u8]>,
    /// Its value's JSON in `Scratch::values`, minified and with its strings escaped one way (see
    /// `canonical`); empty for a name of `$unset`.
    value: Range<usize>,
    ty: JsonType,
}

/// Buffers reused from update to update, so a batch allocates them once.
#[derive(Debug, Default)]
pub struct Scratch<'a> {
    sent: [Option<Sent<'a>>; 8],
    /// A member of the update's own sent twice: the first such.
    repeated: Option<Slot>,
    /// The operations, in the order sent; the first one's value is read.
    operations: Vec<Operation>,
    /// The type of the first operation's value.
    value_type: Option<JsonType>,
    members: Vec<Member<'a>>,
    /// Elements of `$unset` (members or not) and the first that is not a name: its index and type.
    elements: usize,
    not_a_name: Option<(usize, JsonType)>,
    /// The first limit broken inside a member's value, with the number that broke it, and the member.
    violation: Option<(K, usize, usize)>,
    values: Vec<u8>,
    received: Vec<u8>,
    json: Vec<u8>,
}

impl<'a> Scratch<'a> {
    fn get(&self, slot: Slot) -> Option<Sent<'a>> {
        self.sent[slot as usize]
    }

    fn clear(&mut self) {
        self.sent = [None; 8];
        self.repeated = None;
        self.operations.clear();
        self.value_type = None;
        self.members.clear();
        self.elements = 0;
        self.not_a_name = None;
        self.violation = None;
        self.values.clear();
    }
}

/// The profile updates of a JSON payload (one object, or an array of them).
pub fn decode_updates(
    json: &[u8],
    ctx: &Context<'_>,
    use_ip: bool,
    target: Target,
) -> Result<Events, RequestError> {
    decode_text(json, |text| {
        let mut sink = Events::new(ctx.options);
        let mut scanner = Scanner::new(text);
        let mut scratch = Scratch::default();
        each_item(&mut scanner, ctx.options.max_events, |scanner, index| {
            sink.total += 1;
            if scanner.peek() == Some(b'{') {
                scan(scanner, ctx, &mut scratch)?;
                let update = Update {
                    index,
                    ctx,
                    use_ip,
                    target,
                };
                match update.check(&scratch) {
                    Ok(valid) => update.store(&valid, &mut scratch, &mut sink),
                    Err(error) => sink.errors.push(error),
                }
            } else {
                let ty = scanner.skip()?;
                sink.errors.push(EventError::new(
                    index,
                    K::NotAnObject,
                    "",
                    format!("update {index} must be an object, got {}", ty.name()),
                ));
            }
            Ok(())
        })?;
        Ok(sink)
    })
}

/// Reads the update object at the cursor into `scratch`.
fn scan<'a>(
    scanner: &mut Scanner<'a>,
    ctx: &Context<'_>,
    scratch: &mut Scratch<'a>,
) -> Result<(), RequestError> {
    scratch.clear();
    if scanner.open(b'{', b'}') {
        return Ok(());
    }
    loop {
        let key = scanner.key()?;
        let key = key.bytes();
        if let Some(slot) = Slot::of(&key) {
            let scalar = scanner.scalar()?;
            let ty = scalar.json_type();
            let scalar = if let Scalar::Container(_) = scalar {
                scanner.skip()?;
                None
            } else {
                Some(scalar)
            };
            if scratch.sent[slot as usize].is_some() {
                scratch.repeated.get_or_insert(slot);
            }
            scratch.sent[slot as usize] = Some(Sent { scalar, ty });
        } else if let Some(op) = Operation::of(&key) {
            scratch.operations.push(op);
            if scratch.operations.len() == 1 {
                scan_value(scanner, ctx, op, scratch)?;
            } else {
                scanner.skip()?;
            }
        } else {
            scanner.skip()?;
        }
        if !scanner.next_member(b'}')? {
            return Ok(());
        }
    }
}

/// Reads an operation's value: the members of its object, or the names of `$unset`'s array.
fn scan_value<'a>(
    scanner: &mut Scanner<'a>,
    ctx: &Context<'_>,
    op: Operation,
    scratch: &mut Scratch<'a>,
) -> Result<(), RequestError> {
    let options = ctx.options;
    let opens = match op.expects() {
        Expects::Nothing => None,
        Expects::Names => Some(b'['),
        _ => Some(b'{'),
    };
    let found = scanner.peek();
    let ty = match found {
        Some(b'{') => JsonType::Object,
        Some(b'[') => JsonType::Array,
        _ => {
            scratch.value_type = Some(scanner.scalar()?.json_type());
            return Ok(());
        }
    };
    scratch.value_type = Some(ty);
    if found != opens {
        scanner.skip()?;
        return Ok(());
    }
    if op == Operation::Unset {
        if scanner.open(b'[', b']') {
            return Ok(());
        }
        loop {
            let index = scratch.elements;
            scratch.elements += 1;
            match scanner.scalar()? {
                Scalar::String(name) => scratch.members.push(Member {
                    raw: name.raw,
                    key: name.bytes(),
                    value: 0..0,
                    ty: JsonType::String,
                }),
                other => {
                    if let Scalar::Container(_) = other {
                        scanner.skip()?;
                    }
                    scratch.not_a_name.get_or_insert((index, other.json_type()));
                }
            }
            if !scanner.next_member(b']')? {
                return Ok(());
            }
        }
    }
    if scanner.open(b'{', b'}') {
        return Ok(());
    }
    let mut shape = Shape::new(
        options.max_depth,
        options.max_array_len,
        options.max_properties,
    );
    loop {
        let key = scanner.key()?;
        let start = scratch.values.len();
        let ty = scanner.value(&mut scratch.values, &mut shape, 0)?;
        if let (None, Some((kind, value))) = (scratch.violation, shape.violation) {
            scratch.violation = Some((kind, value, scratch.members.len()));
        }
        canonical(&mut scratch.values, start);
        scratch.members.push(Member {
            raw: key.raw,
            key: key.bytes(),
            value: start..scratch.values.len(),
            ty,
        });
        if !scanner.next_member(b'}')? {
            return Ok(());
        }
    }
}

/// Rewrites the minified JSON value from `start` on with each string that has escapes written as
/// `write_str` writes it (only `"`, `\` and control characters escaped): list elements are compared by
/// their JSON text, so `"\u00e9"` and `"é"` must be the same text. Most values have no backslash and
/// are left as they are.
fn canonical(values: &mut Vec<u8>, start: usize) {
    if memchr::memchr(b'\\', &values[start..]).is_none() {
        return;
    }
    let sent = values.split_off(start);
    let mut i = 0;
    while let Some(quote) = memchr::memchr(b'"', &sent[i..]) {
        values.extend_from_slice(&sent[i..i + quote]);
        let token = Scanner::new(&sent[i + quote..])
            .string()
            .expect("a string the scanner read");
        if token.escapes > 0 {
            write_str(values, &token.text());
        } else {
            values.extend_from_slice(token.raw);
        }
        i += quote + token.raw.len();
    }
    values.extend_from_slice(&sent[i..]);
}

/// The profile an update is for.
#[derive(Debug, Clone, Copy)]
enum Profile<'a> {
    Person(Id<'a>),
    Group(StrToken<'a>, Id<'a>),
}

/// A distinct_id or a group id: a string, or a number stored as its text.
#[derive(Debug, Clone, Copy)]
enum Id<'a> {
    String(StrToken<'a>),
    Number(&'a [u8]),
}

impl<'a> Id<'a> {
    fn text(self) -> Cow<'a, [u8]> {
        match self {
            Self::String(s) => s.bytes(),
            Self::Number(n) => Cow::Borrowed(n),
        }
    }

    fn write(self, out: &mut Vec<u8>) {
        match self {
            Self::String(s) => out.extend_from_slice(s.raw),
            Self::Number(n) => {
                out.push(b'"');
                out.extend_from_slice(n);
                out.push(b'"');
            }
        }
    }
}

/// A valid update's settled fields; its operation's members are in the scratch.
#[derive(Debug)]
struct Valid<'a> {
    token: StrToken<'a>,
    profile: Profile<'a>,
    op: Operation,
    time: f64,
    ip: Option<Cow<'a, [u8]>>,
    ignore_time: bool,
    ignore_alias: bool,
}

/// One update of a request, as its rules see it.
struct Update<'c> {
    index: usize,
    ctx: &'c Context<'c>,
    use_ip: bool,
    target: Target,
}

impl Update<'_> {
    #[cold]
    fn reject(&self, kind: K, field: &str, message: String) -> EventError {
        EventError::new(self.index, kind, field, message)
    }

    /// The rules, in the order their errors are reported: the first broken one names the update's
    /// error. The last, the size of the normalised JSON, is checked once it is written (`store`).
    fn check<'a>(&self, s: &Scratch<'a>) -> Result<Valid<'a>, EventError> {
        if let Some(slot) = s.repeated {
            let name = slot.name();
            return Err(self.reject(
                K::DuplicateProperty,
                name,
                format!("{name} appears more than once"),
            ));
        }
        let token = self.token(s)?;
        let profile = match self.target {
            Target::People => Profile::Person(self.id(s, Slot::DistinctId)?),
            Target::Groups => {
                let key = self.group_key(s)?;
                Profile::Group(key, self.id(s, Slot::GroupId)?)
            }
        };
        let time = self.time(s)?;
        let ip = match s.get(Slot::Ip) {
            Some(sent) => match sent.scalar {
                Some(Scalar::String(ip)) => Some(ip.bytes()),
                _ => {
                    return Err(self.reject(
                        K::IpInvalid,
                        "$ip",
                        format!("$ip must be a string, got {}", sent.ty.name()),
                    ))
                }
            },
            None if self.use_ip => self
                .ctx
                .peer_ip
                .map(|ip| Cow::Owned(ip.as_bytes().to_vec())),
            None => None,
        };
        let ignore_time = self.flag(s, Slot::IgnoreTime)?;
        let ignore_alias = self.flag(s, Slot::IgnoreAlias)?;
        let op = self.operation(s)?;
        Ok(Valid {
            token,
            profile,
            op,
            time,
            ip,
            ignore_time,
            ignore_alias,
        })
    }

    fn token<'a>(&self, s: &Scratch<'a>) -> Result<StrToken<'a>, EventError> {
        const FIELD: &str = "$token";
        let Some(sent) = s.get(Slot::Token) else {
            return Err(self.reject(
                K::TokenMissing,
                FIELD,
                "$token is missing: every update needs its project's token".into(),
            ));
        };
        let token = match sent.scalar {
            Some(Scalar::String(t)) if t.raw.len() > 2 => t,
            Some(Scalar::String(_)) => {
                return Err(self.reject(K::TokenInvalid, FIELD, "$token must not be empty".into()))
            }
            _ => {
                return Err(self.reject(
                    K::TokenInvalid,
                    FIELD,
                    format!("$token must be a string, got {}", sent.ty.name()),
                ))
            }
        };
        if let Some(known) = self.ctx.tokens {
            if !known.contains(&*token.text()) {
                return Err(self.reject(
                    K::UnknownToken,
                    FIELD,
                    "$token is not the token of any project".into(),
                ));
            }
        }
        Ok(token)
    }

    /// `$distinct_id` or `$group_id`: a non-empty string or a number, as long as a distinct_id may be.
    fn id<'a>(&self, s: &Scratch<'a>, slot: Slot) -> Result<Id<'a>, EventError> {
        let field = slot.name();
        let (missing, invalid, too_long) = if slot == Slot::DistinctId {
            (
                K::DistinctIdMissing,
                K::DistinctIdInvalid,
                K::DistinctIdTooLong,
            )
        } else {
            (K::GroupInvalid, K::GroupInvalid, K::GroupInvalid)
        };
        let Some(sent) = s.get(slot) else {
            return Err(self.reject(missing, field, format!("{field} is missing")));
        };
        let (id, chars) = match sent.scalar {
            Some(Scalar::String(id)) if id.raw.len() > 2 => {
                (Id::String(id), char_count(&id.bytes()))
            }
            Some(Scalar::Number(n)) => (Id::Number(n), n.len()),
            _ => {
                let got = match sent.scalar {
                    Some(Scalar::String(_)) => "an empty string",
                    _ => sent.ty.name(),
                };
                return Err(self.reject(
                    invalid,
                    field,
                    format!("{field} must be a non-empty string or a number, got {got}"),
                ));
            }
        };
        let max = self.ctx.options.max_distinct_id_chars;
        if chars > max {
            return Err(self.reject(
                too_long,
                field,
                format!("{field} is {chars} characters long; at most {max} are allowed"),
            ));
        }
        Ok(id)
    }

    /// `$group_key`, a property name that events carry: a non-empty string as long as an event name.
    fn group_key<'a>(&self, s: &Scratch<'a>) -> Result<StrToken<'a>, EventError> {
        const FIELD: &str = "$group_key";
        let max = self.ctx.options.max_event_name_chars;
        match s.get(Slot::GroupKey).and_then(|sent| sent.scalar) {
            Some(Scalar::String(key)) if key.raw.len() > 2 && char_count(&key.bytes()) <= max => {
                Ok(key)
            }
            _ => Err(self.reject(
                K::GroupInvalid,
                FIELD,
                format!("{FIELD} must be a non-empty string of at most {max} characters"),
            )),
        }
    }

    /// `$time`: seconds or milliseconds, as an event's `time`; missing or ahead by more than the
    /// allowed skew, the receive time. No age limit: a profile keeps its last update, however late.
    fn time(&self, s: &Scratch<'_>) -> Result<f64, EventError> {
        let now = self.ctx.now;
        let Some(sent) = s.get(Slot::Time) else {
            return Ok(now);
        };
        let mut time = match sent.scalar {
            Some(Scalar::Number(n)) => parse_f64(n),
            _ => f64::NAN,
        };
        if !time.is_finite() || time < 0.0 {
            return Err(self.reject(
                K::TimeInvalid,
                "$time",
                format!(
                    "$time must be a non-negative number of seconds (or milliseconds) since 1970, got {}",
                    sent.ty.name()
                ),
            ));
        }
        if time >= MILLISECONDS_FROM {
            time /= 1000.0;
        }
        Ok(if time - now > self.ctx.options.max_future_skew {
            now
        } else {
            time
        })
    }

    fn flag(&self, s: &Scratch<'_>, slot: Slot) -> Result<bool, EventError> {
        match s.get(slot) {
            None => Ok(false),
            Some(Sent {
                scalar: Some(Scalar::Other(raw, JsonType::Bool)),
                ..
            }) => Ok(raw == b"true"),
            Some(sent) => {
                let name = slot.name();
                Err(self.reject(
                    K::FlagInvalid,
                    name,
                    format!("{name} must be true or false, got {}", sent.ty.name()),
                ))
            }
        }
    }

    /// Exactly one operation, for this kind of profile, its value of the operation's shape within the
    /// limits of event properties.
    fn operation(&self, s: &Scratch<'_>) -> Result<Operation, EventError> {
        let op = match s.operations[..] {
            [] => {
                let names: Vec<_> = Operation::ALL
                    .into_iter()
                    .filter(|op| op.applies_to(self.target))
                    .map(Operation::name)
                    .collect();
                return Err(self.reject(
                    K::OperationMissing,
                    "",
                    format!("the update has no operation: one of {}", names.join(", ")),
                ));
            }
            [op] => op,
            ref ops => {
                let names: Vec<_> = ops.iter().map(|op| op.name()).collect();
                return Err(self.reject(
                    K::TooManyOperations,
                    "",
                    format!(
                        "an update holds exactly one operation, this one {}: {}",
                        ops.len(),
                        names.join(", ")
                    ),
                ));
            }
        };
        let name = op.name();
        if !op.applies_to(self.target) {
            return Err(self.reject(
                K::OperationInvalid,
                name,
                format!("{name} is not an operation of group profiles"),
            ));
        }
        self.value(op, s)?;
        Ok(op)
    }

    /// The operation's value: of its shape, within the limits of event properties.
    fn value(&self, op: Operation, s: &Scratch<'_>) -> Result<(), EventError> {
        let options = self.ctx.options;
        let name = op.name();
        let expects = op.expects();
        let ty = s.value_type.unwrap_or(JsonType::Null);
        let wanted = match expects {
            Expects::Nothing => return Ok(()),
            Expects::Names => JsonType::Array,
            _ => JsonType::Object,
        };
        if ty != wanted {
            let what = match expects {
                Expects::Numbers => "an object of numbers",
                Expects::Lists => "an object of arrays",
                Expects::Names => "an array of property names",
                _ => "an object",
            };
            return Err(self.reject(
                K::OperationInvalid,
                name,
                format!("{name} must be {what}, got {}", ty.name()),
            ));
        }
        if expects == Expects::Names {
            if s.elements > options.max_array_len {
                return Err(self.reject(
                    K::ArrayTooLong,
                    name,
                    format!(
                        "{name} holds {} names; at most {} are allowed",
                        s.elements, options.max_array_len
                    ),
                ));
            }
            if let Some((at, ty)) = s.not_a_name {
                return Err(self.reject(
                    K::OperationInvalid,
                    name,
                    format!(
                        "{name} holds property names: its element {at} is {}, not a string",
                        ty.name()
                    ),
                ));
            }
            return Ok(());
        }
        if s.members.len() > options.max_properties {
            return Err(self.reject(
                K::TooManyProperties,
                name,
                format!(
                    "{name} holds {} properties; at most {} are allowed",
                    s.members.len(),
                    options.max_properties
                ),
            ));
        }
        let wrong = match expects {
            Expects::Numbers => Some((JsonType::Number, "a number")),
            Expects::Lists => Some((JsonType::Array, "an array")),
            _ => None,
        };
        if let Some((want, what)) = wrong {
            if let Some(member) = s.members.iter().find(|m| m.ty != want) {
                let field = member_field(op, &member.key);
                return Err(self.reject(
                    K::OperationInvalid,
                    &field,
                    format!("{field} must be {what}, got {}", member.ty.name()),
                ));
            }
        }
        if let Some((kind, value, at)) = s.violation {
            return Err(self.shape_error(kind, value, &member_field(op, &s.members[at].key)));
        }
        self.no_duplicates(op, &s.members)
    }

    #[cold]
    fn shape_error(&self, kind: K, value: usize, field: &str) -> EventError {
        let options = self.ctx.options;
        let message = match kind {
            K::TooDeep => format!(
                "{field} is nested more than {} levels deep",
                options.max_depth
            ),
            K::NumberOutOfRange => {
                format!("{field} holds a number beyond the range of a double (about ±1.8e308)")
            }
            K::ArrayTooLong => format!(
                "{field} holds an array of {value} elements; at most {} are allowed",
                options.max_array_len
            ),
            _ => format!(
                "{field} holds an object of {value} keys; at most {} are allowed",
                options.max_properties
            ),
        };
        self.reject(kind, field, message)
    }

    fn no_duplicates(&self, op: Operation, members: &[Member<'_>]) -> Result<(), EventError> {
        let mut keys: Vec<&[u8]> = members.iter().map(|m| &*m.key).collect();
        keys.sort_unstable();
        match keys.windows(2).find(|pair| pair[0] == pair[1]) {
            None => Ok(()),
            Some(pair) => {
                let field = member_field(op, pair[0]);
                let message = format!("{field} appears more than once");
                Err(self.reject(K::DuplicateProperty, &field, message))
            }
        }
    }

    /// Writes a valid update's JSON and, unless it is too large, hands it to the sink's batches.
    fn store(&self, valid: &Valid<'_>, scratch: &mut Scratch<'_>, sink: &mut Events) {
        if scratch.received.is_empty() {
            write_number(&mut scratch.received, self.ctx.now);
        }
        let mut json = std::mem::take(&mut scratch.json);
        json.clear();
        write_json(valid, scratch, &mut json);
        let max = self.ctx.options.max_event_bytes;
        if json.len() > max {
            sink.errors.push(self.reject(
                K::EventTooLarge,
                "",
                format!(
                    "the update is {} bytes; at most {max} are allowed",
                    json.len()
                ),
            ));
        } else {
            let token = valid.token.text();
            let partition = match valid.profile {
                Profile::Person(id) => partition(None, &id.text(), sink.partitions),
                Profile::Group(key, id) => {
                    partition(Some(&key.bytes()), &id.text(), sink.partitions)
                }
            };
            sink.batches
                .push_update(&token, partition, &json, valid.time, |out| {
                    pack(valid, scratch, out)
                });
        }
        scratch.json = json;
    }
}

/// The partition of a profile: a person's is their events' (`partition_of` their distinct_id); a
/// group's that of its key and id joined by a NUL.
pub fn partition(group_key: Option<&[u8]>, id: &[u8], partitions: u32) -> u32 {
    match group_key {
        None => partition_of(id, partitions),
        Some(key) => partition_of(&[key, b"\0", id].concat(), partitions),
    }
}

/// `<op>.<key>` for an error, the key cut to MAX_FIELD_KEY_CHARS characters (ending in "...").
#[cold]
fn member_field(op: Operation, key: &[u8]) -> String {
    let key = String::from_utf8_lossy(key);
    let op = op.name();
    match key.char_indices().nth(MAX_FIELD_KEY_CHARS) {
        Some((cut, _)) => format!("{op}.{}...", &key[..cut]),
        None => format!("{op}.{key}"),
    }
}

/// The normalised update, compact, keys in this order, absent ones omitted:
/// `{"time","received","token","distinct_id"}` (or `"group_key","group_id"`), `"ip"`, `"ignore_time"`,
/// `"ignore_alias"`, then the operation with its value (`"$delete":""`).
fn write_json(valid: &Valid<'_>, s: &Scratch<'_>, out: &mut Vec<u8>) {
    out.put(b"{\"time\":");
    write_number(out, valid.time);
    out.put(b",\"received\":");
    out.put(&s.received);
    out.put(b",\"token\":");
    out.put(valid.token.raw);
    match valid.profile {
        Profile::Person(id) => {
            out.put(b",\"distinct_id\":");
            id.write(out);
        }
        Profile::Group(key, id) => {
            out.put(b",\"group_key\":");
            out.put(key.raw);
            out.put(b",\"group_id\":");
            id.write(out);
        }
    }
    if let Some(ip) = &valid.ip {
        out.put(b",\"ip\":");
        write_str(out, std::str::from_utf8(ip).expect("the payload is UTF-8"));
    }
    if valid.ignore_time {
        out.put(b",\"ignore_time\":true");
    }
    if valid.ignore_alias {
        out.put(b",\"ignore_alias\":true");
    }
    out.put(b",\"");
    out.put(valid.op.name().as_bytes());
    out.put(b"\":");
    let expects = valid.op.expects();
    if expects == Expects::Nothing {
        out.put(b"\"\"");
    } else {
        // `$unset`'s names as an array, any other operation's properties as an object.
        let names = expects == Expects::Names;
        out.put_byte(if names { b'[' } else { b'{' });
        for (i, member) in s.members.iter().enumerate() {
            if i > 0 {
                out.put_byte(b',');
            }
            write_key(out, member);
            if !names {
                out.put_byte(b':');
                out.put(&s.values[member.value.clone()]);
            }
        }
        out.put_byte(if names { b']' } else { b'}' });
    }
    out.put_byte(b'}');
}

/// A member's key (or `$unset`'s name) as a JSON string, escaped as `canonical` escapes values.
fn write_key(out: &mut Vec<u8>, member: &Member<'_>) {
    if memchr::memchr(b'\\', member.raw).is_some() {
        write_str(
            out,
            std::str::from_utf8(&member.key).expect("the payload is UTF-8"),
        );
    } else {
        out.put(member.raw);
    }
}

/// The update's arguments for the function (PACKED_LAYOUT), as RESP bulk strings: how many.
fn pack(valid: &Valid<'_>, s: &Scratch<'_>, out: &mut Vec<u8>) -> usize {
    bulk(out, valid.op.name().as_bytes());
    let (group_key, id) = match valid.profile {
        Profile::Person(id) => (Cow::Borrowed(&b""[..]), id),
        Profile::Group(key, id) => (key.bytes(), id),
    };
    bulk(out, &group_key);
    bulk(out, &id.text());
    if valid.ignore_time {
        bulk(out, b"");
    } else {
        bulk(out, last_seen(valid.time).as_bytes());
    }
    let names_only = matches!(valid.op.expects(), Expects::Names);
    let follow = match valid.op.expects() {
        Expects::Nothing => 0,
        Expects::Names => s.members.len(),
        _ => 2 * s.members.len(),
    };
    bulk(out, itoa::Buffer::new().format(follow).as_bytes());
    for member in &s.members {
        bulk(out, &member.key);
        if !names_only {
            bulk(out, &s.values[member.value.clone()]);
        }
    }
    5 + follow
}

/// `$last_seen` as Mixpanel writes it: the UTC time to the second, `YYYY-MM-DDTHH:MM:SS`.
pub fn last_seen(time: f64) -> String {
    let seconds = time.floor() as i64;
    let of_day = seconds.rem_euclid(86_400);
    format!(
        "{}T{:02}:{:02}:{:02}",
        utc_date(seconds.div_euclid(86_400)),
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical_of(text: &str) -> String {
        let mut values = b"xy".to_vec();
        values.extend_from_slice(text.as_bytes());
        canonical(&mut values, 2);
        assert!(values.starts_with(b"xy"));
        String::from_utf8(values[2..].to_vec()).unwrap()
    }

    #[test]
    fn strings_with_escapes_are_written_one_way() {
        assert_eq!(canonical_of(r#"["a","b"]"#), r#"["a","b"]"#);
        assert_eq!(
            canonical_of(r#"{"\u0061":["\u00e9\/","x\"y\\",1]}"#),
            "{\"a\":[\"\u{e9}/\",\"x\\\"y\\\\\",1]}"
        );
        assert_eq!(canonical_of(r#""\ud83d\ude00\n""#), "\"\u{1F600}\\n\"");
    }

    #[test]
    fn last_seen_is_the_utc_second() {
        assert_eq!(last_seen(0.0), "1970-01-01T00:00:00");
        assert_eq!(last_seen(1_796_660_266.967), "2026-12-07T16:17:46");
    }

    #[test]
    fn every_operation_is_known_by_its_name() {
        for op in Operation::ALL {
            assert_eq!(Operation::of(op.name().as_bytes()), Some(op));
        }
        assert!(!Operation::Append.applies_to(Target::Groups));
        assert!(Operation::Add.applies_to(Target::Groups));
    }
}
