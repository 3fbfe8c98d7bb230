-- Profiles (README, "Profiles"): store.py inserts this file into trackgate.lua where that file says so,
-- each name between @ signs replaced by its value on the Python side.
--
-- A person's or a group's profile is a hash of property name -> the value's JSON text, in the partition
-- its updates go to, with an index per partition (a sorted set, every score 0, so that a reader pages
-- through it in name order) of the profiles it holds. A batch's updates are applied by the batch's own
-- call of tg_count, in the order the batch holds them (the order sent): applied if and only if they are
-- stored, and once.
--
-- Values are compared, and lists taken apart, by their JSON text, which the decoder hands over minified
-- with each string escaped one way (profile.rs): 1 and 1.0 are two values, "é" and "\u00e9" one.

local PERSON, PEOPLE, GROUP, GROUPS = '@PERSON@', '@PEOPLE@', '@GROUP@', '@GROUPS@'
local MAX_PROPERTIES, MAX_LIST = @MAX_PROFILE_PROPERTIES@, @MAX_PROFILE_LIST@
local LAST_SEEN = '$last_seen'

-- The JSON texts of the elements of an array's JSON text: only strings need reading with care, for the
-- brackets and commas inside them.
local function elements(text)
  local list = {}
  if text == '[]' then
    return list
  end
  local depth, start, i, last = 0, 2, 2, #text - 1
  while i <= last do
    local c = string.byte(text, i)
    if c == 34 then
      -- A string: on to its closing quote, over escaped characters.
      repeat
        i = string.find(text, '["\\]', i + 1)
        local escape = string.byte(text, i) == 92
        if escape then
          i = i + 1
        end
      until not escape
    elseif c == 91 or c == 123 then
      depth = depth + 1
    elseif c == 93 or c == 125 then
      depth = depth - 1
    elseif c == 44 and depth == 0 then
      list[#list + 1] = string.sub(text, start, i - 1)
      start = i + 1
    end
    i = i + 1
  end
  list[#list + 1] = string.sub(text, start, last)
  return list
end

local function is_list(text)
  return string.byte(text, 1) == 91
end

local function is_number(text)
  local c = string.byte(text, 1)
  return c == 45 or (c >= 48 and c <= 57)
end

-- A list's JSON text; past MAX_LIST elements its oldest ones are dropped.
local function list_text(list)
  return '[' .. table.concat(list, ',', math.max(1, #list - MAX_LIST + 1), #list) .. ']'
end

-- A sum as JSON: whole numbers below 2^53 without a fraction, others in the shortest text that reads
-- back as the same double.
local function number_text(x)
  if x == math.floor(x) and math.abs(x) < 2 ^ 53 then
    return string.format('%.0f', x)
  end
  for digits = 15, 16 do
    local text = string.format('%.' .. digits .. 'g', x)
    if tonumber(text) == x then
      return text
    end
  end
  return string.format('%.17g', x)
end

-- What each operation makes of a property: from its value's JSON text (false when it has none) and the
-- update's value for it, the new JSON text, or nil to leave it as it is.
local CHANGE = {
  ['$set'] = function(_, value)
    return value
  end,
  ['$set_once'] = function(old, value)
    if not old then
      return value
    end
  end,
  -- A missing property counts as 0; one that is not a number, or a sum beyond a double's range, is
  -- left as it is.
  ['$add'] = function(old, value)
    if old and not is_number(old) then
      return nil
    end
    local sum = (old and tonumber(old) or 0) + tonumber(value)
    if sum == sum and sum ~= math.huge and sum ~= -math.huge then
      return number_text(sum)
    end
  end,
  -- A missing property becomes a list of the value; one that is not a list is left as it is.
  ['$append'] = function(old, value)
    if not old then
      return '[' .. value .. ']'
    end
    if is_list(old) then
      local list = elements(old)
      list[#list + 1] = value
      return list_text(list)
    end
  end,
  -- The values of the list not in the property's list yet, added once each, in their order; a missing
  -- property counts as an empty list, one that is not a list is left as it is.
  ['$union'] = function(old, value)
    if old and not is_list(old) then
      return nil
    end
    local list, seen, added = old and elements(old) or {}, {}, not old
    for _, element in ipairs(list) do
      seen[element] = true
    end
    for _, element in ipairs(elements(value)) do
      if not seen[element] then
        seen[element] = true
        list[#list + 1] = element
        added = true
      end
    end
    if added then
      return list_text(list)
    end
  end,
  -- Every element equal to the value taken out of a list; anything else is left as it is.
  ['$remove'] = function(old, value)
    if not (old and is_list(old)) then
      return nil
    end
    local list, kept = elements(old), {}
    for _, element in ipairs(list) do
      if element ~= value then
        kept[#kept + 1] = element
      end
    end
    if #kept < #list then
      return '[' .. table.concat(kept, ',') .. ']'
    end
  end,
}

-- The operations that make a profile that is not there; the others leave a missing profile missing.
local CREATES = { ['$set'] = true, ['$set_once'] = true, ['$add'] = true, ['$append'] = true,
  ['$union'] = true }

-- How many arguments the update at `i` takes, or nil when they are malformed.
local function update_width(args, i)
  local op, follow = args[i], tonumber(args[i + 4] or '')
  if not follow or follow < 0 or follow ~= math.floor(follow) then
    return nil
  end
  local pairs_of = CHANGE[op] ~= nil
  if not (pairs_of or op == '$unset' or op == '$delete') or (pairs_of and follow % 2 == 1)
      or (op == '$delete' and follow ~= 0) or not args[i + 4 + follow] then
    return nil
  end
  return 5 + follow
end

-- A profile update is told from an event by its first argument, an operation: `$`.
local function is_update(args, i)
  return string.byte(args[i], 1) == 36
end

-- Applies the update at `i` (its arguments checked by update_width) to its profile under `prefix`;
-- returns how many new properties it could not add, the profile being full.
local function apply_update(prefix, args, i)
  local op, group, id, seen = args[i], args[i + 1], args[i + 2], args[i + 3]
  local first, last = i + 5, i + 4 + tonumber(args[i + 4])
  local key, index
  if group == '' then
    key, index = prefix .. PERSON .. id, prefix .. PEOPLE
  else
    key, index = prefix .. GROUP .. #group .. ':' .. group .. ':' .. id, prefix .. GROUPS .. group
  end
  if op == '$delete' then
    redis.call('DEL', key)
    redis.call('ZREM', index, id)
    return 0
  end
  local existed = redis.call('EXISTS', key) == 1
  if not (existed or CREATES[op]) then
    return 0
  end
  local refused = 0
  if op == '$unset' then
    if last >= first then
      redis.call('HDEL', key, unpack(args, first, last))
    end
  elseif last >= first then
    local change, names = CHANGE[op], {}
    for j = first, last, 2 do
      names[#names + 1] = args[j]
    end
    local old = redis.call('HMGET', key, unpack(names))
    local writes, room = {}, nil
    for k, name in ipairs(names) do
      local new = change(old[k], args[first + 2 * k - 1])
      if new and not old[k] and name ~= LAST_SEEN then
        -- A new property: read how many the profile has (once), then count those this update adds.
        room = room or MAX_PROPERTIES - redis.call('HLEN', key) + redis.call('HEXISTS', key, LAST_SEEN)
        if room > 0 then
          room = room - 1
        else
          new = nil
          refused = refused + 1
        end
      end
      if new then
        writes[#writes + 1] = name
        writes[#writes + 1] = new
      end
    end
    if #writes > 0 then
      redis.call('HSET', key, unpack(writes))
    end
  end
  if seen ~= '' then
    redis.call('HSET', key, LAST_SEEN, '"' .. seen .. '"')
  end
  if redis.call('EXISTS', key) == 1 then
    redis.call('ZADD', index, 'NX', 0, id)
  else
    redis.call('ZREM', index, id)
  end
  return refused
end
